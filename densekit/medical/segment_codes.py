"""What each class of a DICOM SEG written by ``densekit volume`` is coded as, and where that
code came from.

A class's segmented property category and type are, in this order:

1. **carried from the training SEG**: the codes of the segment that became the class (the
   slice data module's ``segments``, label -> class, over its ``cases``' SEG masks), when the
   checkpoint's training SEGs can still be read;
2. **from the class name**: a SNOMED CT concept of DICOM's code dictionary named like the class
   (``liver`` -> SCT 10200004 "Liver"), category SCT 123037004 "Anatomical Structure";
3. **generic**: SCT 85756007 "Tissue" for both (3D Slicer's default for a segment nobody has
   coded), said in the sidecar and by a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

Code = tuple[str, str, str]  # value, coding scheme, meaning

TISSUE: Code = ("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE: Code = ("123037004", "SCT", "Anatomical Structure")


@dataclass(frozen=True)
class SegmentCode:
    """A class's segmented property category and type, and where they came from."""

    category: Code
    type: Code
    source: str

    def record(self) -> dict[str, Any]:
        return {"category": list(self.category), "type": list(self.type), "source": self.source}


def segment_codes(
    class_names: list[str], data: dict[str, Any], segments: dict[str, Any] | None
) -> dict[int, SegmentCode]:
    """The code of each non-background class (see the module docstring); ``data``: the
    checkpoint's data-module settings, ``segments``: their SEG segment label -> class map."""
    carried = training_codes(data, segments or {})
    out = {}
    for k in range(1, len(class_names)):
        code = carried.get(k) or name_code(class_names[k])
        out[k] = code or SegmentCode(TISSUE, TISSUE, "generic: no code known for the class name")
    return out


def training_codes(data: dict[str, Any], segments: dict[str, Any]) -> dict[int, SegmentCode]:
    """Class -> the codes of the training SEG segment mapped to it (readable SEGs only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out: dict[int, SegmentCode] = {}
    for case in data.get("cases") or []:
        mask = case.get("mask") if isinstance(case, dict) else None
        if not isinstance(mask, str) or not Path(mask).is_file():
            continue
        try:
            ds = pydicom.dcmread(mask, stop_before_pixels=True)
        except InvalidDicomError:  # a label map, not a SEG: nothing to carry
            continue
        for item in getattr(ds, "SegmentSequence", []):
            cls = segments.get(str(item.SegmentLabel))
            if not isinstance(cls, int) or cls in out:
                continue
            out[cls] = SegmentCode(
                _code(item.SegmentedPropertyCategoryCodeSequence[0]),
                _code(item.SegmentedPropertyTypeCodeSequence[0]),
                f"training SEG {mask}, segment {item.SegmentNumber} {item.SegmentLabel!r}",
            )
    return out


def name_code(name: str) -> SegmentCode | None:
    """A SNOMED CT anatomical concept named like ``name`` (e.g. ``left kidney`` ->
    ``LeftKidney``), or None."""
    from pydicom.sr.codedict import codes

    keyword = "".join(part.capitalize() for part in name.replace("_", " ").split())
    try:
        code = getattr(codes.SCT, keyword)
    except AttributeError:
        return None
    found = (str(code.value), str(code.scheme_designator), str(code.meaning))
    return SegmentCode(ANATOMICAL_STRUCTURE, found, f"class name {name!r}")


def _code(item: Any) -> Code:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))
