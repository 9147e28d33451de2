"""NIfTI and NRRD files <-> :class:`~densekit.data.volume.Volume`.

Axis convention (the same for both formats, no guessing): the file's voxel axes ``(i, j, k)``
(``i`` fastest on disk) become the Volume's ``(column, row, slice)``, so the array is the file's
array transposed to ``(k, j, i)`` and the affine's columns are reordered to match. Nothing is
resampled or flipped: a file stored "upside down" gives a Volume whose affine says so. Labels on
the same voxels stored in another axis order are put on an image's grid by
:func:`reorient_like` (an exact permutation / flip of the axes, checked by geometry).

* **NIfTI** (nibabel): the affine nibabel picks (sform, else qform, else the zooms), RAS ->
  LPS. :func:`write_nifti` writes ``Volume.nifti_affine()`` into both sform and qform (code 1,
  scanner), so ``read_nifti(write_nifti(v))`` gives back the array and the affine (to the
  float32 precision of the header). A sheared affine (gantry tilt) is exact in the sform only.
* **NRRD** (pynrrd): ``space directions`` (one vector per axis) and ``space origin`` in the
  file's ``space``: left-posterior-superior (LPS), right-anterior-superior (RAS) or
  left-anterior-superior (LAS); other spaces (``scanner-xyz``, ``3D-right-handed``, time
  spaces, no space at all) are an error naming the file and the value.
* Integer voxels keep their stored type (labels, CT in HU); floating point becomes float32.
  NaN or infinite voxels are refused (:func:`check_finite`), naming the file and their count.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from densekit.data.volume import LPS_TO_RAS, Volume
from densekit.errors import DensekitError, InputImageError

if TYPE_CHECKING:
    from densekit.data.dicom_series import OnMissing

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# (i, j, k) of the file <-> (slice, row, column) of the Volume; a permutation, its own inverse.
_SWAP = np.zeros((4, 4))
_SWAP[0, 2] = _SWAP[1, 1] = _SWAP[2, 0] = _SWAP[3, 3] = 1.0

# NRRD spaces -> the sign that turns each of their axes into LPS.
NRRD_SPACES = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
}
_NRRD_SPACE_ALIASES = {
    "LPS": "left-posterior-superior",
    "RAS": "right-anterior-superior",
    "LAS": "left-anterior-superior",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _from_file_axes(
    data: np.ndarray, affine_ijk_lps: np.ndarray, path: Path, extra: dict
) -> Volume:
    """Volume from a file array ``(i, j, k)`` and its (i, j, k) -> LPS affine."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputImageError(
            f"{path} holds an array of shape {data.shape}; a Volume needs 3 spatial axes "
            "(one channel, one time point)"
        )
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        data = data.astype(np.float32)
        check_finite(data, path)
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return Volume(array=array, affine=affine_ijk_lps @ _SWAP, source=str(path), extra=extra)


def check_finite(data: np.ndarray, path: Path) -> None:
    """Refuse voxels that are NaN or infinite. A volume has no nodata value: a raster's NaN
    pixels become nodata in its map, but a NaN voxel would be windowed, fed to the model and
    labelled like tissue (or, in a label map, cast to an arbitrary class)."""
    bad = ~np.isfinite(data)
    count = int(bad.sum())
    if count:
        nan = int(np.isnan(data).sum())
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputImageError(
            f"{path}: {count} of {data.size} voxels are not finite ({nan} NaN, {count - nan} "
            f"infinite; the first at voxel (i, j, k) = {first}); a volume has no nodata value, "
            "so densekit does not label them: replace them with a real value first (e.g. the "
            "background intensity, or 0 in a label map)"
        )


def read_nifti(path: str | Path) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file (see the module docstring for the axes).

    Raises:
        InputImageError: missing or unreadable file, more than 3 axes (other than a single
            time point), a singular affine, or NaN or infinite voxels.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"no such NIfTI file: {path}")
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(f"nibabel reads it as {type(image).__name__}")
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for damaged files
        raise InputImageError(f"{path} is not a readable NIfTI file: {err}") from err
    header = image.header
    source = "sform" if int(header["sform_code"]) > 0 else "qform"
    source = source if int(header[f"{source}_code"]) > 0 else "zooms (no sform or qform)"
    affine = np.asarray(image.affine, dtype=np.float64)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputImageError(f"{path}: the NIfTI affine is singular: {affine[:3].tolist()}")
    return _from_file_axes(data, LPS_TO_RAS @ affine, path, {"nifti_affine_from": source})


def read_nrrd(path: str | Path) -> Volume:
    """Read a ``.nrrd`` (or detached ``.nhdr``) file (see the module docstring).

    Raises:
        InputImageError: missing or unreadable file, no or unsupported ``space``, no
            ``space directions``, a non-spatial axis of size > 1.
    """
    import nrrd

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"no such NRRD file: {path}")
    try:
        data, header = nrrd.read(str(path))
    except Exception as err:  # pynrrd raises NRRDError, ValueError, OSError, ...
        raise InputImageError(f"{path} is not a readable NRRD file: {err}") from err
    space = header.get("space")
    space = _NRRD_SPACE_ALIASES.get(str(space), space)
    if space not in NRRD_SPACES:
        raise InputImageError(
            f"{path}: NRRD space {space!r} is not supported; use one of "
            f"{sorted(NRRD_SPACES)} (or their short forms LPS, RAS, LAS)"
        )
    directions = header.get("space directions")
    if directions is None:
        raise InputImageError(f"{path}: NRRD header has no 'space directions'")
    directions = np.asarray(directions, dtype=float)
    spatial = [a for a in range(directions.shape[0]) if np.isfinite(directions[a]).all()]
    if len(spatial) != 3 or any(data.shape[a] != 1 for a in range(data.ndim) if a not in spatial):
        raise InputImageError(
            f"{path}: NRRD of sizes {list(data.shape)} with space directions "
            f"{directions.tolist()}; a Volume needs 3 spatial axes and no other axis of size > 1"
        )
    data = data.reshape([data.shape[a] for a in spatial])
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T  # column a: the step of file axis a
    affine[:3, 3] = origin
    affine = np.diag([*NRRD_SPACES[space], 1.0]) @ affine
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputImageError(f"{path}: NRRD space directions are singular: {directions.tolist()}")
    return _from_file_axes(data, affine, path, {"nrrd_space": space})


