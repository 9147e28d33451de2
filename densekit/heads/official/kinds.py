"""The five kinds of Meta's released heads, in one literal table, and their default layers.

A kind fixes what the file cannot say: which backbone outputs the decoder takes (final norm or
not), how its output becomes depth (bins, normalisation, clamping) and where the output lies
(the head's grid or the input's pixels). Widths are read from the file
(:mod:`densekit.heads.official.layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from densekit.backbones import BackboneSpec
from densekit.backbones.registry import evenly_spaced_layers
from densekit.errors import DensekitError, UnknownNameError

HeadKind = Literal[
    "dinov3_chmv2",
    "dinov3_dpt_depth",
    "dinov3_linear_seg",
    "dinov2_linear_depth",
    "dinov2_dpt_depth",
]
Decoder = Literal["dpt", "linear_depth", "linear_seg"]
# how a decoder's bins become depth (densekit.heads.official.bins)
BinsStrategy = Literal["linear", "chmv2_mixlog"]
# Where forward's output lies: on the head's own grid (DINOv3 DPT: see dpt.dpt_grid); resized
# onto the unpadded input as Meta's DINOv2 whole_inference does (the centre padding is stretched
# over the image, not cut off); or resized onto the padded input and cropped (pixels in place).
Placement = Literal["grid", "resized_to_input", "cropped_to_input"]

DINOV3_LICENCE = "DINOv3 License"
DINOV2_LICENCE = "Apache-2.0"


@dataclass(frozen=True)
class KindSpec:
    """What a kind of head does beyond its weights.

    Attributes:
        name: the kind.
        family: the backbone family it was trained on (``dinov2`` or ``dinov3``).
        decoder: the decoder's structure.
        summary: one line for listings and messages.
        backbone_norm: the backbone's final norm applied to the layers it takes.
        class_token: the decoder takes the layers' class tokens.
        bins: how the output becomes depth (None: class logits).
        clamp: the depth is clamped to ``depth_range`` (DINOv2's ``DepthEncoderDecoder``).
        placement: where the output lies (see ``Placement``).
        depth_range: default ``(min, max)`` in metres; None for segmentation, and for DINOv2 DPT
            heads, whose range depends on the training set (NYU 10 m, KITTI 80 m).
        licence: the licence of Meta's released weights of this kind.
        file_prefix: key prefix in the released files (``decode_head.`` for DINOv2).
    """

    name: HeadKind
    family: Literal["dinov2", "dinov3"]
    decoder: Decoder
    summary: str
    backbone_norm: bool
    class_token: bool
    bins: BinsStrategy | None
    clamp: bool
    placement: Placement
    depth_range: tuple[float, float] | None
    licence: str
    file_prefix: str = ""


KINDS: dict[str, KindSpec] = {
    "dinov3_chmv2": KindSpec(
        name="dinov3_chmv2",
        family="dinov3",
        decoder="dpt",
        summary="DINOv3 CHMv2 canopy height (DPT, mixed-log bins, metres)",
        backbone_norm=True,
        class_token=True,
        bins="chmv2_mixlog",
        clamp=False,
        placement="grid",
        depth_range=(0.001, 96.0),
        licence=DINOV3_LICENCE,
    ),
    "dinov3_dpt_depth": KindSpec(
        name="dinov3_dpt_depth",
        family="dinov3",
        decoder="dpt",
        summary="DINOv3 DPT depth (linear bins, metres)",
        backbone_norm=True,
        class_token=True,
        bins="linear",
        clamp=False,
        placement="grid",
        depth_range=(0.001, 100.0),
        licence=DINOV3_LICENCE,
    ),
    "dinov3_linear_seg": KindSpec(
        name="dinov3_linear_seg",
        family="dinov3",
        decoder="linear_seg",
        summary="DINOv3 linear segmentation (BatchNorm + 1x1 conv, class logits)",
        backbone_norm=True,
        class_token=False,
        bins=None,
        clamp=False,
        placement="cropped_to_input",
        depth_range=None,
        licence=DINOV3_LICENCE,
    ),
    "dinov2_linear_depth": KindSpec(
        name="dinov2_linear_depth",
        family="dinov2",
        decoder="linear_depth",
        summary="DINOv2 linear depth on 1 or 4 layers (linear bins, metres)",
        backbone_norm=False,
        class_token=True,
        bins="linear",
        clamp=True,
        placement="resized_to_input",
        # Meta's hub builds every linear head with bins on 0.001-80 m, NYU ones included.
        depth_range=(0.001, 80.0),
        licence=DINOV2_LICENCE,
        file_prefix="decode_head.",
    ),
    "dinov2_dpt_depth": KindSpec(
        name="dinov2_dpt_depth",
        family="dinov2",
        decoder="dpt",
        summary="DINOv2 DPT depth (regression, metres)",
        backbone_norm=False,
        class_token=True,
        bins="linear",
        clamp=True,
        placement="resized_to_input",
        depth_range=None,
        licence=DINOV2_LICENCE,
        file_prefix="decode_head.",
    ),
}

# Depth ranges of the DINOv2 depth heads by training set, as Meta's hub sets them.
DINOV2_DEPTH_RANGES: dict[str, tuple[float, float]] = {
    "nyu": (0.001, 10.0),
    "kitti": (0.001, 80.0),
}


def get_kind(name: str) -> KindSpec:
    """The kind called ``name``; unknown names list the valid ones."""
    if name not in KINDS:
        raise UnknownNameError(
            f"unknown official head kind {name!r}; valid kinds: {', '.join(KINDS)}"
        )
    return KINDS[name]


def default_layers(
    kind: KindSpec, backbone: BackboneSpec, depth: int, file_layers: int
) -> tuple[int, ...]:
    """The block indices Meta's released configuration takes from a ``depth``-block backbone.

    * DPT heads other than CHMv2: the backbone's DPT layer set (S/B ``[2, 5, 8, 11]``,
      L ``[4, 11, 17, 23]``, g/7B ``[9, 19, 29, 39]``; evenly spaced for other depths).
    * CHMv2: four evenly spaced blocks, ``[5, 11, 17, 23]`` on the ViT-L.
    * Linear heads: the last block for a one-layer file; the DPT set for a four-layer DINOv2 file.

    Args:
        kind: the head's kind.
        backbone: the backbone's registry entry.
        depth: its number of blocks (overrides applied).
        file_layers: the number of layers the file's decoder takes.

    Raises:
        DensekitError: no released configuration fits; the message asks for ``layers``.
    """
    if kind.name == "dinov3_chmv2":
        return evenly_spaced_layers(depth)
    if file_layers == 1 and kind.decoder != "dpt":
        return (depth - 1,)
    if file_layers == 4 and kind.decoder != "linear_seg":
        return backbone.layer_set("dpt", depth=depth)
    raise DensekitError(
        f"{kind.name}: the head file takes {file_layers} layers and no released configuration "
        f"says which; pass layers= with {file_layers} block indices of 0..{depth - 1} (e.g. the "
        f"last {file_layers}: {list(range(depth - file_layers, depth))})"
    )
