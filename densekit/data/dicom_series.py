"""DICOM image series -> :class:`~densekit.data.volume.Volume`.

* **Scan** (:func:`scan_series`): headers only; image instances grouped by SeriesInstanceUID and
  orientation (a three-plane localizer gives three groups). Non-image objects (SEG, RTSTRUCT, RT
  plan/dose, SR, PR, ...) and DICOMDIR are recognised and skipped, never stacked with the images
  (MONAI's PydicomReader stacks every series of a folder together).
* **Order**: ImagePositionPatient projected on the slice normal, never InstanceNumber or name.
* **Spacing**: positions must sit on a regular grid (within ``SPACING_TOL`` of the spacing). Two
  slices at one position are an error; a gap of ``k`` spacings is ``k - 1`` missing slices: an
  error naming their positions, or (``on_missing="resample"``) slices interpolated linearly
  between their neighbours, with a warning, ``extra["interpolated_slices"]`` and SOPInstanceUID
  ``""``.
* **Gantry tilt**: the affine's slice column is the actual step between slices, so a tilted
  stack has a sheared affine: exact, nothing resampled; ``extra["gantry_tilt_deg"]`` and
  ``extra["sheared_affine"]`` say so (NIfTI keeps the shear in its sform).
* **Enhanced multi-frame** (PerFrameFunctionalGroupsSequence): one slice per frame; position
  from its PlanePositionSequence, orientation, pixel spacing and rescale from the per-frame or
  shared groups. Multi-frame objects without per-frame positions are refused.
* **Values**: RescaleSlope/Intercept (or Modality LUT) per slice, so CT is HU; no VOI (window):
  windows are :mod:`densekit.medical.intensity`. MONOCHROME1 means "show high values dark",
  applied after VOI; a window is monotone, so inverting after it equals reflecting the values
  before it: non-CT arrays become ``c - value`` (``c`` = lowest + highest value the stored bits
  hold after rescale, ``extra["monochrome1_reflected_about"]``), so every array is "high is
  bright". CT values are physical (HU) whatever the display polarity and are kept.
* **Compressed** syntaxes decode through pydicom's plugins (pylibjpeg-openjpeg, pylibjpeg-rle);
  an undecodable one is an error naming the file, the syntax and the package to install.

No patient tag is kept: ``Volume.patient_key`` is :func:`~densekit.data.volume.pseudonym`
of PatientID.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from densekit.data.dicom_groups import frame_item
from densekit.data.dicom_pixels import decode_pixels, modality_values, read_dicom, value_range
from densekit.data.dicom_volumes import SAME_POSITION_MM, Slice, check_one_volume
from densekit.data.volume import Volume, pseudonym
from densekit.errors import DensekitError, InputImageError

SPACING_TOL = 0.05  # a slice may sit this fraction of the slice spacing off the regular grid
DUPLICATE_MM = SAME_POSITION_MM  # slices closer than this along the normal share a position
TILT_TOL_DEG = 0.05  # steps further than this from the normal count as gantry tilt
ORIENTATION_TOL = 1e-3  # direction cosines within this are the same orientation

OnMissing = Literal["error", "resample"]

# Objects that carry no image to stack, by Modality and by SOP Class UID prefix.
RT_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "RWV"}
NON_IMAGE_MODALITIES = frozenset(RT_MODALITIES | {"SR", "PR", "KO", "ECG", "HD", "DOC", "AU"})
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "SEG/registration",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.481.8": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.88": "SR",
    "1.2.840.10008.5.1.4.1.1.11": "PR",
    "1.2.840.10008.5.1.4.1.1.9": "waveform",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class SeriesInfo:
    """One image series (one orientation of it) found by :func:`scan_series`.

    Attributes:
        uid: SeriesInstanceUID.
        modality: Modality (``""`` when absent).
        description: SeriesDescription (not PHI; ``""`` when absent).
        n_instances: number of files.
        n_frames: number of images (frames of multi-frame files counted).
        orientation: ImageOrientationPatient (6 cosines) or ``None`` when absent.
        files: the files, sorted by path.
    """

    uid: str
    modality: str
    description: str
    n_instances: int
    n_frames: int
    orientation: tuple[float, ...] | None
    files: tuple[Path, ...]

    def __str__(self) -> str:
        text = f"{self.uid} ({self.modality or '?'}, "  # no SeriesDescription: free text
        text += f"{self.n_instances} instances"
        if self.n_frames != self.n_instances:
            text += f", {self.n_frames} frames"
        if self.orientation is not None:
            text += ", orientation " + " ".join(f"{v:.3g}" for v in self.orientation)
        return text + ")"


@dataclass
class _Frame:
    """One slice: a single-frame file or one frame of an enhanced multi-frame file."""

    path: Path
    index: int | None  # frame index in a multi-frame file
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient
    spacing: tuple[float, ...] | None  # PixelSpacing (between rows, between columns)
    shape: tuple[int, int]
    sop_uid: str
    rescale: tuple[float, float] | None  # enhanced: (slope, intercept); None: from the dataset


def scan_series(folder: str | Path) -> list[SeriesInfo]:
    """The DICOM image series under ``folder`` (walked recursively; headers only).

    Raises:
        InputImageError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"{folder} is not a folder")
    return _scan(_walk(folder))[0]


