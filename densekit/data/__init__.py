"""Data: image readers, band selection and normalisation (GeoTIFF and DICOM loaders grow here)."""
