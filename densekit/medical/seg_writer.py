"""A predicted label volume -> DICOM SEG (highdicom) referencing the source series' instances.

What the SEG holds:

* **Segments**: one per non-background class, ``SegmentNumber`` = the class index (class 0 is
  background and has no segment), ``SegmentLabel`` = the checkpoint's class name. BINARY
  frames, one per source slice that holds the segment (empty frames omitted), each frame
  referencing the SOPInstanceUID of its source slice, in the source series' geometry
  (highdicom takes positions, orientation and spacing from the source headers).
* **Codes**: each segment's property category and type as
  :func:`~densekit.medical.segment_codes.segment_codes` gives them: carried from the training
  SEG, else a SNOMED CT concept named like the class, else the generic SCT 85756007 "Tissue"
  (the sidecar says which, for each class).
* **Algorithm**: ``SegmentAlgorithmType`` AUTOMATIC; AlgorithmIdentification: name
  ``densekit``, version = densekit's, family DCM 123110 "Artificial Intelligence", parameters
  backbone, head, plane and context. Manufacturer ``densekit``, model name = the backbone,
  software version = densekit's, device serial number = the first 16 hex digits of the
  checkpoint's sha256 (which model made it). SeriesDescription ``densekit <backbone>
  segmentation``: no patient data.
* **From the source**: highdicom copies the Patient, General Study, Patient Study, Clinical
  Trial and Specimen modules of the first source instance, and the acquisition equipment
  (institution, station, acquisition time) as contributing equipment. The SEG IOD requires
  only the Patient and General Study modules' type 1/2 attributes (PatientName, PatientID,
  PatientBirthDate, PatientSex; StudyInstanceUID, StudyDate, StudyTime, StudyID,
  AccessionNumber, ReferringPhysicianName; the conditional ones of non-human subjects), so
  highdicom is handed **copies of the source headers cut down to** :data:`SOURCE_KEYWORDS`:
  those, plus the identifiers and geometry it references. Type 3 and user-optional patient and
  study attributes (age, weight, comments, other IDs, clinical trial IDs, institution) never
  reach the SEG. Type 2 attributes an anonymiser removed are written empty, as the standard
  allows (never invented); StudyID, AccessionNumber and ReferringPhysicianName are always
  empty; a missing SliceThickness is the series' slice spacing. A source missing a type 1
  attribute the SEG needs (UIDs, geometry) is refused by naming it.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from densekit.data.dicom_series import scan_series
from densekit.data.nifti import DICOM_SUFFIXES
from densekit.data.volume import Volume
from densekit.errors import DensekitError
from densekit.medical.segment_codes import TISSUE, SegmentCode
from densekit.version import __version__

SERIES_NUMBER = 1000  # SEG series number (the source's is not copied)
LABEL_MAX = 64  # characters of a SegmentLabel (VR LO)

# Patient and General Study module attributes the SEG IOD requires (type 1, 2, 1C, 2C).
REQUIRED_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientSpeciesDescription",  # 1C/2C: non-human subjects only
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# What highdicom reads to reference and place the frames.
REFERENCE_AND_GEOMETRY = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Modality",
    "Manufacturer",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
SOURCE_KEYWORDS = REQUIRED_PATIENT_STUDY + REFERENCE_AND_GEOMETRY
# Type 2 attributes of the Patient and General Study modules: present, and empty when the
# source lacks them (anonymisers remove them); never filled with invented values.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# Type 2 values the SEG leaves empty even when the source has them: they identify the study's
# people and order, and the standard allows them empty.
EMPTIED = ("StudyID", "AccessionNumber", "ReferringPhysicianName")
# Type 1 attributes without which no SEG can be written (highdicom reads them).
NEEDED = (
    "StudyInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
)


def _trimmed(ds: Dataset, slice_spacing: float) -> Dataset:
    """A copy of the header holding only :data:`SOURCE_KEYWORDS` (no pixels); absent or
    :data:`EMPTIED` type 2 attributes empty, an absent SliceThickness the slice spacing."""
    out = Dataset()
    for keyword in SOURCE_KEYWORDS:
        if keyword in ds and (keyword != "SpecificCharacterSet" or ds[keyword].value):
            out[keyword] = ds[keyword]
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in out or keyword in EMPTIED:
            setattr(out, keyword, "")
    if not out.get("SliceThickness"):
        out.SliceThickness = round(slice_spacing, 6)
    return out


def check_needed(ds: Dataset, path: Path) -> None:
    """The attributes without which no SEG can reference and place the slice."""
    missing = [k for k in NEEDED if k not in ds or ds[k].value in (None, "", [])]
    if missing:
        raise DensekitError(
            f"{path}: the source instance lacks {', '.join(missing)}, which a DICOM SEG needs "
            "to reference and place its frames; write .nii.gz instead"
        )


def source_headers(source: str | Path, image: Volume) -> list[Dataset]:
    """The trimmed headers of ``image``'s source instances, one per slice in array order.

    Args:
        source: the DICOM folder or file ``image`` was read from.
        image: the Volume from :func:`~densekit.data.dicom_series.read_series`.

    Raises:
        DensekitError: ``image`` is not from DICOM, has interpolated slices (no instance to
            reference), comes from an enhanced multi-frame object, or an instance is missing.
    """
    source = Path(source)
    uids = image.sop_instance_uids
    if not uids:
        raise DensekitError(
            f"{source}: a DICOM SEG references the source series' instances, so it needs a "
            "DICOM input; write .nii.gz for a NIfTI or NRRD input"
        )
    files = _series_files(source, image)
    if all(not uid for uid in uids):
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        empty = [k for k in NEEDED if k.endswith("UID") and not str(first.get(k, "") or "")]
        raise DensekitError(
            f"{source}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty in the "
            "instances (removed by an anonymiser), and a DICOM SEG references its source "
            "by these UIDs; write .nii.gz instead"
        )
    if "" in uids:
        missing = [k for k, uid in enumerate(uids) if not uid]
        raise DensekitError(
            f"{source}: slices {missing} have no source instance (interpolated where the "
            "series misses slices, or an empty SOPInstanceUID), so a DICOM SEG cannot "
            "reference them; write .nii.gz instead"
        )
    if len(set(uids)) != len(uids):
        raise DensekitError(
            f"{source}: the slices come from an enhanced multi-frame object; DICOM SEG output "
            "supports single-frame series only: write .nii.gz instead"
        )
    headers: dict[str, Dataset] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.get("SOPInstanceUID", "")) in uids:
            check_needed(ds, path)
            headers[str(ds.SOPInstanceUID)] = _trimmed(ds, image.spacing[0])
    lost = [uid for uid in uids if uid not in headers]
    if lost:
        raise DensekitError(f"{source}: instances {lost[:3]} of series {image.series_uid} vanished")
    return [headers[uid] for uid in uids]


def _series_files(source: Path, image: Volume) -> list[Path]:
    """The files of ``image``'s series in ``source`` (a folder or one file)."""
    if not source.is_dir():
        return [source]
    return [f for info in scan_series(source) if info.uid == image.series_uid for f in info.files]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_seg(
    labels: np.ndarray,
    sources: list[Dataset],
    class_names: list[str],
    provenance: dict[str, Any],
    segment_codes: dict[int, SegmentCode] | None = None,
) -> Any:
    """The ``hd.seg.Segmentation`` of ``labels`` (``(slices, rows, columns)`` class indices on
    the grid of ``sources``, one header per slice).

    Args:
        labels: predicted classes, 0 = background.
        sources: :func:`source_headers` of the series.
        class_names: the checkpoint's class names (index = class = segment number).
        provenance: ``backbone``, ``head``, ``plane``, ``context`` and ``checkpoint_sha256``.
        segment_codes: each class's codes (None, or a class left out: SCT "Tissue").

    Raises:
        DensekitError: fewer than two classes, a class name longer than 64 characters, or
            labels of another shape than the source slices.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if len(class_names) < 2:
        raise DensekitError(f"class names {class_names}: a SEG needs background + 1 class")
    long = [name for name in class_names[1:] if len(name) > LABEL_MAX]
    if long:
        raise DensekitError(
            f"class name {long[0]!r} is longer than the {LABEL_MAX} characters of a DICOM "
            "SegmentLabel"
        )
    frame = (int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != (len(sources), *frame):
        raise DensekitError(
            f"labels of shape {labels.shape} for {len(sources)} source slices of {frame}"
        )
    backbone = str(provenance.get("backbone") or "unet")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="densekit",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters={key: str(provenance[key]) for key in ("backbone", "head", "plane", "context")},
    )
    generic = SegmentCode(TISSUE, TISSUE, "generic")
    coded = {k: (segment_codes or {}).get(k, generic) for k in range(1, len(class_names))}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=class_names[k],
            segmented_property_category=hd.sr.CodedConcept(*coded[k].category),
            segmented_property_type=hd.sr.CodedConcept(*coded[k].type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k in range(1, len(class_names))
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = _segmentation(hd, sources, labels, class_names, descriptions, backbone, provenance)
    for warning in caught:  # highdicom quotes values such as PatientName in its warnings
        if "intended person name" in str(warning.message):
            continue  # the source's own name format, copied as the standard requires
        warnings.warn(scrub(str(warning.message), sources[0]), UserWarning, stacklevel=2)
    seg.SeriesDescription = f"densekit {backbone} segmentation"[:LABEL_MAX]
    return seg


def scrub(text: str, header: Dataset) -> str:
    """``text`` with every patient and study value of ``header`` replaced by ``<redacted>``."""
    for keyword in REQUIRED_PATIENT_STUDY:
        value = str(header.get(keyword, "") or "")
        if len(value) > 1 and not keyword.endswith("Sequence"):
            text = text.replace(value, "<redacted>")
    return text


def _segmentation(
    hd: Any,
    sources: list[Dataset],
    labels: np.ndarray,
    class_names: list[str],
    descriptions: list[Any],
    backbone: str,
    provenance: dict[str, Any],
) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels.astype(np.uint16 if len(class_names) > 256 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="densekit",
        manufacturer_model_name=backbone[:LABEL_MAX],
        software_versions=__version__,
        device_serial_number=str(provenance["checkpoint_sha256"])[:16],
        content_label="DENSEKIT",
        content_description="automatic segmentation by densekit",
    )


def is_dicom_path(path: str | Path) -> bool:
    """A folder or a DICOM file name (the inputs a SEG can reference)."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in DICOM_SUFFIXES