def read_series(
    source: str | Path | Iterable[str | Path],
    series_uid: str | None = None,
    on_missing: OnMissing = "error",
) -> Volume:
    """Read one DICOM image series into a :class:`Volume` (see the module docstring).

    Args:
        source: a folder (walked recursively), one file, or a list of files.
        series_uid: the SeriesInstanceUID to read; needed when ``source`` holds several series.
        on_missing: missing slices (a gap of several spacings): ``"error"``, or ``"resample"``
            to interpolate them linearly from their neighbours (with a warning).

    Raises:
        InputImageError: no image series, several and none selected, inconsistent slices,
            duplicate or missing slices, uneven spacing, undecodable pixel data.
        DensekitError: ``on_missing`` is not one of its values.
    """
    if on_missing not in ("error", "resample"):
        raise DensekitError(f"on_missing={on_missing!r}: use 'error' or 'resample'")
    where, paths = _sources(source)
    infos, skipped, headers = _scan(paths)
    info = _select(infos, skipped, series_uid, where)
    frames = [f for path in info.files for f in _frames(headers[path], path)]
    first = headers[info.files[0]]
    if any(f.position is None or f.orientation is None for f in frames):
        if len(frames) > 1:
            bad = next(f for f in frames if f.position is None or f.orientation is None)
            raise InputImageError(
                f"series {info}: {bad.path} has no ImagePositionPatient/ImageOrientationPatient,"
                " so its slices cannot be ordered in space"
            )
        affine = _flat_geometry(first)
        order = [0]
        index = np.zeros(1, dtype=int)
        extra = {"geometry": "no ImagePositionPatient/ImageOrientationPatient: spacing only"}
    else:
        _check_in_plane(frames, info)
        check_one_volume(
            [Slice(f.position, headers[f.path], f.index) for f in frames],  # type: ignore[arg-type]
            _normal(frames[0]),
            info.uid,
        )
        affine, order, index, extra = _stack_geometry(frames, first, info, on_missing)
    array, pixel_extra = _pixels([frames[i] for i in order], headers, info)
    extra.update(pixel_extra)
    uids = [frames[i].sop_uid for i in order]
    if index[-1] + 1 > len(index):  # missing slices to interpolate
        array = interpolate_slices(array, index)
        known = dict(zip(index.tolist(), uids, strict=True))
        uids = [known.get(k, "") for k in range(len(array))]
    return Volume(
        array=array,
        affine=affine,
        modality=str(first.get("Modality", "")),
        series_uid=info.uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        patient_key=pseudonym(str(first.get("PatientID", ""))),
        sop_instance_uids=tuple(uids),
        source=where,
        extra=extra,
    )


def _walk(folder: Path) -> list[Path]:
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths += [Path(root) / name for name in sorted(files)]
    return paths


