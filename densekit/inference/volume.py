"""Volume inference: a trained 2D segmentation model run slice by slice over a volume.

``densekit volume`` / :func:`segment_volume`, the volume plan over
:func:`~densekit.inference.runner.run`:

1. The checkpoint (:func:`load_volume_model`, read once by
   :func:`~densekit.inference.trained.load_trained`): a segmentation model on 3-channel inputs in
   ``[0, 1]`` (``scale`` 1). How its slices were made comes from the checkpoint's
   ``datamodule_hyper_parameters`` (written by the slice data module): ``plane``, ``context`` and
   ``intensity`` (``{ct_window: name or [level, width]}`` or ``{percentiles: [lower, upper]}``).
   Only what the checkpoint lacks may be given by the caller; a value that contradicts the
   checkpoint is an error, never an override. How its masks became classes (``segments``,
   ``label_map``, ``priority``, ``unlisted``) is read from there too, for the reference (5).
2. The volume (:func:`~densekit.data.nifti.read_volume`: a DICOM folder or file, NIfTI or
   NRRD), scaled to ``[0, 1]`` as a whole (:class:`~densekit.medical.slices.Intensity`).
3. :func:`predict_volume`: the volume brought into the plane's display orientation
   (:func:`~densekit.medical.slices.display_order`, exact axis permutations and flips); the
   reader makes :func:`~densekit.medical.slices.slice_input` (the one definition shared with
   training) for every slice, in batches of ``batch_size``; the merger stores each slice's
   labels (:meth:`~densekit.models.OutputSpec.labels`); the orientation is undone exactly: a
   label array on the input grid (same shape and affine). MONAI's SliceInferer is not used: it
   batches sliding windows within one slice and has no notion of 2.5D neighbours, which are
   exactly what the slice inputs need.
4. The output, all or nothing (:func:`densekit.io.atomic_outputs`): ``.nii`` / ``.nii.gz``
   (:func:`~densekit.data.nifti.write_nifti`, the input's affine) or ``.dcm``, a DICOM SEG
   referencing the source instances (:mod:`densekit.medical.seg_writer`; DICOM input only).
5. With a reference mask (a SEG, or a NIfTI/NRRD label map on the input grid), read as the
   training masks were (:func:`~densekit.medical.reference.read_reference`): Dice and HD95 in
   mm per class (:mod:`densekit.medical.metrics`). The JSON sidecar ``<output file
   name>.metrics.json`` is written with every output, in the same all-or-nothing step
   (``reference`` and ``metrics`` null without a reference), so no sidecar of an earlier run
   is left beside a new output.

PHI: the sidecar and the returned record hold no path and no patient tag. The input is named by
a key: the sha256 of its SeriesInstanceUID (DICOM) or of its voxels and affine (NIfTI/NRRD), so
runs on one series can be matched without naming it; the checkpoint by its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import Tensor

from densekit.data.dicom_series import OnMissing
from densekit.data.nifti import NIFTI_SUFFIXES, read_volume
from densekit.data.volume import Volume
from densekit.errors import DensekitError
from densekit.inference.runner import Batch, read_ahead, run
from densekit.inference.trained import Trained, load_trained
from densekit.medical.metrics import segmentation_metrics
from densekit.medical.reference import IGNORED, file_suffix, read_reference
from densekit.medical.seg_writer import build_seg, is_dicom_path, scrub, source_headers
from densekit.medical.segment_codes import TISSUE, segment_codes
from densekit.medical.slices import (
    Plane,
    SliceSettings,
    display_order,
    parse_intensity,
    slice_input,
)
from densekit.version import __version__

OUTPUT_SUFFIXES = (*NIFTI_SUFFIXES, ".dcm")
SLICE_KEYS = ("plane", "context", "intensity")
CLASS_KEYS = ("segments", "label_map", "priority", "unlisted")
FLAGS = {
    "plane": "plane (--plane)",
    "context": "context (--context)",
    "intensity": "intensity (--ct-window/--percentiles)",
}


def slice_settings(
    recorded: dict[str, Any] | None,
    checkpoint: str | Path,
    plane: str | None = None,
    context: int | None = None,
    intensity: dict[str, Any] | None = None,
) -> SliceSettings:
    """The checkpoint's slice settings; the arguments fill only what it does not record."""
    recorded = recorded or {}
    where = f"checkpoint {checkpoint}: datamodule_hyper_parameters"
    given: dict[str, Any] = {"plane": plane, "context": context, "intensity": intensity}
    values: dict[str, Any] = {}
    for key in SLICE_KEYS:
        stored, asked = recorded.get(key), given[key]
        if stored is None and asked is None:
            raise DensekitError(
                f"{where} has no {key} (the checkpoint was not written by the slice data "
                f"module): give {FLAGS[key]}"
            )
        if key == "intensity":
            stored = None if stored is None else parse_intensity(stored, f"{where}.intensity")
            asked = None if asked is None else parse_intensity(asked, FLAGS[key])
        if stored is not None and asked is not None and stored != asked:
            raise DensekitError(
                f"{FLAGS[key]} {given[key]!r}: the checkpoint {checkpoint} was trained with "
                f"{key} {recorded[key]!r}; leave {FLAGS[key]} out"
            )
        values[key] = stored if stored is not None else asked
    if values["plane"] not in get_args(Plane):
        raise DensekitError(f"plane {values['plane']!r} is not one of {', '.join(get_args(Plane))}")
    if not isinstance(values["context"], int) or values["context"] < 0:
        raise DensekitError(f"context {values['context']!r}: a whole number of slices >= 0")
    return SliceSettings(values["plane"], values["context"], values["intensity"])


