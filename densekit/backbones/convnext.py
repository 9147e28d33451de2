"""DINOv3 ConvNeXt backbones: timm's ConvNeXt modules, Meta's ``get_intermediate_layers``.

Official semantics (``dinov3/models/convnext.py``): "layers" are the four stages (strides 4, 8,
16, 32); a layer's class token is the global average of its map; with ``norm=True`` only the last
stage is normalised (``norms = [Identity] * 3 + [norm]``), the class token and every position of
the map by the same LayerNorm over channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from densekit.backbones.base import Backbone
from densekit.errors import DensekitError


class DinoConvNeXt(Backbone):
    """A frozen DINOv3 ConvNeXt; :attr:`patch_size` is 32, the stride of the last stage."""

    @property
    def in_chans(self) -> int:
        return int(self.model.stem[0].in_channels)

    def layer_channels(self, layer: int) -> int:
        return self.arch.dims[layer]

    def layer_stride(self, layer: int) -> int:
        return 4 * 2**layer

    def _norm_last(self, x: Tensor) -> Tensor:
        """The final LayerNorm (timm ``head.norm``) over the channel dim of ``(..., C)``."""
        ln = self.model.head.norm
        return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Official semantics: ``n`` = last n stages or stage indices (0..3)."""
        take = list(range(4 - n, 4)) if isinstance(n, int) else [int(i) for i in n]
        bad = [i for i in take if not 0 <= i < 4]
        if bad:
            raise DensekitError(f"{self.name}: stage indices {bad} out of range 0..3")
        take = sorted(set(take))  # stage order, as the official code
        m = self.model
        maps: dict[int, Tensor] = {}
        x = m.stem(x)
        for i, stage in enumerate(m.stages):
            x = stage(x)
            if i in take:
                maps[i] = x
            if len(maps) == len(set(take)):
                break
        patches, classes = [], []
        for i in take:
            fmap = maps[i]
            cls = fmap.mean((-2, -1))
            tokens = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
            if norm and i == 3:
                cls, tokens = self._norm_last(cls), self._norm_last(tokens)
            if reshape:
                b, c, h, w = fmap.shape
                patches.append(tokens.transpose(1, 2).reshape(b, c, h, w).contiguous())
            else:
                patches.append(tokens)
            classes.append(cls)
        if return_class_token:
            return tuple(zip(patches, classes, strict=True))
        return tuple(patches)
