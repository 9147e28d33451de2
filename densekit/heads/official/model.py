"""A released head on its backbone: one module that returns what Meta's module returns.

``forward(x)`` for a normalised ``(B, 3, H, W)`` batch, any ``H x W`` of at least one patch
(the steps: :mod:`densekit.heads.official.head`):

* DINOv3 DPT depth (``dinov3_chmv2``, ``dinov3_dpt_depth``): depth ``(B, 1, h', w')`` in metres
  on the head's grid, ``h' = 16 (h + h mod 2)``, ``w' = 16 (w + w mod 2)`` for the ``h x w`` patch
  grid of the centre-padded input (a 5 x 7 grid gives 96 x 128 pixels): not the input size.
  :meth:`OfficialHead.to_input_size` puts it on the input's pixels.
* DINOv2 depth (``dinov2_linear_depth``, ``dinov2_dpt_depth``): depth clamped to the depth
  range, then resized to ``(H, W)`` (bilinear, ``align_corners=False``) as Meta's
  ``whole_inference`` does: the prediction of the padded image is stretched over the input,
  so with padding its pixels are off by up to half the padding.
* DINOv3 linear segmentation: class logits resized to the padded image and cropped to
  ``(B, classes, H, W)`` (for sides that are multiples of the patch, Meta's
  ``predict(rescale_to=(H, W))``).

Meta's ``Depther`` runs under CPU autocast (bfloat16) when no GPU is present; this module runs in
float32 unless the backbone was loaded with an ``autocast_dtype``.
"""

from __future__ import annotations

from torch import Tensor, nn

from densekit.backbones import Backbone
from densekit.heads.official.head import OfficialDecoderHead


class OfficialHead(nn.Module):
    """A frozen backbone and one of Meta's released heads, loaded by
    :func:`densekit.load_official_head`.

    Attributes:
        backbone: the frozen densekit :class:`~densekit.backbones.Backbone`.
        head: the decoder and its conversion to values
            (:class:`~densekit.heads.official.head.OfficialDecoderHead`).
        kind, layers, depth_range, num_outputs, licence: the head's.
        patch_size: the backbone's patch; inputs are centre-padded to multiples of it.
    """

    def __init__(self, backbone: Backbone, head: OfficialDecoderHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.eval()

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def layers(self) -> tuple[int, ...]:
        return self.head.layers

    @property
    def depth_range(self) -> tuple[float, float] | None:
        return self.head.depth_range

    @property
    def num_outputs(self) -> int:
        return self.head.num_outputs

    @property
    def licence(self) -> str:
        return self.head.licence

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def decode(self, x: Tensor) -> Tensor:
        """The decoder's raw output for ``x`` (bin logits, regression map or class logits) on
        the decoder's own grid."""
        return self.head.decode(self.head.features(self.backbone, x))

    def forward(self, x: Tensor) -> Tensor:
        """Meta's output for the normalised batch ``x`` ``(B, 3, H, W)`` (module docstring)."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return self.head.as_meta(self.head.values(self.decode(x)), size, self.patch_size)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h', w')`` of :meth:`forward`'s output for an ``(H, W)`` input."""
        return self.head.meta_size(size, self.patch_size)

    def to_input_size(self, output: Tensor, size: tuple[int, int]) -> Tensor:
        """:meth:`forward`'s ``output`` for an ``(H, W)`` = ``size`` input on the input's pixels:
        the DINOv3 depthers' grid resized to the centre-padded input and cropped, so every pixel
        lies where its input pixel was (what a georeferenced output needs).

        Raises:
            DensekitError: ``output`` is not the size :meth:`output_size` gives, or is a DINOv2
                output of a padded input (stretched: see the module docstring).
        """
        size = (int(size[0]), int(size[1]))
        return self.head.meta_to_in_place(output, size, self.patch_size)

    def official_state_dict(self) -> dict[str, Tensor]:
        """The head's tensors in the layout of Meta's file."""
        return self.head.official_state_dict()

    def extra_repr(self) -> str:
        return f"backbone={self.backbone.name}"