@dataclass
class VolumeModel:
    """A segmentation model, the slice settings it was trained with, and how its training
    masks became classes (``CLASS_KEYS`` of the slice data module)."""

    trained: Trained
    settings: SliceSettings
    mask_classes: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.trained.output.class_names)

    def provenance(self) -> dict[str, Any]:
        backbone = self.trained.backbone
        return {
            "backbone": backbone["name"] if backbone is not None else None,
            "head": self.trained.head,
            "plane": self.settings.plane,
            "context": self.settings.context,
            "checkpoint_sha256": self.trained.checkpoint_sha256,
        }


def load_volume_model(
    checkpoint: str | Path,
    device: str = "cpu",
    plane: str | None = None,
    context: int | None = None,
    intensity: dict[str, Any] | None = None,
) -> VolumeModel:
    """Load a segmentation checkpoint for volume inference (see the module docstring).

    Raises:
        DensekitError: a missing or unreadable file, not a densekit checkpoint, a checkpoint of
            another task, inputs other than 3 channels in [0, 1], or slice settings missing
            from both the checkpoint and the arguments, or contradicting the checkpoint.
    """
    trained = load_trained(checkpoint, device)
    spec = trained.inputs
    if not trained.output.is_map_of_classes or spec.images != 1:
        raise DensekitError(
            f"checkpoint {checkpoint}: a {trained.task} checkpoint; densekit volume runs a "
            "segmentation model (one image, classes)"
        )
    if spec.channels != 3:
        raise DensekitError(
            f"checkpoint {checkpoint}: in_channels is {spec.channels}; slice inputs have 3 "
            "channels (the slice repeated, or its 2.5D neighbours)"
        )
    if spec.scale != 1.0:
        raise DensekitError(
            f"checkpoint {checkpoint}: scale is {spec.scale:g}; slice inputs are already in "
            "[0, 1] (scale 1), so this model was trained on other inputs"
        )
    recorded = trained.data
    settings = slice_settings(recorded, checkpoint, plane, context, intensity)
    mask_classes = {k: recorded[k] for k in CLASS_KEYS if recorded.get(k) is not None}
    return VolumeModel(trained, settings, mask_classes)


class _SliceLabels:
    """The merger of volume inference: each batch's labels stored along axis 0 of ``along``."""

    def __init__(self, model: VolumeModel, along: np.ndarray) -> None:
        self.output = model.trained.output
        self.along = along

    def aggregate(self, outputs: Tensor, batch: Batch) -> None:
        start, n = batch.where
        finite = torch.isfinite(outputs).flatten(1).all(1)
        if not bool(finite.all()):
            first = start + int((~finite).nonzero()[0, 0])
            raise DensekitError(
                f"the model's output is NaN or infinite on slice {first} (display order of "
                "its plane); no labels are written. Check the checkpoint and the backbone "
                "weights (non-finite values?)"
            )
        labels = self.output.labels(outputs).cpu().numpy()
        self.along[start : start + n] = labels.astype(self.along.dtype)

    def finalize(self) -> None:
        pass


