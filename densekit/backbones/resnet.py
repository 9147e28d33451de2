"""DINO's ResNet-50: timm's ResNet (torchvision's module and names), its four stages as layers.

DINO (2021) released a ResNet-50 trained with its method; the official hub loads it into
torchvision's ``resnet50`` with ``fc`` replaced by an identity. A ResNet has no class token and
no ``get_intermediate_layers`` of Meta's; densekit gives it the semantics of the DINOv3 ConvNeXt
entries: "layers" are the four stages (strides 4, 8, 16, 32; 256, 512, 1024, 2048 channels), a
layer's class token is the global average of its map (for the last stage, exactly the official
``forward`` output), and there is no final norm (``norm`` changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from densekit.backbones.base import Backbone
from densekit.errors import DensekitError


class DinoResNet(Backbone):
    """A frozen ResNet; :attr:`patch_size` is 32, the stride of the last stage."""

    @property
    def in_chans(self) -> int:
        return int(self.model.conv1.in_channels)

    def layer_channels(self, layer: int) -> int:
        return self.arch.dims[layer]

    def layer_stride(self, layer: int) -> int:
        return 4 * 2**layer

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """``n`` = the last n stages or stage indices (0..3); maps ``(B, h*w, C)`` (or
        ``(B, C, h, w)`` with ``reshape``), with their global averages as class tokens."""
        take = list(range(4 - n, 4)) if isinstance(n, int) else [int(i) for i in n]
        bad = [i for i in take if not 0 <= i < 4]
        if bad:
            raise DensekitError(f"{self.name}: stage indices {bad} out of range 0..3")
        take = sorted(set(take))
        m = self.model
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        maps: dict[int, Tensor] = {}
        for i, stage in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)):
            x = stage(x)
            if i in take:
                maps[i] = x
            if len(maps) == len(take):
                break
        patches = [maps[i] if reshape else maps[i].flatten(2).transpose(1, 2) for i in take]
        if return_class_token:
            classes = [maps[i].mean((-2, -1)) for i in take]
            return tuple(zip(patches, classes, strict=True))
        return tuple(patches)
