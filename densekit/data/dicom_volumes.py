"""Several volumes in one DICOM series, named and refused rather than misread.

GE and Philips scanners (and enhanced multi-frame objects of every vendor) put several volumes
of one acquisition in one series: time points, diffusion b-values or directions, echoes,
cardiac phases, stacks. Their slices share positions, so stacking them gives one volume with
"duplicate slices" or, worse, interleaved volumes. densekit reads one volume per series, so a
series whose slices at one position differ in an attribute that tells volumes apart is refused
with that attribute's name and values, and the way to split it (one series per volume, as
dcm2niix writes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from densekit.data.dicom_groups import frame_item
from densekit.errors import InputImageError

SAME_POSITION_MM = 0.01  # slices closer than this along the normal share a position


@dataclass(frozen=True)
class Marker:
    """An attribute that tells the volumes of one series apart.

    Attributes:
        label: the name and tag printed in the message.
        what: what its values are (time points, diffusion b-values, ...).
        keyword: a standard keyword read from the dataset, or None.
        private: a private attribute as (group, private creator, element offset), read only
            where the dataset holds that creator's block, or None.
        group: the functional group holding it in enhanced multi-frame objects, or None.
    """

    label: str
    what: str
    keyword: str | None = None
    private: tuple[int, str, int] | None = None
    group: str | None = None


MARKERS = (
    Marker("TemporalPositionIdentifier (0020,0100)", "time points", "TemporalPositionIdentifier"),
    Marker(
        "TemporalPositionIndex (0020,9128)",
        "time points",
        "TemporalPositionIndex",
        group="FrameContentSequence",
    ),
    Marker(
        "DiffusionBValue (0018,9087)",
        "diffusion b-values",
        "DiffusionBValue",
        group="MRDiffusionSequence",
    ),
    Marker(
        "GE diffusion b-value (0043,1039)",
        "diffusion b-values",
        private=(0x0043, "GEMS_PARM_01", 0x39),
    ),
    Marker(
        "Philips diffusion b-factor (2001,1003)",
        "diffusion b-values",
        private=(0x2001, "Philips Imaging DD 001", 0x03),
    ),
    Marker(
        "Siemens B_value (0019,100C)",
        "diffusion b-values",
        private=(0x0019, "SIEMENS MR HEADER", 0x0C),
    ),
    Marker(
        "DiffusionGradientOrientation (0018,9089)",
        "diffusion directions",
        "DiffusionGradientOrientation",
        group="MRDiffusionSequence",
    ),
    Marker("EchoNumbers (0018,0086)", "echoes", "EchoNumbers"),
    Marker("EffectiveEchoTime (0018,9082)", "echoes", "EffectiveEchoTime", group="MREchoSequence"),
    Marker("TriggerTime (0018,1060)", "cardiac phases", "TriggerTime"),
    Marker(
        "NominalCardiacTriggerDelayTime (0020,9153)",
        "cardiac phases",
        "NominalCardiacTriggerDelayTime",
        group="CardiacSynchronizationSequence",
    ),
    Marker("StackID (0020,9056)", "stacks", "StackID", group="FrameContentSequence"),
    Marker("AcquisitionNumber (0020,0012)", "acquisitions", "AcquisitionNumber"),
)


@dataclass(frozen=True)
class Slice:
    """What :func:`check_one_volume` reads of one slice: its position, header and frame."""

    position: np.ndarray
    header: Dataset
    frame: int | None  # frame index in an enhanced multi-frame object


def check_one_volume(slices: Sequence[Slice], normal: np.ndarray, series: str) -> None:
    """Refuse ``slices`` if the ones sharing a position differ in a :data:`MARKERS` attribute.

    Args:
        slices: every slice of the series.
        normal: the unit slice normal (positions are compared along it).
        series: the series' name in the message.

    Raises:
        InputImageError: the series holds several volumes; names the attribute, its values,
            the manufacturer and how to split the series.
    """
    order = sorted(range(len(slices)), key=lambda k: float(slices[k].position @ normal))
    depth = [float(slices[k].position @ normal) for k in order]
    groups: list[list[int]] = [[order[0]]] if order else []
    for k, gap in zip(order[1:], np.diff(depth), strict=True):
        if gap < SAME_POSITION_MM:
            groups[-1].append(k)
        else:
            groups.append([k])
    shared = [g for g in groups if len(g) > 1]
    if not shared:
        return
    differing = []
    for marker in MARKERS:
        values = [_value(s, marker) for s in slices]
        seen = [{v for k in g if (v := values[k]) is not None} for g in shared]
        if any(len(v) > 1 for v in seen):
            found: set[str] = set().union(*seen)
            differing.append((marker, sorted(found, key=_number_first)))
    if not differing:
        return  # nothing tells the slices apart: the caller's duplicate-slice error names them
    (first, named), others = differing[0], differing[1:]
    shown = ", ".join(named[:8]) + (" ..." if len(named) > 8 else "")
    also = "".join(f" and {m.label}" for m, _ in others)
    maker = str(slices[0].header.get("Manufacturer", "") or "").strip()
    raise InputImageError(
        f"series {series}: {max(len(g) for g in shared)} volumes at the same slice positions "
        f"({maker + ' ' if maker else ''}multi-volume series: {first.what}), told apart by "
        f"{first.label} = {shown}{also}; densekit reads one volume per series: split it into "
        "one series per volume first (dcm2niix writes one volume each)"
    )


def _number_first(text: str) -> tuple[int, float, str]:
    """Sort key: numbers by value, before other text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _value(s: Slice, marker: Marker) -> str | None:
    """The marker's value for one slice as text, or None where the slice lacks it."""
    item = None
    if s.frame is not None and marker.group is not None:
        item = frame_item(s.header, s.frame, marker.group)
    if item is None:
        item = s.header
    if marker.private is not None:
        group, creator, offset = marker.private
        try:
            value = item.private_block(group, creator)[offset].value
        except KeyError:  # no block of that creator, or no such element in it
            value = None
    elif marker.keyword is not None and marker.keyword in item:
        value = item.get(marker.keyword)
    else:
        value = None
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple, MultiValue)):
        return "(" + " ".join(f"{v}" for v in value) + ")"
    return str(value)