def _sources(source: str | Path | Iterable[str | Path]) -> tuple[str, list[Path]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return str(path), _walk(path)
        if not path.is_file():
            raise InputImageError(f"{path} is neither a folder nor a file")
        return str(path), [path]
    paths = [Path(p) for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise InputImageError(f"no such DICOM files: {missing[:5] or 'an empty list'}")
    return os.path.commonpath([str(p.parent) for p in paths]), paths


def _non_image_kind(ds: Dataset) -> str | None:
    """What a non-image object is ("SEG", "RTSTRUCT", ...), or None for an image."""
    modality = str(ds.get("Modality", ""))
    if modality in NON_IMAGE_MODALITIES:
        return modality
    sop = str(ds.get("SOPClassUID", ""))
    for prefix, kind in NON_IMAGE_SOP_CLASSES.items():
        if sop == prefix or sop.startswith(prefix + "."):
            return kind
    if "Rows" not in ds or "Columns" not in ds:
        return "no pixel data"
    return None


def _scan(paths: Iterable[Path]) -> tuple[list[SeriesInfo], Counter[str], dict[Path, Dataset]]:
    groups: dict[str, list[tuple[np.ndarray | None, list[Path]]]] = {}
    headers: dict[Path, Dataset] = {}
    skipped: Counter[str] = Counter()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped["non-DICOM file"] += 1
            continue
        meta_sop = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
        if path.name.upper() == "DICOMDIR" or meta_sop == DICOMDIR_SOP_CLASS:
            skipped["DICOMDIR"] += 1
            continue
        kind = _non_image_kind(ds)
        if kind is not None:
            skipped[kind] += 1
            continue
        headers[path] = ds
        iop = _orientation(ds)
        series = groups.setdefault(str(ds.get("SeriesInstanceUID", "")), [])
        for orientation, files in series:
            if _same_orientation(orientation, iop):
                files.append(path)
                break
        else:
            series.append((iop, [path]))
    infos = []
    for uid, series in sorted(groups.items()):
        for iop, files in series:
            head = headers[files[0]]
            infos.append(
                SeriesInfo(
                    uid=uid,
                    modality=str(head.get("Modality", "")),
                    description=str(head.get("SeriesDescription", "")),
                    n_instances=len(files),
                    n_frames=sum(int(headers[f].get("NumberOfFrames") or 1) for f in files),
                    orientation=None if iop is None else tuple(float(v) for v in iop),
                    files=tuple(sorted(files)),
                )
            )
    return infos, skipped, headers


def _same_orientation(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=ORIENTATION_TOL))


def _select(
    infos: list[SeriesInfo], skipped: Counter[str], series_uid: str | None, where: str
) -> SeriesInfo:
    if not infos:
        found = ", ".join(f"{kind} x{n}" for kind, n in sorted(skipped.items())) or "no files"
        raise InputImageError(f"{where} holds no DICOM image series (found: {found})")
    listing = "\n".join(f"  {info}" for info in infos)
    chosen = infos if series_uid is None else [i for i in infos if i.uid == series_uid]
    if not chosen:
        raise InputImageError(f"series {series_uid} is not in {where}; it holds:\n{listing}")
    uids = sorted({i.uid for i in chosen})
    if len(uids) > 1:
        raise InputImageError(
            f"{where} holds {len(uids)} image series; choose one with series_uid=...:\n{listing}"
        )
    if len(chosen) > 1:  # one series whose images lie in several orientations
        raise InputImageError(
            f"series {uids[0]} has images in {len(chosen)} orientations; pass the files of"
            f" one (SeriesInfo.files from scan_series) instead:\n{listing}"
        )
    return chosen[0]


def _orientation(ds: Dataset) -> np.ndarray | None:
    item = (
        frame_item(ds, 0, "PlaneOrientationSequence") if "ImageOrientationPatient" not in ds else ds
    )
    iop = None if item is None else item.get("ImageOrientationPatient")
    return None if iop is None else np.asarray([float(v) for v in iop])


def _floats(item: Dataset | None, keyword: str) -> np.ndarray | None:
    value = None if item is None else item.get(keyword)
    return None if value is None else np.asarray([float(v) for v in value])


def _frames(ds: Dataset, path: Path) -> list[_Frame]:
    shape = (int(ds.Rows), int(ds.Columns))
    sop = str(ds.get("SOPInstanceUID", ""))
    n = int(ds.get("NumberOfFrames") or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if n > 1:
            raise InputImageError(
                f"{path} holds {n} frames without per-frame positions "
                "(no PerFrameFunctionalGroupsSequence), so they cannot be placed in space"
            )
        position = _floats(ds, "ImagePositionPatient")
        iop = _floats(ds, "ImageOrientationPatient")
        spacing = _floats(ds, "PixelSpacing")
        sp = None if spacing is None else tuple(spacing)
        return [_Frame(path, None, position, iop, sp, shape, sop, None)]
    frames = []
    for i in range(n):
        position = _floats(frame_item(ds, i, "PlanePositionSequence"), "ImagePositionPatient")
        if position is None:
            raise InputImageError(f"{path}: frame {i + 1} has no PlanePositionSequence")
        spacing = _floats(frame_item(ds, i, "PixelMeasuresSequence"), "PixelSpacing")
        value = frame_item(ds, i, "PixelValueTransformationSequence") or Dataset()
        rescale = (float(value.get("RescaleSlope", 1)), float(value.get("RescaleIntercept", 0)))
        orientation = _floats(
            frame_item(ds, i, "PlaneOrientationSequence"), "ImageOrientationPatient"
        )
        sp = None if spacing is None else tuple(spacing)
        frames.append(_Frame(path, i, position, orientation, sp, shape, sop, rescale))
    return frames


def _normal(frame: _Frame) -> np.ndarray:
    """The unit slice normal of ``frame``'s orientation (rows x columns directions)."""
    iop = frame.orientation
    if iop is None:
        raise InputImageError(f"{_where(frame)} has no ImageOrientationPatient")
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _where(frame: _Frame) -> str:
    return str(frame.path) + ("" if frame.index is None else f" (frame {frame.index + 1})")


def _check_in_plane(frames: list[_Frame], info: SeriesInfo) -> None:
    ref = frames[0]
    if ref.spacing is None:
        raise InputImageError(f"series {info}: {_where(ref)} has no PixelSpacing")
    for f in frames[1:]:
        checks = (
            ("rows x columns", f.shape, ref.shape, f.shape == ref.shape),
            (
                "PixelSpacing",
                f.spacing,
                ref.spacing,
                f.spacing is not None and np.allclose(f.spacing, ref.spacing, rtol=1e-4),
            ),
            (
                "ImageOrientationPatient",
                f.orientation,
                ref.orientation,
                np.allclose(f.orientation, ref.orientation, atol=ORIENTATION_TOL),  # type: ignore[arg-type]
            ),
        )
        for what, a, b, ok in checks:
            if not ok:
                raise InputImageError(
                    f"series {info.uid}: {_where(f)} has {what} {_fmt(a)}, but {_where(ref)} "
                    f"has {_fmt(b)}; a volume needs the same grid on every slice"
                )


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list, np.ndarray)):
        return "(" + ", ".join(f"{float(v):g}" for v in value) + ")"
    return str(value)


