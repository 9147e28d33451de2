"""Data: image readers, band selection and normalisation, window datasets and data modules."""

from densekit.data.base import DenseDataModule
from densekit.data.datamodules import (
    ChangeDataModule,
    DepthDataModule,
    RasterDataModule,
    SegmentationDataModule,
)

__all__ = [
    "ChangeDataModule",
    "DenseDataModule",
    "DepthDataModule",
    "RasterDataModule",
    "SegmentationDataModule",
]
