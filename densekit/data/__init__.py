"""Data: image readers, band selection and normalisation, window datasets and data modules."""

from densekit.data.datamodules import (
    ChangeDataModule,
    DenseDataModule,
    DepthDataModule,
    SegmentationDataModule,
)

__all__ = ["ChangeDataModule", "DenseDataModule", "DepthDataModule", "SegmentationDataModule"]
