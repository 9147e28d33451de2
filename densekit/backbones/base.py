"""What every densekit backbone is: frozen, padded to its patch grid, and mapped back to pixels.

Feature map geometry. An image of ``H x W`` pixels is padded on the bottom and right with zeros
(the mean, after normalisation) to ``Hp x Wp``, the next multiples of the patch size ``p`` (32 for
ConvNeXt, whose stages have strides 4/8/16/32). A layer with stride ``s`` returns a
``(B, C, Hp / s, Wp / s)`` map whose cell ``(i, j)`` covers pixels ``[i*s, (i+1)*s) x
[j*s, (j+1)*s)`` of the padded image. To put features back on the pixels: upsample by ``s`` to
``Hp x Wp`` and crop ``[:H, :W]`` (:func:`crop_to_image` does the crop).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densekit.backbones.arch import Arch
from densekit.backbones.checkpoint import sha256_file
from densekit.backbones.registry import BackboneSpec, Normalization
from densekit.errors import DensekitError, InputImageError


@dataclass
class WeightsInfo:
    """Where the weights came from; ``sha256`` is computed on first use and cached."""

    source: str  # "official", "hf", "random", "url", "hub"
    path: str | None = None
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str | None:
        if self._sha256 is None and self.path is not None and Path(self.path).is_file():
            self._sha256 = sha256_file(self.path)
        return self._sha256

    def as_dict(self) -> dict[str, str | None]:
        return {"source": self.source, "path": self.path, "sha256": self.sha256}


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``(B, C, H, W)`` on the bottom/right to the next multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def crop_to_image(y: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop a pixel-resolution map of the padded image back to the image's ``(H, W)``."""
    return y[..., : size[0], : size[1]]


class Backbone(nn.Module, abc.ABC):
    """A frozen feature extractor with the official ``get_intermediate_layers`` API.

    Frozen means: every parameter has ``requires_grad=False``, the module stays in eval mode
    whatever ``train()`` is called with, and :meth:`forward` runs under inference mode (returning
    ordinary tensors that heads can train on).

    Args:
        arch: the architecture (registry entry and overrides).
        model: the timm module holding the weights.
        layers: block (ViT) or stage (ConvNeXt) indices :meth:`forward` returns, 0-based.
        weights: provenance of the weights.
        normalization: input statistics the weights expect (None when the input channels were
            adapted and the user must give statistics).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward under autocast.
    """

    model: Any  # the timm module: its submodules are reached by name

    def __init__(
        self,
        arch: Arch,
        model: nn.Module,
        layers: Sequence[int],
        weights: WeightsInfo,
        normalization: Normalization | None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.model = model
        self.weights = weights
        self.normalization = normalization
        self.autocast_dtype = autocast_dtype
        n = self.num_layers
        bad = [i for i in layers if not -n <= i < n]
        if bad or not layers:
            raise DensekitError(
                f"{self.name}: layer indices {list(layers)} out of range 0..{n - 1} (or -{n}..-1)"
            )
        # block order, as Meta's get_intermediate_layers returns them
        self.layers = tuple(sorted({i % n for i in layers}))
        self.requires_grad_(False)
        super().train(False)

    # -- description -------------------------------------------------------------------------
    @property
    def spec(self) -> BackboneSpec:
        return self.arch.spec

    @property
    def name(self) -> str:
        return self.arch.spec.name

    @property
    def num_layers(self) -> int:
        return self.arch.depth

    @property
    def patch_size(self) -> int:
        """Side (pixels) inputs are padded to a multiple of."""
        return self.arch.spec.patch_size

    @property
    @abc.abstractmethod
    def in_chans(self) -> int:
        """Number of input channels the patch embedding takes."""

    def layer_channels(self, layer: int) -> int:
        return self.arch.embed_dim

    def layer_stride(self, layer: int) -> int:
        return self.patch_size

    @property
    def out_channels(self) -> list[int]:
        return [self.layer_channels(i) for i in self.layers]

    @property
    def strides(self) -> list[int]:
        return [self.layer_stride(i) for i in self.layers]

    # -- frozen ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode: a frozen backbone has no training behaviour."""
        return super().train(False)

    # -- features ----------------------------------------------------------------------------
    @abc.abstractmethod
    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Meta's API: features of the last ``n`` layers, or of the listed layer indices."""

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise InputImageError(
                f"{self.name}: expected a (B, C, H, W) tensor, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise InputImageError(
                f"{self.name}: input has {x.shape[1]} channels, the backbone takes {self.in_chans}"
            )
        h, w = x.shape[-2:]
        if min(h, w) < self.patch_size:
            raise InputImageError(
                f"{self.name}: input {h}x{w} is smaller than one patch ({self.patch_size} px)"
            )

    def forward_with_class_tokens(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``[(map (B, C, Hp/s, Wp/s), class token (B, C)), ...]`` for :attr:`layers`."""
        self.check_input(x)
        x = pad_to_multiple(x, self.patch_size)
        autocast = (
            torch.autocast(x.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            pairs = self.get_intermediate_layers(
                x, n=list(self.layers), reshape=True, return_class_token=True, norm=True
            )
            out = [(m.float(), c.float()) for m, c in pairs]
        # Copies: outside inference mode they are ordinary tensors that autograd accepts, and a
        # class token no longer shares the storage of the whole token sequence.
        return [(m.clone(), c.clone()) for m, c in out]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps ``(B, C, Hp/s, Wp/s)`` of :attr:`layers`, for any ``H x W`` >= one patch."""
        return [m for m, _ in self.forward_with_class_tokens(x)]