def _slice_batches(scaled: np.ndarray, context: int, batch_size: int) -> Iterator[Batch]:
    n = scaled.shape[0]
    for start in range(0, n, batch_size):
        picks = range(start, min(start + batch_size, n))
        x = np.stack([slice_input(scaled, 0, i, context) for i in picks])
        yield Batch((start, len(picks)), [torch.from_numpy(x)], None, len(picks))


def predict_volume(
    model: VolumeModel, volume: Volume, batch_size: int = 8, progress: bool = True
) -> Volume:
    """Class labels of every voxel of ``volume``, on its grid (same shape and affine).

    The volume is brought into the display orientation of the model's plane (as in training);
    each batch of ``batch_size`` slice inputs goes through the model, each slice's labels are
    kept, and the orientation is undone exactly.
    """
    from densekit.progress import progress_bar

    check_batch_size(batch_size)
    settings = model.settings
    display = display_order(volume, settings.plane)
    scaled = np.ascontiguousarray(display.apply(settings.intensity.apply(volume.array)))
    dtype = np.uint8 if len(model.class_names) <= 256 else np.uint16
    along: np.ndarray = np.zeros(
        scaled.shape, dtype=dtype
    )  # display orientation, axis 0 the normal
    n = along.shape[0]
    bar = progress_bar(
        n, f"{settings.plane}", unit="slice", prefix="densekit volume: ", disable=not progress
    )
    batches = read_ahead(lambda: _slice_batches(scaled, settings.context, batch_size), 2)
    with torch.inference_mode(), bar or contextlib.nullcontext(), contextlib.closing(batches):
        run(model.trained, batches, _SliceLabels(model, along), bar=bar)
    return Volume(
        array=np.ascontiguousarray(display.undo(along)),
        affine=volume.affine.copy(),
        modality=volume.modality,
        series_uid=volume.series_uid,
        study_uid=volume.study_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        sop_instance_uids=volume.sop_instance_uids,
    )


def input_key(volume: Volume) -> dict[str, str]:
    """A key of the input that names no patient and no path (see the module docstring)."""
    if volume.series_uid:
        return {"series_uid_sha256": hashlib.sha256(volume.series_uid.encode()).hexdigest()}
    digest = hashlib.sha256(np.ascontiguousarray(volume.array).tobytes())
    digest.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    return {"voxels_sha256": digest.hexdigest()}


def sidecar_path(output: Path) -> Path:
    """``<output file name>.metrics.json``: a NIfTI and a SEG of one name keep their own."""
    return output.with_name(output.name + ".metrics.json")


