"""The parts of Meta's DPT depth decoders, with the attribute names of the released files.

Meta builds these from mmcv-style ``ConvModule`` blocks, which keep their convolution under
``.conv``; :class:`ConvBlock` does the same so that the state-dict keys match (for example
``fusion_blocks.1.res_conv_unit2.conv1.conv.weight``). Shapes are given for a batch of ``B``
maps on an ``h x w`` patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBlock(nn.Module):
    """A convolution kept under ``.conv``, with an optional ReLU before or after it.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 1 or 3 (3 is padded by 1, so the size is kept).
        bias: whether the convolution has a bias.
        relu: ``"before"`` (pre-activation), ``"after"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool,
        relu: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.relu = relu

    def extra_repr(self) -> str:
        return f"relu={self.relu}" if self.relu else ""

    def forward(self, x: Tensor) -> Tensor:
        if self.relu == "before":
            x = F.relu(x)
        x = self.conv(x)
        return F.relu(x) if self.relu == "after" else x


class Reassemble(nn.Module):
    """Four ViT layers ``(B, D_i, h, w)`` (+ class tokens ``(B, D_i)``) -> four maps at strides
    ``p/4, p/2, p, 2p``: ``(B, r_0, 4h, 4w)``, ``(B, r_1, 2h, 2w)``, ``(B, r_2, h, w)`` and
    ``(B, r_3, ceil(h/2), ceil(w/2))``.

    Per layer: readout (if ``readout``: each token concatenated with the class token,
    ``Linear(2 D_i -> D_i) + GELU``; otherwise the class token is ignored), BatchNorm (if
    ``batchnorm``), ``1x1 conv D_i -> r_i`` with bias, then a resize: transposed conv x4 and x2
    (kernel = stride), identity, and a ``3x3`` conv with stride 2.

    Args:
        embed_dims: widths ``D_i`` of the four layers.
        out_channels: widths ``r_i`` after reassembly (Meta's ``post_process_channels``).
        readout: project the class token into every token.
        batchnorm: BatchNorm on each layer before its projection.
    """

    def __init__(
        self,
        embed_dims: Sequence[int],
        out_channels: Sequence[int],
        readout: bool,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        d, r = list(embed_dims), list(out_channels)
        self.projects = nn.ModuleList(
            ConvBlock(di, ri, 1, bias=True) for di, ri in zip(d, r, strict=True)
        )
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(r[0], r[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(r[1], r[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(r[3], r[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.readout_projects = (
            nn.ModuleList(nn.Sequential(nn.Linear(2 * di, di), nn.GELU()) for di in d)
            if readout
            else None
        )
        self.batchnorm_layers = nn.ModuleList(
            nn.BatchNorm2d(di) if batchnorm else nn.Identity() for di in d
        )

    def forward(self, layers: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        out = []
        for i, (x, cls) in enumerate(layers):
            if self.readout_projects is not None:
                b, c, h, w = x.shape
                tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
                joined = torch.cat([tokens, cls[:, None, :].expand_as(tokens)], dim=-1)
                x = self.readout_projects[i](joined).transpose(1, 2).reshape(b, c, h, w)
            x = self.batchnorm_layers[i](x)
            x = self.projects[i](x)
            out.append(self.resize_layers[i](x))
        return out


class ResidualConvUnit(nn.Module):
    """``x + conv2(conv1(x))`` with pre-activation: each conv is ``ReLU -> 3x3 conv``."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = ConvBlock(channels, channels, 3, bias=bias, relu="before")
        self.conv2 = ConvBlock(channels, channels, 3, bias=bias, relu="before")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class FusionBlock(nn.Module):
    """Fuse the coarser path ``(B, F, h, w)`` with a finer level, then double the resolution.

    ``x + unit1(skip)`` (the skip level first resized to ``x``'s size, bilinear,
    ``align_corners=False``, when the two differ, e.g. for odd grids), then ``unit2``, a x2
    bilinear upsampling with ``align_corners=True`` and a ``1x1 conv`` with bias:
    ``(B, F, 2h, 2w)``. The coarsest block has no skip input and no ``res_conv_unit1``.

    Args:
        channels: width ``F`` of the fusion path.
        bias: biases in the residual units' convolutions.
        first: the coarsest block (no skip input).
    """

    def __init__(self, channels: int, bias: bool, first: bool = False) -> None:
        super().__init__()
        self.project = ConvBlock(channels, channels, 1, bias=True)
        self.res_conv_unit1 = None if first else ResidualConvUnit(channels, bias)
        self.res_conv_unit2 = ResidualConvUnit(channels, bias)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None and self.res_conv_unit1 is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class UpConvHead(nn.Module):
    """The output block: ``3x3 conv F -> F/2``, x2 bilinear upsampling (``align_corners=True``),
    ``3x3 conv -> hidden``, ReLU, ``1x1 conv -> outputs``: ``(B, F, h, w) -> (B, outputs, 2h,
    2w)``. Kept under ``.head`` as an ``nn.Sequential`` (keys ``head.0``, ``head.2``, ``head.4``).
    """

    def __init__(self, channels: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, outputs, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)
