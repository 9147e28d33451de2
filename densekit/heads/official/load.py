"""``load_official_head``: one of Meta's released head files + a backbone -> :class:`OfficialHead`.

The loading path:

1. the kind: one of :data:`~densekit.heads.official.kinds.KINDS`, or a released head's name
   (:data:`~densekit.heads.official.registry.RELEASED_HEADS`), which also sets the defaults;
2. the head file, read with ``weights_only=True`` and unwrapped; the kind it looks like (from its
   keys and shapes) must be the kind asked for, or the error names the kind it looks like;
3. the decoder, built at the file's widths (checked against the backbone's width) and loaded
   strictly, before the backbone is read;
4. the layers and depth range: given, or the released configuration's;
5. the backbone, by :func:`densekit.load_backbone` (strict, its own checks).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from densekit.backbones import BackboneSpec, WeightsInfo, get_spec, load_backbone
from densekit.backbones.arch import ALLOWED_OVERRIDES, resolve_arch
from densekit.errors import DensekitError, UnknownNameError, WeightsError
from densekit.heads.official.decoders import build_decoder, load_decoder_state
from densekit.heads.official.head import OfficialDecoderHead
from densekit.heads.official.kinds import DINOV2_DEPTH_RANGES, KINDS, KindSpec, default_layers
from densekit.heads.official.layout import (
    describe_unknown,
    identify_kind,
    read_head_file,
    shapes_of,
)
from densekit.heads.official.model import OfficialHead
from densekit.heads.official.registry import (
    ALIASES,
    RELEASED_HEADS,
    ReleasedHead,
    get_released_head,
    is_released_head,
)


def load_official_head(
    kind: str,
    head_weights: str | Path,
    backbone: str,
    backbone_weights: str | Path,
    layers: Sequence[int] | None = None,
    depth_range: tuple[float, float] | None = None,
    **backbone_overrides: Any,
) -> OfficialHead:
    """Load one of Meta's released dense heads, exactly, on its frozen backbone.

    The returned module's ``forward(x)`` takes a normalised ``(B, 3, H, W)`` batch (any ``H x W``
    of at least one patch) and returns what Meta's module returns, computed in float32: depth
    ``(B, 1, h', w')`` in metres on the head's grid for the DINOv3 depth heads
    (``h' = 16 (h + h mod 2)`` for an ``h``-patch-high centre-padded input; see
    :meth:`OfficialHead.to_input_size`), depth ``(B, 1, H, W)`` for the DINOv2 depth heads and
    logits ``(B, classes, H, W)`` for the DINOv3 linear segmentation head.

    Args:
        kind: ``"dinov3_chmv2"``, ``"dinov3_dpt_depth"``, ``"dinov3_linear_seg"``,
            ``"dinov2_linear_depth"`` (one or four layers, told apart by the file) or
            ``"dinov2_dpt_depth"``; or a released head's name (``"dinov3_vitl16_chmv2"``,
            ``"dinov2_vits14_ld"``, ...: :func:`list_official_heads`), whose layers and depth
            range become the defaults.
        head_weights: the head file (``.pth``) as Meta publishes it.
        backbone: the backbone's registry name, as for :func:`densekit.load_backbone`.
        backbone_weights: its weights, as for :func:`densekit.load_backbone`.
        layers: backbone block indices the head takes (default: the released configuration's,
            :func:`~densekit.heads.official.kinds.default_layers`).
        depth_range: ``(min, max)`` in metres for the bins (and the clamping of DINOv2 heads)
            (default: the released configuration's; for a ``dinov2_dpt_depth`` file, NYU 10 m or
            KITTI 80 m by the file name).
        **backbone_overrides: passed to :func:`densekit.load_backbone` (architecture overrides
            such as ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``/``ffn_ratio``; and
            ``in_chans``, ``autocast_dtype``, ``device``).

    Raises:
        UnknownNameError: unknown kind (the message lists the kinds and released names).
        WeightsError: an unreadable file, a file of another kind (named), a missing, unexpected
            or mis-shaped key (named), or a head of another backbone width.
        DensekitError: bad ``layers`` or ``depth_range``, or a backbone of the wrong family.
    """
    head = load_head_file(kind, head_weights, backbone, layers, depth_range, **backbone_overrides)
    bb = load_backbone(backbone, backbone_weights, layers=head.layers, **backbone_overrides)
    return OfficialHead(bb, head)


def load_head_file(
    kind: str,
    head_weights: str | Path,
    backbone: str,
    layers: Sequence[int] | None = None,
    depth_range: tuple[float, float] | None = None,
    **backbone_overrides: Any,
) -> OfficialDecoderHead:
    """The head of a released file for ``backbone`` (arguments as :func:`load_official_head`),
    without loading the backbone's weights."""
    path = Path(head_weights).expanduser()
    sd = read_head_file(path)
    info = WeightsInfo(source="official", path=str(path.resolve()))
    return official_head(
        kind, sd, str(path), backbone, layers, depth_range, info, path.name, **backbone_overrides
    )


