"""Segmentation training on medical volumes: 2D and 2.5D slices with their masks.

**Volumes** (:class:`MedicalSegmentationDataModule`). A case is an image (a DICOM folder or
file, a NIfTI or NRRD file) and its mask (DICOM SEG, RTSTRUCT, or a NIfTI/NRRD label map). Every
case is read once in ``setup`` and held in memory (the intensity-scaled float32 volume and its
labels, about 5 bytes a voxel: fine for sample data, not for a large cohort). The mask readers
of :mod:`densekit.data.masks` put masks on the image's voxels by geometry, never file order;
a mask on another grid is an error naming both files. The items are the slices along ``plane``
made by :func:`~densekit.medical.slices.slice_input` after image and labels are brought into the
plane's display orientation (:func:`~densekit.medical.slices.display_order`: exact permutations
and flips, so DICOM and NIfTI storage orders give the same slices), the definition ``densekit
volume`` uses too: ``context`` 0 is 2D, ``k`` 2.5D; ``intensity`` (a CT window or MR
percentiles) scales to [0, 1], so the task takes the backbone's own statistics with
``scale: 1``. ``plane``, ``context``, ``intensity``, and ``segments``, ``label_map``,
``priority``, ``unlisted`` (how masks became classes, so ``densekit volume --reference`` reads a
reference the same way) are saved in checkpoints (``datamodule_hyper_parameters``); none of
them names a patient.

Classes: ``segments`` maps SEG segment labels and RTSTRUCT ROI names to classes, ``label_map``
label-map values to classes (without it the values are the classes). What is not listed is
background (``unlisted: background``) or unlabelled (``unlisted: ignore``). Segments of
different classes may not overlap unless both are in ``priority`` (the first listed wins).

Splits are by patient (``split_by: patient``: the hash of PatientID, a case's own ``patient``
entry, or, for files without one such as NIfTI, the case itself) or by study
(StudyInstanceUID), never by slice: ``split`` fractions of the patients, shuffled by
``split_seed``, or explicit ``val_cases`` / ``test_cases``; a patient in two splits is an error,
and so is a split asked of one patient, unless ``split_by: slice`` is given: then each case's
slices are cut into contiguous blocks along ``plane`` (training first), and slices of one
patient leak between the splits (a warning says so).

Slices without a labelled pixel are skipped; ``empty_fraction`` keeps that fraction of the
training slices without foreground (seeded); ``label_fraction`` / ``label_count`` then keep a
labelled subset of the training slices (:mod:`densekit.data.subsets`).

Items: ``image`` float32 (3, H, W) in [0, 1]; ``mask`` int64 (H, W), ``ignore_index`` where
unlabelled; ``path``, e.g. ``cases[2] (series 1a2b3c4d) axial slice 14``: the case's place in
the config and a hash of its SeriesInstanceUID, never a file or patient name; ``cache_keys``
for unaugmented items (image files, their sizes and times, series UID, intensity, context,
plane, slice). Slices of
different sizes in one batch are padded at the bottom and right (image 0, mask
``ignore_index``).

For 2D image/mask sets (PNG, JPEG) see :mod:`densekit.medical.data2d`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import torch
from torch.utils.data import Dataset

from densekit.data.augment import Augmentation
from densekit.data.augment import apply as apply_augmentation
from densekit.data.dicom_series import OnMissing
from densekit.data.files import Files, pair_files
from densekit.data.keys import item_key
from densekit.data.label_values import check_label_values
from densekit.data.masks import read_label_map, read_rtstruct, read_seg
from densekit.data.nifti import NIFTI_SUFFIXES, NRRD_SUFFIXES, read_volume
from densekit.data.volume import Volume, pseudonym
from densekit.errors import DensekitError
from densekit.medical.classes import map_values, segment_labels
from densekit.medical.data2d import InMemoryDataModule, split_parts
from densekit.medical.slices import (
    Intensity,
    Plane,
    display_order,
    plane_axis,
    slice_input,
    slice_target,
)

SplitBy = Literal["patient", "study", "slice"]
CASE_KEYS = ("image", "mask", "series_uid", "patient", "on_missing")
SPLITS = ("train", "val", "test")


@dataclass
class Case:
    """One case as held in memory: scaled image, labels on its grid, split group."""

    name: str  # "cases[2] (series 1a2b3c4d)": no file or patient name
    image: np.ndarray  # the plane's display orientation, axis 0 its normal; float32 in [0, 1]
    labels: np.ndarray  # same shape: classes, ignore_index where unlabelled
    group: str  # patient or study key (a hash), or the case itself
    cache_key: str


class SliceDataset(Dataset):
    """Slices ``(case, index)`` of in-memory cases (see the module docstring)."""

    def __init__(
        self,
        cases: list[Case],
        slices: list[tuple[int, int]],
        plane: str,
        context: int,
        augment: Augmentation | None = None,
    ) -> None:
        self.cases = cases
        self.slices = slices
        self.plane = plane
        self.context = context
        self.transforms = augment.build() if augment is not None else None

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c, k = self.slices[i]
        case = self.cases[c]
        item: dict[str, Any] = {
            "image": torch.from_numpy(slice_input(case.image, 0, k, self.context)),
            "mask": torch.from_numpy(slice_target(case.labels, 0, k).astype(np.int64)),
            "path": f"{case.name} {self.plane} slice {k}",
        }
        if self.transforms is not None:
            return apply_augmentation(item, self.transforms)
        item["cache_keys"] = [f"{case.cache_key}\n{self.plane} {k}"]
        return item


def mask_kind(path: Path, where: str) -> Literal["labels", "SEG", "RTSTRUCT"]:
    if not path.exists():
        raise DensekitError(f"{where}.mask: no such file: {path}")
    if path.name.lower().endswith((*NIFTI_SUFFIXES, *NRRD_SUFFIXES)):
        return "labels"
    try:
        modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", ""))
    except Exception as err:  # pydicom raises InvalidDicomError, OSError, ...
        raise DensekitError(
            f"{where}.mask {path}: neither a NIfTI/NRRD label map "
            f"({', '.join(NIFTI_SUFFIXES + NRRD_SUFFIXES)}) nor a readable DICOM file: {err}"
        ) from err
    if modality not in ("SEG", "RTSTRUCT"):
        raise DensekitError(
            f"{where}.mask {path}: a DICOM {modality or 'file without Modality'}; masks are "
            "DICOM SEG, RTSTRUCT or NIfTI/NRRD label maps"
        )
    return modality  # type: ignore[return-value]


def image_files(path: Path) -> list[str]:
    """The files of an image (a DICOM folder's, recursively), for the feature-cache key."""
    return sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else [str(path)]


class MedicalSegmentationDataModule(InMemoryDataModule):
    """2D / 2.5D slices of volumes and their masks (see the module docstring).

    Args:
        intensity: ``{ct_window: soft_tissue}`` (a preset, or ``[level, width]`` in HU) or
            ``{percentiles: [1, 99]}`` (MR), see :class:`~densekit.medical.slices.Intensity`.
        cases: ``[{image: DICOM folder | NIfTI | NRRD, mask: SEG | RTSTRUCT | label map}]``,
            each optionally with ``series_uid`` (a folder with several series), ``patient``
            (a patient identifier for files without one, e.g. NIfTI; only its hash is kept)
            and ``on_missing`` (DICOM slices missing from a series: ``error``, the default, or
            ``resample``, see :func:`~densekit.data.dicom_series.read_series`).
        images, masks: instead of ``cases``: glob patterns paired by what their first run of
            wildcards matched (``data/*/ct`` with ``data/*/seg.dcm``), or lists paired in order.
        val_cases, test_cases: explicit validation / test cases.
        plane: ``axial``, ``coronal`` or ``sagittal`` slices (by patient direction).
        context: 0 for 2D (the slice on three channels), k for 2.5D (slices i-k, i, i+k).
        segments: SEG segment labels / RTSTRUCT ROI names -> classes, e.g. ``{Liver: 1}``.
        label_map: label-map values -> classes, e.g. ``{5: 1, 1: 2}`` (None: values are classes).
        priority: segment names, first wins, where segments of different classes overlap.
        unlisted: what segments / label values not listed become: background or ignored.
        ignore_index: the mask value of unlabelled pixels.
        split: fractions (train, val[, test]) of the patients (studies, or each case's slices
            with ``split_by: slice``); two fractions may go with ``test_cases``.
        split_by: ``patient``, ``study`` or ``slice`` (one patient only: slices leak).
        split_seed: the shuffle of the patients or studies before ``split``; and of
            ``empty_fraction``.
        empty_fraction: the fraction of training slices without foreground that are kept.
        **kwargs: the settings every data module shares (:class:`~densekit.data.base.
            DenseDataModule`): batch_size, num_workers, samples_per_epoch, augment,
            label_fraction, label_count, subset_seed, stratify.
    """

    def __init__(
        self,
        intensity: dict[str, str | list[float]],
        cases: list[dict[str, str]] | None = None,
        images: Files | None = None,
        masks: Files | None = None,
        val_cases: list[dict[str, str]] | None = None,
        test_cases: list[dict[str, str]] | None = None,
        plane: Plane = "axial",
        context: int = 0,
        segments: dict[str, int] | None = None,
        label_map: dict[int, int] | None = None,
        priority: list[str] | None = None,
        unlisted: Literal["background", "ignore"] = "background",
        ignore_index: int = 255,
        split: list[float] | None = None,
        split_by: SplitBy = "patient",
        split_seed: int = 0,
        empty_fraction: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # what `densekit volume` reads back from checkpoints (slice inputs, and how masks became
        # classes, for --reference); nothing here names a patient
        self.save_hyperparameters(
            "plane", "context", "intensity", "segments", "label_map", "priority", "unlisted"
        )
        bad = sorted(set(intensity) - {"ct_window", "percentiles"})
        if bad:
            raise DensekitError(f"intensity: unknown key(s) {bad}; use ct_window or percentiles")
        self.intensity = Intensity(**intensity)  # type: ignore[arg-type]
        plane_axis(Volume(np.zeros((1, 1, 1)), np.eye(4)), plane)  # an unknown plane fails here
        if context < 0:
            raise DensekitError(f"context must be >= 0 slices, got {context}")
        if (cases is None) == (images is None and masks is None):
            raise DensekitError("give either cases or images and masks (patterns)")
        if cases is None and (images is None or masks is None):
            raise DensekitError("images and masks go together: give both")
        if split is not None and (
            len(split) not in (2, 3) or (val_cases or (len(split) == 3 and test_cases))
        ):
            raise DensekitError(
                f"split {split}: give 2 or 3 fractions (train, val[, test]) and no val_cases; "
                "two fractions may go with test_cases"
            )
        if priority and not segments:
            raise DensekitError(f"priority {priority} orders segments: give segments too")
        if unlisted == "ignore" and not segments and not label_map:
            raise DensekitError("unlisted: ignore needs segments or label_map")
        if not 0 <= empty_fraction <= 1:
            raise DensekitError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
        if cases is None:
            pairs = pair_files([("images", images), ("masks", masks)])  # type: ignore[list-item]
            cases = [{"image": i, "mask": m} for i, m in pairs]
        self.case_lists = {
            "cases": cases,
            "val_cases": val_cases or [],
            "test_cases": test_cases or [],
        }
        for list_name, items in self.case_lists.items():
            for i, case in enumerate(items):
                unknown = sorted(set(case) - set(CASE_KEYS))
                missing = [k for k in ("image", "mask") if k not in case]
                if unknown or missing:
                    raise DensekitError(
                        f"{list_name}[{i}]: unknown key(s) {unknown} / missing {missing}; a "
                        f"case has {', '.join(CASE_KEYS)} (image and mask required)"
                    )
        self.plane = plane
        self.context = context
        self.segments = segments
        self.label_map = label_map
        self.priority = list(priority or [])
        self.unlisted = ignore_index if unlisted == "ignore" else 0
        self.ignore_index = ignore_index
        self.fractions = split
        self.split_by = split_by
        self.split_seed = split_seed
        self.empty_fraction = empty_fraction
        self.cases: list[Case] = []
        self.case_split: dict[str, list[int]] = {}  # split -> indices into self.cases

    # -- reading ------------------------------------------------------------------------------
    def _read(self, spec: dict[str, str], where: str, found: set) -> Case:
        try:
            on_missing: OnMissing = spec.get("on_missing", "error")  # type: ignore[assignment]
            image = read_volume(
                spec["image"], series_uid=spec.get("series_uid"), on_missing=on_missing
            )
        except DensekitError as err:
            raise DensekitError(f"{where}.image: {err}") from err
        path = Path(spec["mask"])
        kind = mask_kind(path, where)
        try:
            if kind == "labels":
                raw = read_label_map(path, image).array
                found.update(int(v) for v in np.unique(raw))
                labels = raw.astype(np.int32)
                if self.label_map is not None:
                    labels = map_values(raw, self.label_map, self.unlisted, str(path))
            else:
                reader = read_seg if kind == "SEG" else read_rtstruct
                channels, names = reader(path, image)
                found.update(names)
                if self.segments is None:
                    raise DensekitError(
                        f"{path} is a {kind} with segments {names}: give segments, e.g. "
                        f"{{{names[0] if names else 'Liver'}: 1}}"
                    )
                labels = segment_labels(
                    channels, names, self.segments, self.priority, self.unlisted, str(path)
                )
        except DensekitError as err:
            raise DensekitError(f"{where}: {err}") from err
        if "patient" in spec:
            group = "patient " + pseudonym(str(spec["patient"]))
        else:
            key = image.patient_key if self.split_by != "study" else pseudonym(image.study_uid)
            group = f"{self.split_by} {key}" if key else f"{where} (no {self.split_by} tag)"
        series = f" (series {pseudonym(image.series_uid)[:8]})" if image.series_uid else ""
        extra = {
            "intensity": repr(self.intensity),
            "context": self.context,
            "labels": False,
            "series_uid": image.series_uid,  # a folder may hold several series
            "on_missing": spec.get("on_missing", "error"),
            "orientation": "display",  # slices in the plane's display orientation
        }
        key = item_key(image_files(Path(spec["image"])), [0], [0], extra)
        low, high = min(labels.min(), self.ignore_index), max(labels.max(), self.ignore_index)
        display = display_order(image, self.plane)
        labels = labels.astype(np.uint8 if low >= 0 and high < 256 else np.int32)
        return Case(
            name=where + series,
            image=np.ascontiguousarray(display.apply(self.intensity.apply(image.array))),
            labels=np.ascontiguousarray(display.apply(labels)),
            group=group,
            cache_key=key,
        )

    def _read_all(self) -> None:
        found: set = set()
        for list_name, items in self.case_lists.items():
            for i, spec in enumerate(items):
                self.cases.append(self._read(spec, f"{list_name}[{i}]", found))
        names = {n for n in found if isinstance(n, str)}
        values = {v for v in found if isinstance(v, int)}
        kinds = {"segments": "SEG or RTSTRUCT", "label_map": "label map"}
        checks: list[tuple[str, Any, set[Any]]] = [
            ("segments", self.segments, names),
            ("label_map", self.label_map, values),
        ]
        check_label_values(values, self.ignore_index, self.label_map, "the label maps")
        for what, given, seen in checks:
            if given is not None and not seen:
                raise DensekitError(f"{what} {given} is given, but no mask is a {kinds[what]}")
            if given is not None and set(given) - seen:
                raise DensekitError(
                    f"{what}: {sorted(set(given) - seen)} in no mask; the masks hold "
                    f"{sorted(seen)[:60]}"
                )

    # -- splits -------------------------------------------------------------------------------
    def _assign(self) -> dict[str, list[tuple[int, range | None]]]:
        """Split -> (case index, its slices or None for all), checking patients (studies)."""
        n_train = len(self.case_lists["cases"])
        n_val = len(self.case_lists["val_cases"])
        plan: dict[str, list[tuple[int, range | None]]] = {s: [] for s in SPLITS}
        plan["val"] = [(n_train + i, None) for i in range(n_val)]
        plan["test"] = [(i, None) for i in range(n_train + n_val, len(self.cases))]
        fractions = self.fractions
        if fractions is None:
            plan["train"] = [(i, None) for i in range(n_train)]
        elif self.split_by == "slice":
            warnings.warn(
                "split_by: slice: slices of one patient are in several splits, so validation "
                "and test scores are optimistic (neighbouring slices look alike)",
                stacklevel=2,
            )
            for i in range(n_train):
                n = self.cases[i].image.shape[0]
                parts = split_parts(n, fractions, None)  # 2 or 3 parts: train, val(, test)
                for name, part in zip(SPLITS[: len(parts)], parts, strict=True):
                    if not part:
                        raise DensekitError(
                            f"{self.cases[i].name}: its {n} {self.plane} slices are too few for "
                            f"split {fractions}: the {name} part gets none"
                        )
                    plan[name].append((i, range(part[0], part[-1] + 1)))
        else:
            groups = sorted({self.cases[i].group for i in range(n_train)})
            parts = split_parts(len(groups), fractions, self.split_seed)
            for name, part in zip(SPLITS[: len(parts)], parts, strict=True):
                if not part:
                    if len(groups) == 1:
                        raise DensekitError(
                            f"split {fractions} by {self.split_by}: all cases are of one "
                            f"{self.split_by}, so a {self.split_by} split is impossible; add "
                            "cases of others, or give split_by: slice (slices of the one "
                            f"{self.split_by} then leak between the splits)"
                        )
                    raise DensekitError(
                        f"split {fractions}: {len(groups)} {self.split_by}s are too few, the "
                        f"{name} part gets none"
                    )
                chosen = {groups[g] for g in part}
                plan[name] += [(i, None) for i in range(n_train) if self.cases[i].group in chosen]
        if self.split_by != "slice":
            seen: dict[str, tuple[str, str]] = {}
            for name, members in plan.items():
                for i, _ in members:
                    case = self.cases[i]
                    other = seen.setdefault(case.group, (name, case.name))
                    if other[0] != name:
                        raise DensekitError(  # case names only: the group key is a patient hash
                            f"{other[1]} ({other[0]}) and {case.name} ({name}) are of the same "
                            f"{self.split_by}: a {self.split_by} must be in one split only "
                            "(split_by: slice allows it, with leaking slices)"
                        )
        return plan

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return  # read once, held in memory
        self._read_all()
        rng = np.random.default_rng(self.split_seed)
        for name, members in self._assign().items():
            if not members:
                continue
            slices: list[tuple[int, int]] = []
            classes: list[set[int]] = []
            empty: list[int] = []
            for i, block in members:
                case = self.cases[i]
                for k in block or range(case.image.shape[0]):
                    held = set(np.unique(slice_target(case.labels, 0, k)).tolist())
                    held.discard(self.ignore_index)
                    if not held:
                        continue  # no labelled pixel
                    if name == "train" and held <= {0}:
                        empty.append(len(slices))
                    slices.append((i, k))
                    classes.append(held)
            if not slices:
                raise DensekitError(f"the {name} split has no slice with a labelled pixel")
            if name == "train":
                drop = set(
                    rng.permutation(empty)[round(self.empty_fraction * len(empty)) :].tolist()
                )
                keep = [j for j in range(len(slices)) if j not in drop]
                if not keep:
                    raise DensekitError(
                        f"empty_fraction {self.empty_fraction} leaves no training slice"
                    )
                slices, classes = [slices[j] for j in keep], [classes[j] for j in keep]
                kept = self._subset_indices(len(slices), classes)
                slices = [slices[j] for j in kept]
            augment = self.augment if name == "train" else None
            self.datasets[name] = SliceDataset(
                self.cases, slices, self.plane, self.context, augment
            )
