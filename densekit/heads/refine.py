"""Full-resolution detail on top of a patch-grid head: image-guided upsampling and a pixel branch.

A ViT's features are one vector per patch (14 or 16 pixels); a head on them predicts on that
grid, and bilinear upsampling can only blur it. Two light modules put the pixel detail back:

* :class:`GuidedUpsampler`, a learned joint bilateral upsampler (after Kopf et al. 2007 and the
  JBU of FeatUp, Fu et al. 2024, written here from the papers): each full-resolution output is a
  weighted average of the coarse map's ``k x k`` cells nearest to it. The weight of a cell is a
  spatial Gaussian of the distance to the cell centre (learned width, in cells) times a range
  term ``exp(-|g(q) - mean_g(cell)|^2)`` on a learned guide ``g`` (the cell mean by adaptive
  average pooling, approximate when a cell is not a whole number of pixels): a small
  convolution of the normalised input bands (all of them; both dates for change detection).
  Weights sum to 1, so the upsampled map stays in the coarse map's range, and because the
  average is linear in the coarse map, upsampling a linear head's logits equals applying the
  head to upsampled features: the linear head keeps its protocol and the upsampler works on
  ``K`` channels instead of ``C``.
* :class:`PixelStem`, two 3x3 convolutions on the full-resolution bands, whose output is
  concatenated with the upsampled head output and fused by ``3x3 conv + BN + ReLU + 1x1 conv``;
  the head then outputs ``hidden`` channels instead of the classes. For two dates the stem runs
  on each (shared weights) and sees ``[p1, p2, |p2 - p1|]``.

Geometry: the coarse map covers ``cover`` input pixels along each axis (the padded input, or
with input scaling the padded resized input mapped back to input pixels); output pixel ``q``
sits at coarse coordinate ``u = (q + 0.5) * cells / cover - 0.5`` (the convention of bilinear
interpolation with ``align_corners=False``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def upsample_to(logits: Tensor, size: Sequence[int], multiple: int) -> Tensor:
    """Resize ``logits`` (covering the input padded to ``multiple``) to the padded size, bilinear,
    and crop to ``size`` (the plain path, without input scaling)."""
    h, w = int(size[0]), int(size[1])
    padded = (h + (-h % multiple), w + (-w % multiple))
    if tuple(logits.shape[-2:]) != padded:
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


def coarse_coordinates(out: int, cells: int, cover: float, device: torch.device) -> Tensor:
    """The coarse-grid coordinate of each of ``out`` output pixels (float, cell units)."""
    q = torch.arange(out, device=device, dtype=torch.float32)
    return (q + 0.5) * (cells / cover) - 0.5


def resample(y: Tensor, size: Sequence[int], cover: Sequence[float]) -> Tensor:
    """Bilinear resampling of ``y`` (covering ``cover`` pixels) onto the ``size`` output pixels."""
    h, w = y.shape[-2:]
    uy = coarse_coordinates(int(size[0]), h, cover[0], y.device)
    ux = coarse_coordinates(int(size[1]), w, cover[1], y.device)
    gy = (2 * uy + 1) / h - 1  # grid_sample's normalised coordinates (align_corners=False)
    gx = (2 * ux + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    grid = grid.expand(y.shape[0], -1, -1, -1)  # float32: bf16 coordinates would be off by pixels
    out = F.grid_sample(
        y.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(y.dtype)


class GuidedUpsampler(nn.Module):
    """Learned joint bilateral upsampling of a coarse map, guided by the image.

    Args:
        guide_in: channels of the guidance image (normalised bands, dates concatenated).
        guide_channels: channels of the learned guide ``g``.
        kernel: the ``kernel x kernel`` coarse cells around each output pixel (odd).
    """

    def __init__(self, guide_in: int, guide_channels: int = 8, kernel: int = 3) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.kernel = kernel
        self.guide = nn.Sequential(
            nn.Conv2d(guide_in, 16, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(16, guide_channels, 1),
        )
        self.log_sigma = nn.Parameter(torch.tensor(0.0))  # spatial width, in coarse cells

    def forward(self, y: Tensor, image: Tensor, cover: Sequence[float]) -> Tensor:
        """``y (B, K, h, w)``, ``image (B, C, H, W)`` -> ``(B, K, H, W)``."""
        h, w = y.shape[-2:]
        size = image.shape[-2:]
        g = self.guide(image)
        # the guide of each cell: about its mean over the input pixels the cell covers (adaptive
        # average pooling of the padded guide: exact when the cover is a whole multiple of the
        # cells, otherwise bins of whole pixels that may overlap by one)
        pad_h = max(round(cover[0]) - size[0], 0)
        pad_w = max(round(cover[1]) - size[1], 0)
        g_cells = F.adaptive_avg_pool2d(F.pad(g, (0, pad_w, 0, pad_h), mode="replicate"), (h, w))
        uy = coarse_coordinates(size[0], h, cover[0], y.device)
        ux = coarse_coordinates(size[1], w, cover[1], y.device)
        cy, cx = uy.round().long(), ux.round().long()
        inv_var = torch.exp(-2 * self.log_sigma) / 2
        r = self.kernel // 2
        logits, picks = [], []
        for dy in range(-r, r + 1):
            ny = (cy + dy).clamp(0, h - 1)
            wy = (uy - ny) ** 2
            for dx in range(-r, r + 1):
                nx = (cx + dx).clamp(0, w - 1)
                spatial = (wy[:, None] + ((ux - nx) ** 2)[None, :]) * inv_var  # (H, W)
                g_n = g_cells[:, :, ny[:, None], nx[None, :]]
                rng = (g - g_n).pow(2).sum(1)  # (B, H, W)
                logits.append(-(spatial + rng))
                picks.append((ny, nx))
        weights = torch.softmax(torch.stack(logits, 1), dim=1)  # (B, k*k, H, W)
        out = torch.zeros(y.shape[0], y.shape[1], *size, dtype=y.dtype, device=y.device)
        for k, (ny, nx) in enumerate(picks):
            out = out + weights[:, k : k + 1].to(y.dtype) * y[:, :, ny[:, None], nx[None, :]]
        return out


class PixelStem(nn.Module):
    """``(B, C, H, W)`` bands -> ``(B, channels, H, W)``: two 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DetailDecoder(nn.Module):
    """The coarse head output and the normalised image(s) -> outputs at full resolution.

    Args:
        in_channels: bands of one image.
        images: images per sample (2 for change detection).
        coarse_channels: channels of the head output (``hidden`` with a pixel branch, else the
            outputs).
        num_outputs: output channels.
        upsampler: ``"bilinear"`` or ``"guided"``.
        pixel_branch: channels of the pixel stem (0: none).
    """

    def __init__(
        self,
        in_channels: int,
        images: int,
        coarse_channels: int,
        num_outputs: int,
        upsampler: str,
        pixel_branch: int,
    ) -> None:
        super().__init__()
        self.upsampler = GuidedUpsampler(in_channels * images) if upsampler == "guided" else None
        self.stem = PixelStem(in_channels, pixel_branch) if pixel_branch > 0 else None
        self.fuse: nn.Module | None = None
        if pixel_branch > 0:
            stem_out = pixel_branch * (3 if images == 2 else 1)
            self.fuse = nn.Sequential(
                nn.Conv2d(coarse_channels + stem_out, coarse_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(coarse_channels),
                nn.ReLU(),
                nn.Conv2d(coarse_channels, num_outputs, 1),
            )

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each part."""
        parts = {"upsampler": self.upsampler, "pixel branch": self.stem, "fusion": self.fuse}
        return {
            name: sum(p.numel() for p in m.parameters())
            for name, m in parts.items()
            if m is not None
        }

    def forward(self, y: Tensor, images: Sequence[Tensor], cover: Sequence[float]) -> Tensor:
        if self.upsampler is not None:
            y = self.upsampler(y, torch.cat(list(images), dim=1), cover)
        else:
            y = resample(y, images[0].shape[-2:], cover)
        if self.stem is None or self.fuse is None:
            return y
        p = [self.stem(x) for x in images]
        if len(p) == 2:
            p = [p[0], p[1], (p[1] - p[0]).abs()]
        return self.fuse(torch.cat([y, *p], dim=1))