def check_batch_size(batch_size: int) -> None:
    """Slices per forward pass: a whole number >= 1 (checked before the model is loaded)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DensekitError(f"batch_size {batch_size!r}: give a whole number >= 1")


def check_output(output: str | Path, source: str | Path) -> Path:
    """The output path, checked before any work: suffix, folder, not the input."""
    output = Path(output)
    suffix = file_suffix(output)
    if suffix not in OUTPUT_SUFFIXES:
        raise DensekitError(
            f"output {output}: unknown output format {suffix!r}; use "
            f"{', '.join(OUTPUT_SUFFIXES)} (NIfTI labels or a DICOM SEG)"
        )
    if output.is_dir():
        raise DensekitError(f"output {output}: is a folder, a file name is needed")
    if not output.expanduser().resolve().parent.is_dir():
        raise DensekitError(f"output {output}: folder {output.parent} does not exist")
    if output.expanduser().resolve() == Path(source).expanduser().resolve():
        raise DensekitError(f"output {output} is the input")
    if suffix == ".dcm" and Path(source).exists() and not is_dicom_path(source):
        raise DensekitError(
            f"output {output}: a DICOM SEG references the source series' instances, and "
            f"input {source} is not DICOM; write .nii.gz instead"
        )
    return output


def segment_volume(
    checkpoint: str | Path,
    source: str | Path,
    output: str | Path,
    *,
    series_uid: str | None = None,
    on_missing: OnMissing = "error",
    reference: str | Path | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    plane: str | None = None,
    context: int | None = None,
    intensity: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment a volume with a checkpoint and write the labels (see the module docstring).

    Args:
        checkpoint: a SegmentationTask checkpoint of densekit.
        source: a DICOM folder or file, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``.
        output: ``.nii``/``.nii.gz`` (labels with the input's affine) or ``.dcm`` (DICOM SEG).
        series_uid: the DICOM series to read when ``source`` holds several.
        on_missing: missing DICOM slices: ``"error"`` or ``"resample"`` (interpolated).
        reference: a mask to score against: SEG or NIfTI/NRRD label map on the input grid.
        batch_size: slices per forward pass.
        device: torch device.
        plane, context, intensity: only for a checkpoint that does not record them.
        progress: show a progress bar (stderr).

    Returns:
        ``{"outputs": [paths written: the output and its sidecar], "record": the sidecar's
        content}`` (``reference`` and ``metrics`` null without a reference).

    Raises:
        DensekitError: any bad input (named); nothing is written then.
    """
    from densekit.data.nifti import write_nifti
    from densekit.io import atomic_outputs

    check_batch_size(batch_size)
    out = check_output(output, source)
    if not Path(source).exists():
        raise DensekitError(f"input {source}: no such file or folder")
    model = load_volume_model(checkpoint, device, plane, context, intensity)
    volume = read_volume(source, series_uid=series_uid, on_missing=on_missing)
    ref = (
        None
        if reference is None
        else read_reference(reference, volume, model.class_names, model.mask_classes)
    )
    headers = source_headers(source, volume) if file_suffix(out) == ".dcm" else None
    labels = predict_volume(model, volume, batch_size, progress)
    record: dict[str, Any] = {
        "densekit_version": __version__,
        "model": model.provenance(),
        "input": {
            **input_key(volume),
            "modality": volume.modality,
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 6) for s in volume.spacing],
        },
        "slices": model.settings.record(),
        "classes": model.class_names,
        "output_format": "dicom-seg" if headers is not None else "nifti",
        "reference": None,
        "metrics": None,
    }
    writers: dict[Path, Any] = {}
    if headers is not None:
        codes = segment_codes(
            model.class_names, model.trained.data, model.mask_classes.get("segments")
        )
        record["segment_codes"] = {model.class_names[k]: c.record() for k, c in codes.items()}
        generic = [model.class_names[k] for k, c in codes.items() if c.type == TISSUE]
        if generic:
            warnings.warn(
                f"output {out}: no code known for class(es) {generic} (not in the training "
                "SEG, no SNOMED CT concept of that name): coded as SCT 85756007 'Tissue'",
                UserWarning,
                stacklevel=2,
            )
        try:
            seg = build_seg(labels.array, headers, model.class_names, model.provenance(), codes)
        except (ValueError, AttributeError, KeyError, TypeError, IndexError) as e:
            raise DensekitError(
                f"input {source}: highdicom cannot write a SEG of this series: "
                f"{scrub(seg_failure(e), headers[0])}"
            ) from None
        writers[out] = lambda tmp: seg.save_as(tmp, enforce_file_format=True)
    else:
        writers[out] = lambda tmp: _write_nifti_to(write_nifti, labels, tmp, file_suffix(out))
    if ref is not None:
        ref_labels, ref_info = ref
        record["reference"] = ref_info
        record["metrics"] = segmentation_metrics(
            labels.array, ref_labels, model.class_names, volume.spacing, ignore=IGNORED
        )
    # always, so a sidecar of an earlier run never stays beside this output
    text = json.dumps(record, indent=2) + "\n"
    writers[sidecar_path(out)] = lambda tmp: Path(tmp).write_text(text)
    atomic_outputs(writers)
    return {"outputs": [str(p) for p in writers], "record": record}


def seg_failure(err: Exception) -> str:
    """highdicom's error in one line; a missing attribute named as such."""

    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    found = re.search(r"has no attribute '(\w+)'", first)
    if found:
        return f"the source headers lack {found.group(1)}"
    return first


def _write_nifti_to(write: Any, labels: Volume, tmp: Path, suffix: str) -> None:
    """``write_nifti`` picks the format from the name, so write ``<tmp>.nii[.gz]`` and move it
    onto the temporary name :func:`atomic_outputs` chose."""
    named = tmp.with_name(tmp.name + suffix)
    try:
        write(labels, named)
        os.replace(named, tmp)
    finally:
        named.unlink(missing_ok=True)
