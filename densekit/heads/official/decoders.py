"""From a head file's tensors to its decoder, built at the file's widths and loaded strictly.

Every tensor of the file must find its place: the decoder is built from the widths and switches
the file's shapes give, its expected layout is compared with the file's (missing, unexpected and
mis-shaped keys are named), and the tensors are loaded with ``strict=True``. Works on meta
tensors too (nothing is allocated), which the tests use for the full-size layouts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from densekit.backbones.layout import layout_differences
from densekit.errors import WeightsError
from densekit.heads.official.dpt import LEVELS, DPTConfig, DPTDecoder, StateShapes
from densekit.heads.official.kinds import KindSpec
from densekit.heads.official.linear_depth import LinearDepthDecoder
from densekit.heads.official.linear_seg import LinearSegDecoder


class BuiltDecoder(NamedTuple):
    """A decoder (random weights) with the number of backbone layers it takes and its outputs."""

    module: nn.Module
    num_layers: int
    num_outputs: int
    description: str


def build_decoder(
    spec: KindSpec, shapes: StateShapes, embed_dim: int, backbone: str, source: str
) -> BuiltDecoder:
    """The decoder of a ``spec`` head whose file has ``shapes`` (prefix removed), for a backbone of
    width ``embed_dim``.

    Raises:
        WeightsError: a key the widths are read from is missing, or the file's input widths do
            not fit the backbone (the key and both widths are named).
    """
    if spec.decoder == "dpt":
        config = DPTConfig.from_state_dict(shapes, source)
        for i, width in enumerate(config.embed_dims):
            _check_width(
                f"reassemble_blocks.projects.{i}.conv.weight", width, embed_dim, backbone, source
            )
        outputs = config.num_outputs if spec.bins is None else 1
        return BuiltDecoder(DPTDecoder(config), LEVELS, outputs, config.describe())
    key = "conv_depth.weight" if spec.decoder == "linear_depth" else "conv.weight"
    out_channels, in_channels = shapes[key][:2]
    per_layer = 2 * embed_dim if spec.decoder == "linear_depth" else embed_dim
    if in_channels % per_layer:
        what = "2 x (patch + class token) " if spec.decoder == "linear_depth" else ""
        raise WeightsError(
            f"{source}: {key} takes {in_channels} channels, not a multiple of {per_layer} "
            f"({what}width {embed_dim} of {backbone}); the head was trained on another backbone"
        )
    n = in_channels // per_layer
    if spec.decoder == "linear_depth":
        module: nn.Module = LinearDepthDecoder(in_channels, out_channels)
        text = f"linear depth on {n} layer(s) of width {embed_dim}, {out_channels} bins"
        return BuiltDecoder(module, n, 1, text)
    batchnorm = any(k.startswith("batchnorm_layer.") for k in shapes)
    module = LinearSegDecoder(in_channels, out_channels, batchnorm=batchnorm)
    text = (
        f"linear segmentation on {n} layer(s) of width {embed_dim}, {out_channels} classes, "
        f"{'with' if batchnorm else 'without'} BatchNorm"
    )
    return BuiltDecoder(module, n, out_channels, text)


def _check_width(key: str, width: int, embed_dim: int, backbone: str, source: str) -> None:
    if width != embed_dim:
        raise WeightsError(
            f"{source}: {key} takes features of width {width}, {backbone} gives {embed_dim}; "
            "the head was trained on another backbone"
        )


def load_decoder_state(
    built: BuiltDecoder, sd: dict[str, torch.Tensor], kind: str, source: str
) -> None:
    """Load ``sd`` into ``built.module`` with ``strict=True``, naming any key that does not fit.

    Meta tensors are assigned (the module must then be on the meta device too).
    """
    module = built.module
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    diffs = layout_differences(expected, {k: tuple(v.shape) for k, v in sd.items()})
    if diffs:
        raise WeightsError(
            f"{source}: not the layout of a {kind} head ({built.description}): " + "; ".join(diffs)
        )
    meta = any(v.is_meta for v in sd.values())
    try:
        module.load_state_dict(sd, strict=True, assign=meta)
    except RuntimeError as e:  # the layout check above should make this unreachable
        raise WeightsError(f"{source}: strict load of the {kind} head failed:\n{e}") from None