def _stack_geometry(
    frames: list[_Frame], first: Dataset, info: SeriesInfo, on_missing: OnMissing
) -> tuple[np.ndarray, list[int], np.ndarray, dict]:
    """Affine, slice order, grid index of each sorted slice and notes for ``Volume.extra``."""
    iop = frames[0].orientation
    pixel = frames[0].spacing
    assert iop is not None and pixel is not None  # checked by the caller
    normal = _normal(frames[0])  # iop: directions of increasing column, row index
    positions = np.stack([f.position for f in frames])  # type: ignore[misc]
    order = [int(i) for i in np.argsort(positions @ normal, kind="stable")]
    positions = positions[order]
    depth = positions @ normal
    affine = np.eye(4)
    affine[:3, 1] = iop[3:] * pixel[0]
    affine[:3, 2] = iop[:3] * pixel[1]
    affine[:3, 3] = positions[0]
    if len(frames) == 1:
        affine[:3, 0] = normal * float(
            first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        )
        note = "one slice: SpacingBetweenSlices or SliceThickness (or 1 mm)"
        return affine, order, np.zeros(1, dtype=int), {"slice_spacing": note}
    gaps = np.diff(depth)
    dup = int(np.argmin(gaps))
    if gaps[dup] < DUPLICATE_MM:
        a, b = frames[order[dup]], frames[order[dup + 1]]
        raise InputImageError(
            f"series {info.uid}: {_where(a)} and {_where(b)} are both at {depth[dup]:.3f} mm "
            "along the slice normal (duplicate slices: several acquisitions, echoes or "
            "time points in one series?); pass the files of one stack"
        )
    spacing = float(np.median(gaps))
    index = np.rint((depth - depth[0]) / spacing).astype(int)
    step = (positions[-1] - positions[0]) / index[-1]
    residual = np.linalg.norm(positions - positions[0] - index[:, None] * step, axis=1)
    worst = int(np.argmax(residual))
    if residual[worst] > SPACING_TOL * spacing or len(set(index.tolist())) < len(index):
        gap_text = ", ".join(f"{g:.3g}" for g in gaps[:20]) + (" ..." if len(gaps) > 20 else "")
        raise InputImageError(
            f"series {info.uid}: uneven slice spacing: gaps between sorted slices {gap_text} mm"
            f" (median {spacing:.3g} mm); {_where(frames[order[worst]])} at {depth[worst]:.3f} mm"
            f" is {residual[worst]:.3g} mm off the regular grid (tolerance "
            f"{SPACING_TOL * spacing:.3g} mm)"
        )
    missing = sorted(set(range(int(index[-1]) + 1)) - set(index.tolist()))
    extra: dict = {}
    if missing:
        spacing = float(step @ normal)
        where = ", ".join(f"{depth[0] + k * spacing:.2f}" for k in missing[:20])
        where += " ..." if len(missing) > 20 else ""
        if on_missing == "error":
            below = frames[order[int(np.searchsorted(index, missing[0])) - 1]]
            raise InputImageError(
                f"series {info.uid}: {len(missing)} slice(s) missing at {where} mm along the "
                f"slice normal (spacing {spacing:.3g} mm; first gap after {_where(below)}); "
                "pass on_missing='resample' to interpolate them"
            )
        warnings.warn(
            f"series {info.uid}: {len(missing)} missing slice(s) at {where} mm along the normal"
            " linearly interpolated from their neighbours",
            stacklevel=3,
        )
        extra["interpolated_slices"] = missing
    tilt = float(np.degrees(np.arccos(np.clip(abs(step @ normal) / np.linalg.norm(step), 0, 1))))
    if tilt > TILT_TOL_DEG:
        extra.update(gantry_tilt_deg=round(tilt, 3), sheared_affine=True)
    affine[:3, 0] = step
    return affine, order, index, extra


