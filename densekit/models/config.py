"""The options that define a model, in typed groups, and their checks.

The Lightning tasks take these options as flat ``model.init_args`` (the YAML users write);
:meth:`ModelConfig.from_args` groups them, and checkpoints record them (:meth:`to_args`), so a
model can be rebuilt without the task that trained it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from densekit.errors import DensekitError
from densekit.heads.change import FusionMode
from densekit.models.inputs import check_upscale

HeadName = Literal["linear", "dpt", "unet", "official"]
LayerChoice = Literal["last", "last4", "dpt"] | list[int]
Upsampler = Literal["bilinear", "guided"]


@dataclass(frozen=True)
class BackboneOptions:
    """The frozen backbone: registry ``name``, ``weights`` (a file, ``official``,
    ``bundled``, ``random``), architecture ``overrides``, the ``layers`` fed to the head, the
    positions of the input bands it sees (``bands``, None: all) and the factor the image is
    resized by before it (``upscale``)."""

    name: str = "dinov2_vits14"
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    layers: Any = "last"
    bands: tuple[int, ...] | None = None
    upscale: float = 1.0


@dataclass(frozen=True)
class HeadOptions:
    """The head: ``linear``, ``dpt``, ``unet`` (a U-Net from scratch on all bands, the
    supervised baseline, instead of backbone and head) or ``official`` (one of Meta's released
    heads, ``official`` saying which: :class:`OfficialHeadOptions`), with its settings; ``grid``
    trains a grid of linear heads (:mod:`densekit.heads.grid`)."""

    kind: HeadName = "linear"
    dropout: float = 0.0
    dpt_features: int = 256
    unet_encoder: str = "resnet34"
    grid: dict[str, Any] | None = None
    official: OfficialHeadOptions | None = None


@dataclass(frozen=True)
class OfficialHeadOptions:
    """One of Meta's released heads (:func:`densekit.load_official_head`): its ``kind`` (or a
    released name), the head file (``weights``), and the ``layers`` and ``depth_range`` that
    override the released configuration's."""

    kind: str
    weights: str
    layers: tuple[int, ...] | None = None
    depth_range: tuple[float, float] | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> OfficialHeadOptions:
        """The options of ``model.official_head`` (keys ``kind``, ``weights``, ``layers``,
        ``depth_range``)."""
        if not isinstance(value, Mapping):
            raise DensekitError(
                f"model.official_head {value!r}: give a mapping with kind and weights (and "
                "optionally layers, depth_range)"
            )
        allowed = {"kind", "weights", "layers", "depth_range"}
        unknown = sorted(set(value) - allowed)
        missing = sorted({"kind", "weights"} - set(value))
        if unknown or missing:
            raise DensekitError(
                f"model.official_head: {'unknown key(s) ' + str(unknown) if unknown else ''}"
                f"{' and ' if unknown and missing else ''}"
                f"{'missing key(s) ' + str(missing) if missing else ''}; valid keys: "
                f"{sorted(allowed)} (kind and weights required)"
            )
        layers, drange = value.get("layers"), value.get("depth_range")
        return cls(
            kind=str(value["kind"]),
            weights=absolute_weights(str(value["weights"])) or str(value["weights"]),
            layers=None if layers is None else tuple(int(i) for i in layers),
            depth_range=None if drange is None else (float(drange[0]), float(drange[1])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weights": self.weights,
            "layers": None if self.layers is None else list(self.layers),
            "depth_range": None if self.depth_range is None else list(self.depth_range),
        }


@dataclass(frozen=True)
class DetailOptions:
    """Pixel detail on top of the patch grid (:mod:`densekit.heads.refine`): the ``upsampler``
    and the ``pixel_branch`` channels (0: none), the head then outputting
    ``detail_channels``."""

    upsampler: Upsampler = "bilinear"
    pixel_branch: int = 0
    detail_channels: int = 32

    @property
    def active(self) -> bool:
        return self.upsampler != "bilinear" or self.pixel_branch > 0


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model's modules (not how it is trained).

    Args:
        backbone, head, detail: the option groups.
        in_channels: bands per image.
        bands: the bands of the training data (1-based indices or names), recorded for
            inference.
        mean, std: per-band statistics after ``scale`` (None: the backbone's own).
        scale: multiplies raw values first.
        images: images per sample (2: change detection).
        fusion: how the two dates' features are fused (change detection).
    """

    backbone: BackboneOptions = field(default_factory=BackboneOptions)
    head: HeadOptions = field(default_factory=HeadOptions)
    detail: DetailOptions = field(default_factory=DetailOptions)
    in_channels: int = 3
    bands: tuple[int | str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    images: int = 1
    fusion: FusionMode | None = None

    def __post_init__(self) -> None:
        self.check()

    # -- the flat arguments of the tasks -----------------------------------------------------
    @classmethod
    def from_args(cls, args: Mapping[str, Any], images: int = 1) -> ModelConfig:
        """The config of a task's flat ``model.init_args`` (missing keys take the defaults).

        A weights path that exists is made absolute, so checkpoints work from any folder."""
        weights = absolute_weights(args.get("weights"))
        bb_bands = args.get("backbone_bands")
        return cls(
            backbone=BackboneOptions(
                name=args.get("backbone", "dinov2_vits14"),
                weights=weights,
                overrides=dict(args.get("backbone_overrides") or {}),
                layers=args.get("layers", "last"),
                bands=None if bb_bands is None else tuple(bb_bands),
                upscale=float(args.get("input_upscale", 1.0)),
            ),
            head=HeadOptions(
                kind=args.get("head", "linear"),
                dropout=float(args.get("dropout", 0.0)),
                dpt_features=int(args.get("dpt_features", 256)),
                unet_encoder=args.get("unet_encoder", "resnet34"),
                grid=args.get("head_grid"),
                official=None
                if args.get("official_head") is None
                else OfficialHeadOptions.from_dict(args["official_head"]),
            ),
            detail=DetailOptions(
                upsampler=args.get("upsampler", "bilinear"),
                pixel_branch=int(args.get("pixel_branch", 0)),
                detail_channels=int(args.get("detail_channels", 32)),
            ),
            in_channels=int(args.get("in_channels", 3)),
            bands=_tuple(args.get("bands")),
            mean=_tuple(args.get("mean")),
            std=_tuple(args.get("std")),
            scale=args.get("scale"),
            images=images,
            fusion=args.get("fusion") if images == 2 else None,
        )

    def to_args(self) -> dict[str, Any]:
        """The flat arguments again (what checkpoints record)."""
        b, h, d = self.backbone, self.head, self.detail
        return {
            "backbone": b.name,
            "weights": b.weights,
            "backbone_overrides": dict(b.overrides),
            "layers": b.layers,
            "backbone_bands": None if b.bands is None else list(b.bands),
            "input_upscale": b.upscale,
            "head": h.kind,
            "dropout": h.dropout,
            "dpt_features": h.dpt_features,
            "unet_encoder": h.unet_encoder,
            "head_grid": h.grid,
            "official_head": None if h.official is None else h.official.to_dict(),
            "upsampler": d.upsampler,
            "pixel_branch": d.pixel_branch,
            "detail_channels": d.detail_channels,
            "in_channels": self.in_channels,
            "bands": None if self.bands is None else list(self.bands),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "scale": self.scale,
            "images": self.images,
            "fusion": self.fusion,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelConfig:
        """The config a checkpoint recorded with :meth:`to_args`."""
        return cls.from_args(record, images=int(record.get("images", 1)))

    # -- checks ------------------------------------------------------------------------------
    @property
    def uses_backbone(self) -> bool:
        return self.head.kind != "unet"

    def check(self) -> None:
        """Reject values and combinations that cannot work, naming the key."""
        b, h, d = self.backbone, self.head, self.detail
        if h.kind not in ("linear", "dpt", "unet", "official"):
            raise DensekitError(
                f"model.head {h.kind!r}: valid values are linear, dpt, unet, official"
            )
        if (h.kind == "official") != (h.official is not None):
            raise DensekitError(
                "model.head official takes one of Meta's released heads named by "
                "model.official_head ({kind, weights}); model.official_head needs head: official"
            )
        if h.kind == "official":
            self.check_official()
        if h.grid is not None and h.kind != "linear":
            raise DensekitError(f"model.head_grid trains linear heads; head is {h.kind!r}")
        if h.grid is not None and not h.grid.get("metric"):
            raise DensekitError(
                "model.head_grid.metric: name the validation metric that picks the head "
                "(the tasks fill in their main metric: miou, f1 or rmse)"
            )
        if (self.images == 2) != (self.fusion is not None):
            raise DensekitError(
                f"model.fusion {self.fusion!r}: two images (change detection) are fused by "
                "'diff', 'absdiff' or 'concat'; one image takes no fusion"
            )
        check_upscale(b.upscale)
        if d.upsampler not in ("bilinear", "guided"):
            raise DensekitError(
                f"model.upsampler {d.upsampler!r}: valid values are 'bilinear' and 'guided'"
            )
        if d.pixel_branch < 0 or d.detail_channels < 1:
            raise DensekitError(
                f"model.pixel_branch must be >= 0 and detail_channels >= 1, got "
                f"{d.pixel_branch} and {d.detail_channels}"
            )
        if d.detail_channels != 32 and d.pixel_branch == 0:
            raise DensekitError(
                f"model.detail_channels {d.detail_channels} is used only with a pixel branch; "
                "set pixel_branch too, or leave detail_channels out"
            )
        options = b.upscale != 1 or d.active or b.bands is not None
        if h.kind == "unet" and options:
            raise DensekitError(
                "model.input_upscale, upsampler, pixel_branch and backbone_bands apply to the "
                "linear and DPT heads on backbone features, not to the U-Net baseline"
            )
        if h.grid is not None and d.active:
            raise DensekitError(
                "model.head_grid trains plain linear heads: it cannot be combined with "
                "upsampler 'guided' or pixel_branch; train those heads one at a time"
            )
        if b.bands is not None:
            n = self.in_channels
            bad = [i for i in b.bands if not 0 <= i < n]
            if not b.bands or bad or len(set(b.bands)) != len(b.bands):
                raise DensekitError(
                    f"model.backbone_bands {list(b.bands)}: give distinct positions among the "
                    f"{n} input bands (0..{n - 1})"
                )
        if self.uses_backbone and b.weights is None:
            raise DensekitError(
                f"model.weights is required for the {h.kind} head on {b.name}: a "
                "weights file, 'official' (online) or 'random'"
            )

    def check_official(self) -> None:
        """Meta's heads take three bands and the layers their file and kind say: the options
        that change a head's inputs or outputs do not apply."""
        b, h, d = self.backbone, self.head, self.detail
        seen = len(b.bands) if b.bands is not None else self.in_channels
        given = [
            name
            for name, on in (
                ("layers (give official_head.layers)", b.layers != "last"),
                ("head_grid", h.grid is not None),
                ("input_upscale", b.upscale != 1),
                ("upsampler/pixel_branch", d.active),
                ("two images (change detection)", self.images != 1),
            )
            if on
        ]
        if given:
            raise DensekitError(
                f"model.head official: {', '.join(given)} do(es) not apply to Meta's released "
                "heads, which take the layers and outputs their file and kind define"
            )
        if seen != 3:
            raise DensekitError(
                f"model.head official: Meta's heads take 3 bands (RGB), the backbone would see "
                f"{seen}; select red, green, blue with model.backbone_bands or data bands"
            )


def absolute_weights(weights: str | None) -> str | None:
    """A weights path that exists, made absolute; names (``official``, ``random``, ...) and
    missing paths as they are (the loader names what is wrong with them)."""
    if weights is not None and Path(weights).expanduser().exists():
        return str(Path(weights).expanduser().resolve())
    return weights


def _tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)
