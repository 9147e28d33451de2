"""Masks on an image's grid: DICOM SEG, RTSTRUCT, NIfTI/NRRD label maps and 2D PNG masks.

Every reader takes the image :class:`~densekit.data.volume.Volume` and puts the mask on its
voxels **by geometry**, never by file order:

* **DICOM SEG** (:func:`read_seg`, highdicom): frames are matched to the image's slices by the
  SOPInstanceUIDs they reference; a SEG without per-frame references is placed by its frame
  positions (PlanePositionSequence) through the image's inverse affine. Either way every frame
  position present must agree with the slice it lands on (``tol_mm``), and orientation and
  pixel spacing must be the image's. One channel per segment, so overlapping segments are kept;
  :func:`label_map` turns disjoint ones into one label map.
* **RTSTRUCT** (:func:`read_rtstruct`): each CLOSED_PLANAR contour (LPS mm) goes through the
  image's inverse affine to continuous voxel coordinates ``(slice, row, column)``, in which a
  voxel's centre sits at integer values. A contour must lie on one slice plane (within
  ``slice_tol`` of the slice spacing). It is filled with GDAL's scanline rule
  (``rasterio.features.rasterize``): a voxel is inside when its centre is inside the polygon;
  a centre exactly on an edge counts on one side only, so a square with corners on voxel
  centres covers (side / spacing)^2 voxels. Coordinates are first rounded to 1/1000 voxel so
  that the decimal strings of ContourData cannot move an edge across a centre. Several
  contours of one ROI on one slice combine by XOR (even-odd): an inner contour is a hole, as
  in rt-utils and plastimatch.
* **Label maps** (:func:`read_label_map`): NIfTI/NRRD on the image's grid, or on the same voxels
  in another axis order (permuted / flipped exactly by
  :func:`~densekit.data.nifti.reorient_like`); integer values.
* **PNG masks** (:func:`read_png_mask`): raw values (0/255 stays 0/255: mapping values to
  classes is the caller's); lossy JPEG masks need an explicit ``threshold``.

Masks from SEG and RTSTRUCT are ``(K, slices, rows, columns)``: uint8 0/1 (float32 in [0, 1]
for a fractional SEG), with the K segment or ROI names.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from densekit.data.nifti import NIFTI_SUFFIXES, NRRD_SUFFIXES, nifti_dtype, read_volume
from densekit.data.nifti import reorient_like as _reorient_like
from densekit.data.volume import Volume
from densekit.errors import DensekitError, InputImageError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SLICE_TOL = 0.1  # a contour may sit this fraction of the slice spacing off a slice plane
SEG_TOL_MM = 0.1  # a SEG frame may sit this far (mm) from the slice it is matched to

OnOutside = Literal["error", "warn"]


# ----------------------------------------------------------------------------------- DICOM SEG
def read_seg(
    path: str | Path, image: Volume, tol_mm: float = SEG_TOL_MM
) -> tuple[np.ndarray, list[str]]:
    """Read a DICOM SEG onto the grid of ``image`` (see the module docstring).

    Args:
        path: the SEG file.
        image: the segmented image (e.g. from :func:`~densekit.data.dicom_series.read_series`).
        tol_mm: how far a frame's position may be from the slice it is matched to.

    Returns:
        ``(K, slices, rows, columns)`` masks, one channel per segment in segment-number order
        (uint8 0/1 for BINARY and LABELMAP, float32 in [0, 1] for FRACTIONAL), and the K
        segment labels.

    Raises:
        InputImageError: not a SEG; a SEG of another series (other FrameOfReferenceUID, or
            source instances not in ``image``: both series UIDs are named); other orientation,
            pixel spacing or frame size; frames off the image's slices.
    """
    import highdicom as hd

    path = Path(path)
    seg = _open_seg(path)
    numbers = list(seg.segment_numbers)
    names = [str(seg.get_segment_description(n).segment_label) for n in numbers]
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    dtype = np.float32 if fractional else np.uint8
    _check_seg_geometry(seg, image, path)
    sources = [_frame_sources(item) for item in seg.PerFrameFunctionalGroupsSequence]
    uids = [u for u in image.sop_instance_uids if u]
    by_uid = bool(sources) and all(sources) and len(uids) == len(set(uids)) > 0
    try:
        if by_uid:
            masks = _seg_by_uid(seg, image, path, sources, numbers, dtype)
        else:
            masks = _seg_by_position(seg, image, path, numbers, dtype, tol_mm)
    except (ValueError, RuntimeError, KeyError, IndexError) as err:  # highdicom's checks
        raise InputImageError(f"{path}: highdicom cannot read its frames: {err}") from err
    if by_uid:
        _check_frame_positions(seg, image, path, sources, tol_mm)
    return masks, names


def _open_seg(path: Path):
    import highdicom as hd

    if not path.is_file():
        raise InputImageError(f"no such DICOM SEG file: {path}")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # pydicom raises InvalidDicomError, OSError, ...
        raise InputImageError(f"{path} is not a readable DICOM file: {err}") from err
    if str(header.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputImageError(
            f"{path} is not a DICOM SEG (Modality {header.get('Modality', 'none')}, SOPClassUID "
            f"{header.get('SOPClassUID', 'none')}; a SEG has {SEG_SOP_CLASS})"
        )
    try:
        return hd.seg.segread(path)
    except Exception as err:  # highdicom validates many attributes
        raise InputImageError(f"{path}: highdicom cannot read this SEG: {err}") from err


def _other_series(seg: Dataset, image: Volume, path: Path, why: str) -> InputImageError:
    refs = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]
    return InputImageError(
        f"{path} segments another series: it references series {', '.join(refs) or 'none'}, "
        f"but the image {image.source} is series {image.series_uid or 'without a UID'} ({why})"
    )


def _check_seg_geometry(seg: Dataset, image: Volume, path: Path) -> None:
    seg_for = str(seg.get("FrameOfReferenceUID", ""))
    image_for = image.frame_of_reference_uid
    if seg_for and image_for and seg_for != image_for:
        raise _other_series(
            seg, image, path, f"FrameOfReferenceUID {seg_for} vs the image's {image_for}"
        )
    if (int(seg.Rows), int(seg.Columns)) != image.shape[1:]:
        raise InputImageError(
            f"{path}: frames of {seg.Rows} x {seg.Columns} pixels, but the image's slices are "
            f"{image.shape[1]} x {image.shape[2]} ({image.describe()})"
        )
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    item = shared.get("PlaneOrientationSequence", [Dataset()])[0]
    iop = item.get("ImageOrientationPatient")
    if iop is not None:
        cols = image.affine[:3, 2] / np.linalg.norm(image.affine[:3, 2])
        rows = image.affine[:3, 1] / np.linalg.norm(image.affine[:3, 1])
        if not np.allclose([float(v) for v in iop], [*cols, *rows], atol=1e-3):
            raise InputImageError(
                f"{path}: ImageOrientationPatient {[float(v) for v in iop]} differs from the "
                f"image's {np.round([*cols, *rows], 4).tolist()}"
            )
    spacing = shared.get("PixelMeasuresSequence", [Dataset()])[0].get("PixelSpacing")
    if spacing is not None and not np.allclose(
        [float(v) for v in spacing], image.spacing[1:], rtol=1e-3
    ):
        raise InputImageError(
            f"{path}: PixelSpacing {[float(v) for v in spacing]} differs from the image's "
            f"{list(np.round(image.spacing[1:], 6))} mm"
        )


def _frame_sources(item: Dataset) -> list[str]:
    return [
        str(src.ReferencedSOPInstanceUID)
        for der in item.get("DerivationImageSequence", [])
        for src in der.get("SourceImageSequence", [])
    ]


def _frame_position(item: Dataset) -> np.ndarray | None:
    plane = item.get("PlanePositionSequence")
    iop = None if not plane else plane[0].get("ImagePositionPatient")
    return None if iop is None else np.asarray([float(v) for v in iop])


def _seg_by_uid(
    seg, image: Volume, path: Path, sources: list[list[str]], numbers: list[int], dtype: type
) -> np.ndarray:
    index = {u: k for k, u in enumerate(image.sop_instance_uids) if u}
    missing = sorted({u for refs in sources for u in refs} - index.keys())
    if missing:
        why = f"{len(missing)} source instances are not in the image, e.g. {missing[0]}"
        raise _other_series(seg, image, path, why)
    wanted = list(index)
    pixels = seg.get_pixels_by_source_instance(
        wanted,
        segment_numbers=numbers,
        ignore_spatial_locations=True,  # checked by _check_frame_positions instead
        assert_missing_frames_are_empty=True,  # slices without frames: empty
        skip_overlap_checks=True,
        dtype=dtype,
    )
    masks: np.ndarray = np.zeros((len(numbers), *image.shape), dtype=dtype)
    masks[:, [index[u] for u in wanted]] = np.moveaxis(pixels, 3, 0)
    return masks


def _seg_by_position(
    seg, image: Volume, path: Path, numbers: list[int], dtype: type, tol_mm: float
) -> np.ndarray:
    hv = seg.get_volume(segment_numbers=numbers, dtype=dtype, allow_missing_positions=True)
    to_image = np.linalg.inv(image.affine) @ hv.affine
    masks: np.ndarray = np.zeros((len(numbers), *image.shape), dtype=dtype)
    for s in range(hv.array.shape[0]):
        index = to_image @ np.array([s, 0.0, 0.0, 1.0])
        k = int(np.rint(index[0]))
        off = np.abs(index[:3] - [k, 0, 0]) * np.asarray(image.spacing)
        if off.max() > tol_mm or not 0 <= k < image.shape[0]:
            position = np.round(hv.affine[:3] @ np.array([s, 0.0, 0.0, 1.0]), 3).tolist()
            raise InputImageError(
                f"{path}: frames at {position} mm LPS are not on a slice of the image "
                f"({image.describe()}): voxel coordinates {np.round(index[:3], 3).tolist()}"
            )
        masks[:, k] = np.moveaxis(hv.array[s], 2, 0)
    return masks


def _check_frame_positions(
    seg: Dataset, image: Volume, path: Path, sources: list[list[str]], tol_mm: float
) -> None:
    """Each frame with a position must lie on the slice whose instance it references."""
    index = {u: k for k, u in enumerate(image.sop_instance_uids) if u}
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = _frame_position(item)
        if position is None:
            continue
        k = index[sources[f][0]]
        expected = image.affine[:3] @ np.array([k, 0.0, 0.0, 1.0])
        if np.linalg.norm(position - expected) > tol_mm:
            raise InputImageError(
                f"{path}: frame {f + 1} references slice {k} of the image (SOPInstanceUID "
                f"{sources[f][0]}) at {np.round(expected, 3).tolist()} mm LPS, but lies at "
                f"{np.round(position, 3).tolist()} mm: the SEG and the image disagree on geometry"
            )


def label_map(masks: np.ndarray, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """One label map from per-segment masks: voxels of channel ``k`` get label ``k + 1``.

    Args:
        masks: ``(K, ...)`` masks from :func:`read_seg` or :func:`read_rtstruct` (fractional
            masks count where they are >= 0.5).
        names: the K segment names (for the error message).

    Returns:
        ``(...)`` uint8 labels (uint16 beyond 255 segments), 0 for background.

    Raises:
        DensekitError: segments overlap (the overlapping pairs and voxel counts are named):
            keep the per-segment masks for those.
    """
    if len(names) != masks.shape[0]:
        raise DensekitError(f"{masks.shape[0]} mask channels but {len(names)} names")
    binary = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks > 0
    counts = binary.sum(axis=0)
    if counts.max(initial=0) > 1:
        flat = binary.reshape(len(names), -1)[:, counts.reshape(-1) > 1]
        pairs = [
            f"'{names[a]}' and '{names[b]}' ({int((flat[a] & flat[b]).sum())} voxels)"
            for a in range(len(names))
            for b in range(a + 1, len(names))
            if (flat[a] & flat[b]).any()
        ]
        raise DensekitError(
            f"segments overlap, so they cannot share one label map: {'; '.join(pairs)}; "
            "use the per-segment masks instead"
        )
    labels = np.zeros(masks.shape[1:], dtype=np.uint8 if len(names) < 256 else np.uint16)
    for k in range(len(names)):
        labels[binary[k]] = k + 1
    return labels


# ------------------------------------------------------------------------------------ RTSTRUCT
def read_rtstruct(
    path: str | Path,
    image: Volume,
    on_outside: OnOutside = "error",
    slice_tol: float = SLICE_TOL,
) -> tuple[np.ndarray, list[str]]:
    """Rasterise the ROIs of an RTSTRUCT on the grid of ``image`` (see the module docstring).

    Args:
        path: the RTSTRUCT file.
        image: the image the structures were drawn on.
        on_outside: contours on planes outside the image's slices (e.g. a structure set drawn
            on a longer series): ``"error"``, or ``"warn"`` to leave them out with a warning.
        slice_tol: how far (fraction of the slice spacing) a contour may be from a slice plane.

    Returns:
        ``(K, slices, rows, columns)`` uint8 0/1 masks in StructureSetROISequence order and the
        K ROI names. POINT and OPEN contours are left out with a warning.

    Raises:
        InputImageError: not an RTSTRUCT; another FrameOfReferenceUID and another series; a
            contour off the slice planes, outside the image (``on_outside="error"``) or on
            another slice than the image instance it references.
        DensekitError: ``on_outside`` is not one of its values.
    """
    if on_outside not in ("error", "warn"):
        raise DensekitError(f"on_outside={on_outside!r}: use 'error' or 'warn'")
    path = Path(path)
    ds = _open_rtstruct(path)
    _check_rt_reference(ds, image, path)
    rois = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.StructureSetROISequence}
    channel = {number: k for k, number in enumerate(rois)}
    names = list(rois.values())
    masks = np.zeros((len(rois), *image.shape), dtype=np.uint8)
    inverse = np.linalg.inv(image.affine)
    slice_of = {u: k for k, u in enumerate(image.sop_instance_uids) if u}
    left_out: Counter[str] = Counter()
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number not in channel:
            raise InputImageError(
                f"{path}: ROIContourSequence refers to ROI number {number}, which is not in "
                f"StructureSetROISequence ({sorted(rois)})"
            )
        name = rois[number]
        for n, contour in enumerate(item.get("ContourSequence", []), start=1):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            if kind != "CLOSED_PLANAR" or len(points) < 3:
                left_out[f"ROI '{name}': {kind} contour of {len(points)} point(s)"] += 1
                continue
            voxel = points @ inverse[:3, :3].T + inverse[:3, 3]  # (slice, row, column)
            where = f"{path}: ROI '{name}' contour {n}"
            k = int(np.rint(np.median(voxel[:, 0])))
            off = float(np.abs(voxel[:, 0] - k).max())
            if off > slice_tol:
                raise InputImageError(
                    f"{where} is {off * image.spacing[0]:.3g} mm off the slice plane {k} "
                    f"(slice coordinates {voxel[:, 0].min():.3f} to {voxel[:, 0].max():.3f}; "
                    f"tolerance {slice_tol} of the {image.spacing[0]:.3g} mm spacing)"
                )
            if not 0 <= k < image.shape[0]:
                text = (
                    f"{where} lies on slice plane {k}, outside the image's "
                    f"{image.shape[0]} slices ({image.describe()})"
                )
                if on_outside == "error":
                    raise InputImageError(text + "; pass on_outside='warn' to leave it out")
                left_out[f"ROI '{name}': contour outside the image"] += 1
                continue
            for ref in contour.get("ContourImageSequence", []):
                uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                if uid in slice_of and slice_of[uid] != k:
                    raise InputImageError(
                        f"{where} lies on slice {k} but references the image instance {uid},"
                        f" which is slice {slice_of[uid]}: contour and image disagree"
                    )
            masks[channel[number], k] ^= _fill(voxel[:, 1:], image.shape[1:])
    if left_out:
        listing = "; ".join(f"{what} x{count}" for what, count in sorted(left_out.items()))
        warnings.warn(f"{path}: contours left out: {listing}", stacklevel=2)
    return masks, names


def _open_rtstruct(path: Path) -> Dataset:
    if not path.is_file():
        raise InputImageError(f"no such RTSTRUCT file: {path}")
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises InvalidDicomError, OSError, ...
        raise InputImageError(f"{path} is not a readable DICOM file: {err}") from err
    if ds.get("Modality") != "RTSTRUCT" and ds.get("SOPClassUID") != RTSTRUCT_SOP_CLASS:
        raise InputImageError(
            f"{path} is not an RTSTRUCT (Modality {ds.get('Modality', 'none')}, SOPClassUID "
            f"{ds.get('SOPClassUID', 'none')})"
        )
    if "StructureSetROISequence" not in ds:
        raise InputImageError(f"{path}: RTSTRUCT without StructureSetROISequence")
    return ds


def _check_rt_reference(ds: Dataset, image: Volume, path: Path) -> None:
    """FrameOfReferenceUID must be the image's; a writer that put a wrong one but references
    the image's series (rt-utils' test data) is accepted with a warning."""
    frames = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])}
    frames |= {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.StructureSetROISequence}
    frames.discard("")
    series = {
        str(se.SeriesInstanceUID)
        for fr in ds.get("ReferencedFrameOfReferenceSequence", [])
        for st in fr.get("RTReferencedStudySequence", [])
        for se in st.get("RTReferencedSeriesSequence", [])
    }
    mine = image.frame_of_reference_uid
    if not mine:
        warnings.warn(
            f"{image.source}: no FrameOfReferenceUID (not DICOM?); the contours of "
            f"{path} are placed by their coordinates only",
            stacklevel=3,
        )
    elif frames != {mine} and image.series_uid in series:
        warnings.warn(
            f"{path}: FrameOfReferenceUID {sorted(frames)} is not the image's "
            f"{mine}, but it references the image's series {image.series_uid}: "
            "contours placed on it",
            stacklevel=3,
        )
    elif frames != {mine}:
        raise InputImageError(
            f"{path} was drawn on another image: FrameOfReferenceUID {sorted(frames) or 'none'}"
            f" and series {sorted(series) or 'none'}, but the image {image.source} has "
            f"FrameOfReferenceUID {mine} and series {image.series_uid or 'none'}"
        )


def _fill(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxels of a ``(rows, columns)`` slice whose centre is inside the polygon ``points``
    (``(N, 2)`` row, column voxel coordinates; centres at integers)."""
    from affine import Affine
    from rasterio.features import rasterize

    points = np.round(points, 3)  # decimal-string noise must not move an edge over a centre
    ring = [(float(c) + 0.5, float(r) + 0.5) for r, c in points]  # GDAL: centres at +0.5
    polygon = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    return rasterize(
        [(polygon, 1)], out_shape=shape, transform=Affine.identity(), fill=0, dtype="uint8"
    )


