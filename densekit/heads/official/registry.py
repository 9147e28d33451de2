"""Meta's released heads by name: the head file, backbone, layers, depth range and licence.

One literal table. Names are the released file names without ``_head.pth`` (and the hash), plus
the hub's names for its defaults (:data:`ALIASES`: ``dinov2_vits14_ld`` is the NYU ``linear4``
head, ``dinov2_vits14_dd`` the NYU DPT head, as ``torch.hub.load(..., "dinov2_vits14_ld")`` gives
them). The DINOv3 files need the signed URL Meta e-mails after a request; the DINOv2 files are
public. DINOv3 linear segmentation heads are trained with ``dinov3/eval/segmentation`` and not
released, so they have no entry: load them by kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from densekit.backbones import get_spec
from densekit.errors import UnknownNameError
from densekit.heads.official.kinds import DINOV2_DEPTH_RANGES, KINDS, HeadKind

ReleasedHeadName = Literal[
    "dinov3_vitl16_chmv2",
    "dinov3_vit7b16_dd",
    "dinov2_vits14_nyu_linear",
    "dinov2_vits14_nyu_linear4",
    "dinov2_vits14_nyu_dpt",
    "dinov2_vits14_kitti_linear",
    "dinov2_vits14_kitti_linear4",
    "dinov2_vits14_kitti_dpt",
    "dinov2_vitb14_nyu_linear",
    "dinov2_vitb14_nyu_linear4",
    "dinov2_vitb14_nyu_dpt",
    "dinov2_vitb14_kitti_linear",
    "dinov2_vitb14_kitti_linear4",
    "dinov2_vitb14_kitti_dpt",
    "dinov2_vitl14_nyu_linear",
    "dinov2_vitl14_nyu_linear4",
    "dinov2_vitl14_nyu_dpt",
    "dinov2_vitl14_kitti_linear",
    "dinov2_vitl14_kitti_linear4",
    "dinov2_vitl14_kitti_dpt",
    "dinov2_vitg14_nyu_linear",
    "dinov2_vitg14_nyu_linear4",
    "dinov2_vitg14_nyu_dpt",
    "dinov2_vitg14_kitti_linear",
    "dinov2_vitg14_kitti_linear4",
    "dinov2_vitg14_kitti_dpt",
]


@dataclass(frozen=True)
class ReleasedHead:
    """One released head.

    Attributes:
        name: densekit's name for it.
        kind: the kind :func:`densekit.load_official_head` loads it as.
        hub_call: how Meta's ``torch.hub`` builds the same model.
        dataset: what it was trained on.
        head_file: the released file name.
        url: where Meta publishes it.
        backbone: the densekit backbone it was trained on.
        backbone_file: that backbone's official weights file.
        layers: the backbone blocks it takes.
        depth_range: ``(min, max)`` in metres.
        licence: the licence of the weights.
    """

    name: str
    kind: HeadKind
    hub_call: str
    dataset: str
    head_file: str
    url: str
    backbone: str
    backbone_file: str
    layers: tuple[int, ...]
    depth_range: tuple[float, float] | None
    licence: str


_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{file}"
_DATASETS = {"nyu": "NYU Depth v2 (indoor)", "kitti": "KITTI (driving)"}


def _dinov2(size: str, dataset: str, head: str) -> ReleasedHead:
    """A DINOv2 depth head: ``head`` is ``linear`` (last block), ``linear4`` or ``dpt``."""
    arch = f"dinov2_vit{size}14"
    spec = get_spec(arch)
    kind: HeadKind = "dinov2_dpt_depth" if head == "dpt" else "dinov2_linear_depth"
    file = f"{arch}_{dataset}_{head}_head.pth"
    hub = f"{arch}_dd" if head == "dpt" else f"{arch}_ld"
    layers_arg = "" if head == "dpt" else f"layers={1 if head == 'linear' else 4}, "
    return ReleasedHead(
        name=f"{arch}_{dataset}_{head}",
        kind=kind,
        hub_call=f"torch.hub.load('facebookresearch/dinov2', '{hub}', {layers_arg}"
        f"weights='{dataset.upper()}')",
        dataset=_DATASETS[dataset],
        head_file=file,
        url=_DINOV2_URL.format(arch=arch, file=file),
        backbone=arch,
        backbone_file=spec.weight_files[0],
        layers=(spec.depth - 1,) if head == "linear" else spec.dpt_layers,
        # the hub's linear heads have bins (and clamping) on 0.001-80 m whatever the data set
        depth_range=KINDS[kind].depth_range or DINOV2_DEPTH_RANGES[dataset],
        licence=KINDS[kind].licence,
    )


RELEASED_HEADS: dict[str, ReleasedHead] = {
    "dinov3_vitl16_chmv2": ReleasedHead(
        name="dinov3_vitl16_chmv2",
        kind="dinov3_chmv2",
        hub_call="torch.hub.load('facebookresearch/dinov3', 'dinov3_vitl16_chmv2')",
        dataset="CHMv2 canopy height (Maxar RGB, 0.6 m)",
        head_file="dinov3_vitl16_chmv2_dpt_head-3703d643.pth",
        url="https://dl.fbaipublicfiles.com/dinov3/chmv2/dinov3_vitl16_chmv2_dpt_head-3703d643.pth",
        backbone="dinov3_vitl16_sat493m",
        backbone_file=get_spec("dinov3_vitl16_sat493m").weight_files[0],
        layers=(5, 11, 17, 23),
        depth_range=(0.001, 96.0),
        licence=KINDS["dinov3_chmv2"].licence,
    ),
    "dinov3_vit7b16_dd": ReleasedHead(
        name="dinov3_vit7b16_dd",
        kind="dinov3_dpt_depth",
        hub_call="torch.hub.load('facebookresearch/dinov3', 'dinov3_vit7b16_dd')",
        dataset="SYNTHMIX (synthetic and real depth mix)",
        head_file="dinov3_vit7b16_synthmix_dpt_head-02040be1.pth",
        url="https://dl.fbaipublicfiles.com/dinov3/dinov3_vit7b16/"
        "dinov3_vit7b16_synthmix_dpt_head-02040be1.pth",
        backbone="dinov3_vit7b16",
        backbone_file=get_spec("dinov3_vit7b16").weight_files[0],
        layers=(9, 19, 29, 39),
        depth_range=(0.001, 100.0),
        licence=KINDS["dinov3_dpt_depth"].licence,
    ),
    "dinov2_vits14_nyu_linear": _dinov2("s", "nyu", "linear"),
    "dinov2_vits14_nyu_linear4": _dinov2("s", "nyu", "linear4"),
    "dinov2_vits14_nyu_dpt": _dinov2("s", "nyu", "dpt"),
    "dinov2_vits14_kitti_linear": _dinov2("s", "kitti", "linear"),
    "dinov2_vits14_kitti_linear4": _dinov2("s", "kitti", "linear4"),
    "dinov2_vits14_kitti_dpt": _dinov2("s", "kitti", "dpt"),
    "dinov2_vitb14_nyu_linear": _dinov2("b", "nyu", "linear"),
    "dinov2_vitb14_nyu_linear4": _dinov2("b", "nyu", "linear4"),
    "dinov2_vitb14_nyu_dpt": _dinov2("b", "nyu", "dpt"),
    "dinov2_vitb14_kitti_linear": _dinov2("b", "kitti", "linear"),
    "dinov2_vitb14_kitti_linear4": _dinov2("b", "kitti", "linear4"),
    "dinov2_vitb14_kitti_dpt": _dinov2("b", "kitti", "dpt"),
    "dinov2_vitl14_nyu_linear": _dinov2("l", "nyu", "linear"),
    "dinov2_vitl14_nyu_linear4": _dinov2("l", "nyu", "linear4"),
    "dinov2_vitl14_nyu_dpt": _dinov2("l", "nyu", "dpt"),
    "dinov2_vitl14_kitti_linear": _dinov2("l", "kitti", "linear"),
    "dinov2_vitl14_kitti_linear4": _dinov2("l", "kitti", "linear4"),
    "dinov2_vitl14_kitti_dpt": _dinov2("l", "kitti", "dpt"),
    "dinov2_vitg14_nyu_linear": _dinov2("g", "nyu", "linear"),
    "dinov2_vitg14_nyu_linear4": _dinov2("g", "nyu", "linear4"),
    "dinov2_vitg14_nyu_dpt": _dinov2("g", "nyu", "dpt"),
    "dinov2_vitg14_kitti_linear": _dinov2("g", "kitti", "linear"),
    "dinov2_vitg14_kitti_linear4": _dinov2("g", "kitti", "linear4"),
    "dinov2_vitg14_kitti_dpt": _dinov2("g", "kitti", "dpt"),
}

# The hub's names, for the hub's defaults (NYU; linear heads on four layers).
ALIASES: dict[str, str] = {
    "dinov2_vits14_ld": "dinov2_vits14_nyu_linear4",
    "dinov2_vitb14_ld": "dinov2_vitb14_nyu_linear4",
    "dinov2_vitl14_ld": "dinov2_vitl14_nyu_linear4",
    "dinov2_vitg14_ld": "dinov2_vitg14_nyu_linear4",
    "dinov2_vits14_dd": "dinov2_vits14_nyu_dpt",
    "dinov2_vitb14_dd": "dinov2_vitb14_nyu_dpt",
    "dinov2_vitl14_dd": "dinov2_vitl14_nyu_dpt",
    "dinov2_vitg14_dd": "dinov2_vitg14_nyu_dpt",
}


def is_released_head(name: str) -> bool:
    return ALIASES.get(name, name) in RELEASED_HEADS


def get_released_head(name: str) -> ReleasedHead:
    """A released head by name or hub alias; unknown names list the valid ones."""
    key = ALIASES.get(name, name)
    if key not in RELEASED_HEADS:
        raise UnknownNameError(
            f"unknown released head {name!r}; valid names: {', '.join(RELEASED_HEADS)} "
            f"(aliases: {', '.join(ALIASES)})"
        )
    return RELEASED_HEADS[key]


def list_official_heads() -> list[ReleasedHead]:
    """Every released head, in table order (DINOv3 first)."""
    return list(RELEASED_HEADS.values())
