"""Medical imaging: intensity windows, classes, slices, metrics, the SEG writer, the medical data
modules and volume inference.

The readers (DICOM series, NIfTI/NRRD volumes, masks on an image's grid) live in
:mod:`densekit.data`; their public names are importable from here too.
"""

from densekit.data.dicom_series import SeriesInfo, read_series, scan_series
from densekit.data.masks import (
    label_map,
    read_label_map,
    read_png_mask,
    read_rtstruct,
    read_seg,
)
from densekit.data.nifti import (
    read_nifti,
    read_nrrd,
    read_volume,
    reorient_like,
    write_nifti,
)
from densekit.data.volume import Volume, pseudonym
from densekit.medical.data import MedicalSegmentationDataModule
from densekit.medical.data2d import Medical2DDataModule
from densekit.medical.intensity import CT_WINDOWS, ct_window, percentile_normalize, window_bounds

__all__ = [
    "CT_WINDOWS",
    "Medical2DDataModule",
    "MedicalSegmentationDataModule",
    "SeriesInfo",
    "Volume",
    "ct_window",
    "label_map",
    "percentile_normalize",
    "pseudonym",
    "read_label_map",
    "read_nifti",
    "read_nrrd",
    "read_png_mask",
    "read_rtstruct",
    "read_seg",
    "read_series",
    "read_volume",
    "reorient_like",
    "scan_series",
    "window_bounds",
    "write_nifti",
]