def _flat_geometry(ds: Dataset) -> np.ndarray:
    """The affine of one image without patient geometry (e.g. a radiograph): spacing only."""
    spacing = _floats(ds, "PixelSpacing")
    spacing = _floats(ds, "ImagerPixelSpacing") if spacing is None else spacing
    return np.diag([1.0, *(spacing[:2] if spacing is not None else (1.0, 1.0)), 1.0])


def _pixels(
    frames: list[_Frame], headers: dict[Path, Dataset], info: SeriesInfo
) -> tuple[np.ndarray, dict]:
    """The slices in ``frames`` order, modality-transformed, MONOCHROME1 reflected."""
    photometric = {str(headers[f.path].get("PhotometricInterpretation", "")) for f in frames}
    if len(photometric) > 1 or not photometric <= {"MONOCHROME1", "MONOCHROME2", ""}:
        raise InputImageError(
            f"series {info}: PhotometricInterpretation {sorted(photometric)}; a volume needs "
            "grayscale slices (MONOCHROME1 or MONOCHROME2) of one kind"
        )
    out = np.empty((len(frames), *frames[0].shape), dtype=np.float32)
    decoded: dict[Path, tuple[Dataset, np.ndarray]] = {}
    ranges = []
    for k, frame in enumerate(frames):
        if frame.path not in decoded:
            ds = read_dicom(frame.path)
            decoded = {frame.path: (ds, decode_pixels(ds, frame.path))}  # one file in memory
        ds, pixels = decoded[frame.path]
        if frame.index is not None:
            pixels = pixels[frame.index] if pixels.ndim == 3 else pixels
        if pixels.shape != frame.shape:
            raise InputImageError(
                f"{_where(frame)}: pixel data of shape {pixels.shape}, "
                f"expected rows x columns {frame.shape}"
            )
        out[k] = modality_values(pixels, ds, frame.rescale)
        ranges.append(value_range(ds, frame.rescale))
    extra: dict = {"photometric": photometric.pop() or "MONOCHROME2"}
    if extra["photometric"] == "MONOCHROME1":
        if info.modality == "CT":
            extra["monochrome1"] = "kept: CT values are HU whatever the display polarity"
        else:
            centre = min(r[0] for r in ranges) + max(r[1] for r in ranges)
            out = centre - out
            extra["monochrome1_reflected_about"] = centre
    return out, extra


def interpolate_slices(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Slices at grid positions ``0 .. index[-1]`` from those at ``index`` (sorted), linearly."""
    grid = np.arange(int(index[-1]) + 1)
    below = np.searchsorted(index, grid, side="right") - 1
    above = np.minimum(below + 1, len(index) - 1)
    weight = ((grid - index[below]) / np.maximum(index[above] - index[below], 1))[:, None, None]
    return ((1 - weight) * array[below] + weight * array[above]).astype(array.dtype)