def official_head(
    kind: str,
    sd: dict[str, Tensor],
    source: str,
    backbone: str,
    layers: Sequence[int] | None,
    depth_range: tuple[float, float] | None,
    head_weights: WeightsInfo,
    file_name: str = "",
    **backbone_overrides: Any,
) -> OfficialDecoderHead:
    """The head of the decoder tensors ``sd`` (prefix removed), read from ``source``: its kind
    checked against the tensors' layout, built at their widths, loaded strictly.

    Args:
        file_name: the head file's name, which tells a ``dinov2_dpt_depth`` head's training set
            (and so its depth range) when neither ``depth_range`` nor a released name does.
        (the others: see :func:`load_official_head`)
    """
    spec, released = _resolve_kind(kind)
    shapes = shapes_of(sd)
    found = identify_kind(shapes)
    if found is None:
        raise WeightsError(describe_unknown(shapes, Path(source)))
    if found != spec.name:
        raise WeightsError(
            f"{source} looks like a {found} head ({KINDS[found].summary}), not "
            f"{spec.name}; load it with kind={found!r}"
        )
    bspec = get_spec(backbone)
    _check_backbone(spec, bspec, released)
    arch_keys = ALLOWED_OVERRIDES[bspec.family]
    arch = resolve_arch(bspec, {k: v for k, v in backbone_overrides.items() if k in arch_keys})
    built = build_decoder(spec, shapes, arch.embed_dim, bspec.name, source)
    load_decoder_state(built, sd, spec.name, source)
    if layers is None:
        chosen = default_layers(spec, bspec, arch.depth, built.num_layers)
    else:
        chosen = _check_layers(spec, layers, arch.depth, built.num_layers)
    drange = _depth_range(spec, released, depth_range, file_name)
    return OfficialDecoderHead(
        spec,
        built.module,
        layers=chosen,
        depth_range=drange,
        num_outputs=built.num_outputs,
        head_weights=head_weights,
        released_as=released.name if released else None,
    )


def _resolve_kind(kind: str) -> tuple[KindSpec, ReleasedHead | None]:
    if kind in KINDS:
        return KINDS[kind], None
    if is_released_head(kind):
        released = get_released_head(kind)
        return KINDS[released.kind], released
    raise UnknownNameError(
        f"unknown official head kind {kind!r}; valid kinds: {', '.join(KINDS)}; or a released "
        f"head: {', '.join(RELEASED_HEADS)} (aliases: {', '.join(ALIASES)})"
    )


def _check_backbone(spec: KindSpec, bspec: BackboneSpec, released: ReleasedHead | None) -> None:
    if not bspec.is_vit or bspec.family != spec.family:
        raise DensekitError(
            f"{spec.name} heads take the layers of a {spec.family} ViT; {bspec.name} is a "
            f"{bspec.family} backbone"
        )
    if released is not None and bspec.name != released.backbone:
        warnings.warn(
            f"{released.name} was trained on {released.backbone}, not {bspec.name}: its outputs "
            "on other features are not the released model's",
            UserWarning,
            stacklevel=3,
        )


def _check_layers(
    spec: KindSpec, layers: Sequence[int], depth: int, needed: int
) -> tuple[int, ...]:
    """Block indices in block order (negative ones count from the end), one per decoder input."""
    values = [int(i) for i in layers]
    bad = [i for i in values if not -depth <= i < depth]
    if bad:
        raise DensekitError(
            f"{spec.name}: layer indices {bad} out of range 0..{depth - 1} (or -{depth}..-1)"
        )
    chosen = tuple(sorted({i % depth for i in values}))
    if len(chosen) != needed or len(values) != needed:
        raise DensekitError(
            f"{spec.name}: the head file takes {needed} distinct layer(s), got layers={values}"
        )
    return chosen


def _depth_range(
    spec: KindSpec,
    released: ReleasedHead | None,
    given: tuple[float, float] | None,
    file_name: str,
) -> tuple[float, float] | None:
    if spec.bins is None:
        if given is not None:
            raise DensekitError(
                f"{spec.name}: depth_range={given!r} given, but a segmentation head has none"
            )
        return None
    if given is not None:
        values = tuple(float(v) for v in given)
        if len(values) != 2 or not 0 < values[0] < values[1]:
            raise DensekitError(
                f"{spec.name}: depth_range={given!r}; expected (min, max) with 0 < min < max"
            )
        return values[0], values[1]
    if released is not None:
        return released.depth_range
    if spec.depth_range is not None:
        return spec.depth_range
    words = set(re.split(r"[^a-z0-9]+", file_name.lower()))
    datasets = [d for d in DINOV2_DEPTH_RANGES if d in words]
    if len(datasets) == 1:
        return DINOV2_DEPTH_RANGES[datasets[0]]
    ranges = ", ".join(f"{d.upper()} {r}" for d, r in DINOV2_DEPTH_RANGES.items())
    raise DensekitError(
        f"{spec.name}: the depth range depends on the training set and the file name "
        f"{file_name!r} does not say it ({ranges}); pass depth_range=(min, max), or load the "
        f"head by its released name (e.g. 'dinov2_vits14_kitti_dpt')"
    )
