"""One of Meta's released heads as a densekit head: the decoder, how its output becomes values
and where they lie.

:class:`OfficialDecoderHead` takes the frozen backbone's layers as Meta's heads take them and
returns the decoder's output as values on the decoder's own grid; two placements put them on the
input's pixels:

* :meth:`OfficialDecoderHead.as_meta`: what Meta's module returns (the DINOv3 depthers' grid,
  DINOv2's ``whole_inference`` resize to the unpadded input, the linear segmentation head's
  ``predict``), used by :func:`densekit.load_official_head`;
* :meth:`OfficialDecoderHead.in_place`: resized to the centre-padded input and cropped, so every
  output pixel lies where its input pixel was, used by :class:`densekit.models.DenseModel` (tiles
  of a GeoTIFF, ``densekit test``). For inputs whose sides are multiples of the patch both agree
  up to the DINOv3 depthers' grid size; with padding, DINOv2's stretch moves pixels by up to half
  the padding.

The steps for a normalised ``(B, 3, H, W)`` batch:

1. :meth:`features`: centre-pad to multiples of the patch ``p`` (an ``h x w`` patch grid), take
   the kind's layers from the frozen backbone (``get_intermediate_layers`` with ``reshape=True``,
   class tokens, the final norm for DINOv3 heads only), in float32;
2. :meth:`decode`: the decoder's raw output (bin logits, a regression map or class logits);
3. :meth:`values`: depth in metres for depth heads (bins, clamping for DINOv2), logits unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densekit.backbones import Backbone, WeightsInfo
from densekit.errors import DensekitError
from densekit.heads.official.bins import BinsToDepth
from densekit.heads.official.dpt import dpt_grid
from densekit.heads.official.kinds import KindSpec
from densekit.heads.official.padding import centre_pad, padded_size, to_padded_image_and_crop

Layer = tuple[Tensor, Tensor]


class OfficialDecoderHead(nn.Module):
    """Meta's decoder with the kind's conversion to values (module docstring).

    Args:
        spec: the kind.
        decoder: the decoder, with the state-dict keys of Meta's file (prefix removed).
        layers: the backbone blocks it takes, in block order.
        depth_range: ``(min, max)`` in metres for depth heads, None for segmentation.
        num_outputs: 1 for depth, the number of classes for segmentation.
        head_weights: the head file it was loaded from (path, lazily computed sha256).
        released_as: the released model's name when loaded by it (``dinov3_vitl16_chmv2``).
    """

    def __init__(
        self,
        spec: KindSpec,
        decoder: nn.Module,
        layers: Sequence[int],
        depth_range: tuple[float, float] | None,
        num_outputs: int,
        head_weights: WeightsInfo,
        released_as: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.decoder = decoder
        self.layers = tuple(int(i) for i in layers)
        self.depth_range = depth_range
        self.num_outputs = num_outputs
        self.head_weights = head_weights
        self.released_as = released_as
        self.to_depth = (
            BinsToDepth(depth_range[0], depth_range[1], spec.bins)
            if depth_range is not None and spec.bins is not None
            else None
        )

    @property
    def kind(self) -> str:
        return self.spec.name

    @property
    def licence(self) -> str:
        return self.spec.licence

    # -- the steps ---------------------------------------------------------------------------
    def features(self, backbone: Backbone, x: Tensor) -> list[Layer]:
        """``[(map (B, D, h, w), class token (B, D))]`` of the centre-padded ``x``, one per
        layer, computed without autograd (the backbone is frozen), in ``x``'s dtype."""
        backbone.check_input(x)
        x = centre_pad(x, backbone.patch_size)
        autocast = (
            torch.autocast(x.device.type, dtype=backbone.autocast_dtype)
            if backbone.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = backbone.get_intermediate_layers(
                x,
                n=list(self.layers),
                reshape=True,
                return_class_token=True,
                norm=self.spec.backbone_norm,
            )
            pairs = [(m.to(x.dtype), c.to(x.dtype)) for m, c in out]
        # copies are ordinary tensors, so a head being fine-tuned can take them
        return [(m.clone(), c.clone()) for m, c in pairs]

    def decode(self, layers: Sequence[Layer]) -> Tensor:
        """The decoder's raw output: ``(B, n_bins, ...)`` bin logits or a ``(B, 1, ...)``
        regression map for depth heads, ``(B, classes, h, w)`` logits for segmentation."""
        if self.spec.class_token:
            return self.decoder(list(layers))
        return self.decoder([m for m, _ in layers])

    def values(self, raw: Tensor) -> Tensor:
        """Depth ``(B, 1, ...)`` in metres (clamped to the range for DINOv2 heads), or the class
        logits unchanged, on the decoder's grid."""
        if self.to_depth is None:
            return raw
        depth = self.to_depth(raw)
        if self.spec.clamp and self.depth_range is not None:
            depth = depth.clamp(self.depth_range[0], self.depth_range[1])
        return depth

    def forward(self, layers: Sequence[Layer]) -> Tensor:
        """Layers -> values on the decoder's grid (:meth:`decode`, then :meth:`values`)."""
        return self.values(self.decode(layers))

    # -- placements --------------------------------------------------------------------------
    def as_meta(self, y: Tensor, size: tuple[int, int], patch: int) -> Tensor:
        """Values ``y`` of an ``(H, W)`` = ``size`` input as Meta's module returns them: on the
        DINOv3 depthers' grid (:meth:`meta_size`), resized onto the unpadded input (DINOv2,
        bilinear), or resized to the padded input and cropped (linear segmentation)."""
        if self.spec.placement == "grid":
            return y
        if self.spec.placement == "resized_to_input":
            return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return to_padded_image_and_crop(y, size, patch)

    def in_place(self, y: Tensor, size: tuple[int, int], patch: int) -> Tensor:
        """Values ``y`` of an ``(H, W)`` = ``size`` input on its pixels: resized to the
        centre-padded size (bilinear, ``align_corners=False``) and cropped."""
        return to_padded_image_and_crop(y, size, patch)

    def meta_size(self, size: tuple[int, int], patch: int) -> tuple[int, int]:
        """``(h', w')`` of :meth:`as_meta`'s output for an ``(H, W)`` input: the input size,
        or for the DINOv3 DPT heads ``16 (h + h mod 2) x 16 (w + w mod 2)`` for the ``h x w``
        patch grid of the centre-padded input."""
        if self.spec.placement != "grid":
            return size
        hp, wp = padded_size(size, patch)
        return dpt_grid(hp // patch, wp // patch)

    def meta_to_in_place(self, y: Tensor, size: tuple[int, int], patch: int) -> Tensor:
        """Meta's output for an ``(H, W)`` input (:meth:`as_meta`) on the input's pixels.

        Raises:
            DensekitError: ``y`` is not the size :meth:`meta_size` gives, or the kind's output
                is stretched over the unpadded input (DINOv2 depth) and cannot be put back
                exactly; use :meth:`in_place` on :meth:`forward`'s values instead.
        """
        want = self.meta_size(size, patch)
        if tuple(y.shape[-2:]) != want:
            raise DensekitError(
                f"{self.kind}: an output for a {size[0]}x{size[1]} input is "
                f"{want[0]}x{want[1]}, got {tuple(y.shape[-2:])}"
            )
        if self.spec.placement == "grid":
            return to_padded_image_and_crop(y, size, patch)
        if self.spec.placement == "resized_to_input" and padded_size(size, patch) != size:
            raise DensekitError(
                f"{self.kind}: Meta's output for a {size[0]}x{size[1]} input is the prediction of "
                "the centre-padded image stretched over the input; its pixels cannot be put "
                "back exactly (use the head's in_place on its values, as densekit's models do)"
            )
        return y

    # -- weights and records -----------------------------------------------------------------
    def official_state_dict(self) -> dict[str, Tensor]:
        """The decoder's tensors in the layout of Meta's file (DINOv2: keys under
        ``decode_head.``, without the ``{"state_dict": ...}`` wrapper)."""
        prefix = self.spec.file_prefix
        return {prefix + k: v for k, v in self.decoder.state_dict().items()}

    def record(self) -> dict[str, Any]:
        """Where the head came from, for checkpoints: kind, file, sha256, licence, released
        name, layers, depth range, and the input it takes."""
        return {
            "kind": self.kind,
            "path": self.head_weights.path,
            "sha256": self.head_weights.sha256,
            "licence": self.licence,
            "released_as": self.released_as,
            "layers": list(self.layers),
            "depth_range": None if self.depth_range is None else list(self.depth_range),
            "input": "red, green, blue (in this order), normalised with the backbone's statistics",
        }

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, layers={list(self.layers)}, depth_range={self.depth_range}, "
            f"num_outputs={self.num_outputs}"
        )
