"""Medical imaging: DICOM series, NIfTI/NRRD volumes, masks on their grid, volume inference."""

from densekit.medical.volume import Volume, pseudonym

__all__ = ["Volume", "pseudonym"]
