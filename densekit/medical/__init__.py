"""Medical imaging: DICOM series, NIfTI/NRRD volumes, masks on their grid, volume inference."""

from densekit.medical.data import MedicalSegmentationDataModule
from densekit.medical.data2d import Medical2DDataModule
from densekit.medical.intensity import CT_WINDOWS, ct_window, percentile_normalize, window_bounds
from densekit.medical.masks import (
    label_map,
    read_label_map,
    read_png_mask,
    read_rtstruct,
    read_seg,
)
from densekit.medical.nifti import (
    read_nifti,
    read_nrrd,
    read_volume,
    reorient_like,
    write_nifti,
)
from densekit.medical.series import SeriesInfo, read_series, scan_series
from densekit.medical.volume import Volume, pseudonym

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