def nifti_dtype(array: np.ndarray) -> np.dtype:
    """The type :func:`write_nifti` stores: uint8 or int16 (else int32) labels, float32 images."""
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return np.dtype(candidate)
        raise DensekitError(f"labels from {low} to {high} do not fit a NIfTI int32")
    return np.dtype(np.float32)


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    The array is transposed to ``(column, row, slice)``; sform and qform are both
    ``volume.nifti_affine()`` (code 1, scanner). Integer labels are stored as uint8 or int16
    (int32 when they need it), everything else as float32. The file is written next to its
    destination under a temporary name and renamed, so a failure leaves nothing behind.

    Returns:
        The path written.

    Raises:
        DensekitError: a suffix other than ``.nii`` / ``.nii.gz``, or a missing folder.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _suffix(path)
    if suffix not in NIFTI_SUFFIXES:
        raise DensekitError(f"{path}: a NIfTI file name ends in .nii or .nii.gz, not {suffix!r}")
    if not path.parent.is_dir():
        raise DensekitError(f"{path}: folder {path.parent} does not exist")
    data = np.transpose(volume.array, (2, 1, 0)).astype(nifti_dtype(volume.array), copy=False)
    affine = volume.nifti_affine()
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        nib.save(image, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask: from /proc on Linux, else read by setting it and setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_volume(
    path: str | Path, series_uid: str | None = None, on_missing: OnMissing = "error"
) -> Volume:
    """Read a volume from a NIfTI, NRRD or DICOM source, chosen by its name.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, a DICOM file (``.dcm``) or a folder
            of DICOM files (:func:`densekit.data.dicom_series.read_series`).
        series_uid: for DICOM only, the series to read when there are several.
        on_missing: for DICOM only, missing slices: ``"error"`` or ``"resample"``
            (:func:`~densekit.data.dicom_series.read_series`).

    Raises:
        InputImageError: a missing path, an unknown suffix (the valid ones are listed), or an
            error of the reader.
        DensekitError: a ``series_uid`` or ``on_missing`` for a non-DICOM file.
    """
    from densekit.data.dicom_series import read_series

    path = Path(path)
    suffix = _suffix(path)
    if path.is_dir() or (suffix in DICOM_SUFFIXES and path.is_file()):
        return read_series(path, series_uid=series_uid, on_missing=on_missing)
    if not path.exists():
        raise InputImageError(f"no such file or folder: {path}")
    readers = {
        **dict.fromkeys(NIFTI_SUFFIXES, read_nifti),
        **dict.fromkeys(NRRD_SUFFIXES, read_nrrd),
    }
    if suffix not in readers:
        valid = ", ".join([*NIFTI_SUFFIXES, *NRRD_SUFFIXES, *DICOM_SUFFIXES, "a DICOM folder"])
        raise InputImageError(f"{path}: unknown volume format {suffix!r}; use {valid}")
    if series_uid is not None:
        raise DensekitError(f"{path}: series_uid={series_uid!r} applies to DICOM only")
    if on_missing != "error":
        raise DensekitError(
            f"{path}: on_missing={on_missing!r} applies to DICOM series only (a NIfTI or NRRD "
            "volume has no missing slices)"
        )
    return readers[suffix](path)


def reorient_like(volume: Volume, like: Volume, tol_mm: float = 1e-3) -> Volume:
    """``volume`` with its axes permuted and flipped onto the grid of ``like``, exactly.

    For a label map stored in another axis order than its image (e.g. a NIfTI written with
    rows flipped from a DICOM series): the voxel centres must coincide, so nothing is
    interpolated; a volume already on ``like``'s grid is returned as it is.

    Raises:
        InputImageError: the voxels do not coincide under any permutation and flips (the message
            states both geometries).
    """
    if volume.same_grid(like, tol_mm):
        return volume
    cosines = np.abs(_unit(like.affine[:3, :3]).T @ _unit(volume.affine[:3, :3]))
    perm = [int(a) for a in np.argmax(cosines, axis=1)]  # like axis b <- volume axis perm[b]
    if sorted(perm) == [0, 1, 2] and cosines[range(3), perm].min() > 1 - 1e-6:
        array = np.transpose(volume.array, perm)
        affine = volume.affine.copy()
        affine[:, :3] = volume.affine[:, perm]
        for b in range(3):
            if affine[:3, b] @ like.affine[:3, b] < 0:
                array = np.flip(array, b)
                affine[:3, 3] += (array.shape[b] - 1) * affine[:3, b]
                affine[:3, b] *= -1
        moved = dataclasses.replace(volume, array=np.ascontiguousarray(array), affine=affine)
        if moved.same_grid(like, tol_mm):
            return moved
    raise InputImageError(
        f"{volume.source or 'volume'} ({volume.describe()}) is not on the grid of "
        f"{like.source or 'the image'} ({like.describe()}), even with its axes permuted or "
        "flipped; resample it onto the image first"
    )


def _unit(directions: np.ndarray) -> np.ndarray:
    return directions / np.linalg.norm(directions, axis=0, keepdims=True)