# ---------------------------------------------------------------------- label maps, PNG masks
def read_label_map(path: str | Path, image: Volume, tol_mm: float = 1e-3) -> Volume:
    """Read a NIfTI/NRRD label map and put it on the grid of ``image``.

    The map must be on the image's grid (:meth:`Volume.same_grid` within ``tol_mm``) or on
    the same voxels in another axis order (permuted and flipped exactly, nothing resampled).
    Floating-point files are accepted when every value is a whole number.

    Returns:
        A Volume on ``image``'s grid with integer labels (uint8, int16 or int32).

    Raises:
        InputImageError: not NIfTI/NRRD, another grid (both geometries stated), or a value that
            is not a whole number (named).
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((*NIFTI_SUFFIXES, *NRRD_SUFFIXES)):
        raise InputImageError(
            f"{path}: a label map is {', '.join(NIFTI_SUFFIXES + NRRD_SUFFIXES)}; use read_seg "
            "or read_rtstruct for DICOM masks"
        )
    labels = read_volume(path)
    array = labels.array
    if not np.issubdtype(array.dtype, np.integer):
        fractional = array[array != np.round(array)] if array.dtype != np.bool_ else array[:0]
        if fractional.size:
            raise InputImageError(
                f"{path}: label maps hold whole numbers, found {float(fractional.flat[0]):g} "
                f"({fractional.size} voxels are not whole numbers)"
            )
        array = array.astype(nifti_dtype(array.astype(np.int64)))
    labels = Volume(array=array, affine=labels.affine, source=str(path))
    return _reorient_like(labels, image, tol_mm)


def read_png_mask(path: str | Path, threshold: int | None = None) -> np.ndarray:
    """Read a 2D mask image as ``(rows, columns)`` raw values.

    Grayscale, palette (the indices) and 16-bit PNGs give their stored values; RGB(A) files
    whose colour channels are all equal give one of them. Mapping values to classes (e.g.
    255 -> 1) is the caller's. JPEG masks are lossy (a 0/255 mask holds every value between),
    so they need ``threshold``.

    Args:
        path: a PNG (or other image) file.
        threshold: if given, the mask is ``value >= threshold`` as uint8 0/1.

    Raises:
        InputImageError: unreadable file, colour channels that differ (a colour-coded mask), or
            a JPEG without ``threshold``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            kind = img.format
            mode = img.mode
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError) as err:
        raise InputImageError(f"{path} is not a readable image: {err}") from err
    if array.ndim == 3:
        colour = array[..., :3]
        differ = np.argwhere((colour != colour[..., :1]).any(axis=-1))
        if len(differ):
            r, c = (int(v) for v in differ[0])
            raise InputImageError(
                f"{path}: a colour-coded {mode} mask (pixel row {r}, column {c} is "
                f"{colour[r, c].tolist()}); map its colours to labels first"
            )
        array = colour[..., 0]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if threshold is not None:
        return (array >= threshold).astype(np.uint8)
    if kind == "JPEG":
        raise InputImageError(
            f"{path}: a JPEG mask is lossy (its values spread between "
            f"{int(array.min())} and {int(array.max())}); pass threshold=128 (or another)"
        )
    return array
