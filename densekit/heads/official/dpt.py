"""Meta's DPT depth decoder (DINOv2 ``DPTHead``, DINOv3 ``dpt_head.DPTHead``) as one module.

The DINOv2 and DINOv3 decoders share their structure and their state-dict keys; the released
heads differ only in widths and four switches, all of which :meth:`DPTConfig.from_state_dict`
reads off the file:

| switch | DINOv2 NYU/KITTI | DINOv3 CHMv2 | DINOv3 SYNTHMIX (7B) |
|---|---|---|---|
| ``readout`` (class token projected into the tokens) | yes | yes | no |
| ``batchnorm`` (on the tokens before reassembly) | no | no | yes |
| ``unit_bias`` (biases in the residual units) | no | yes | no |
| ``project`` (``3x3 conv + ReLU`` after the fusion) | yes | no | yes |
| outputs / hidden | 1 / 32 | 256 bins / 128 | 256 bins / 32 |

Shapes for an ``h x w`` patch grid (``c = ceil``): four layers ``(B, D, h, w)`` -> reassembled
``(B, r_i, ...)`` at 4h, 2h, h and ``c(h/2)`` -> ``3x3 conv -> F`` each -> fusion from the coarsest,
each block doubling it: ``2c(h/2)``, ``4c(h/2)``, ``8c(h/2)``, ``16c(h/2)`` -> [project] -> output
block x2: ``(B, outputs, 32 c(h/2), 32 c(w/2))``, i.e. ``16 (h + h mod 2)`` rows whatever the
patch size. The finer levels are resized to the fusion path where their sizes differ (odd grids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from densekit.errors import DensekitError, WeightsError
from densekit.heads.official.dpt_parts import ConvBlock, FusionBlock, Reassemble, UpConvHead

StateShapes = dict[str, tuple[int, ...]]

LEVELS = 4


def dpt_grid(h: int, w: int) -> tuple[int, int]:
    """Output size of the DPT decoder for an ``h x w`` patch grid: ``16 (h + h mod 2)`` x
    ``16 (w + w mod 2)``."""
    return 16 * (h + h % 2), 16 * (w + w % 2)


@dataclass(frozen=True)
class DPTConfig:
    """Widths and switches of one DPT decoder (see the module docstring)."""

    embed_dims: tuple[int, ...]
    post_process_channels: tuple[int, ...]
    channels: int
    hidden_channels: int
    num_outputs: int
    readout: bool
    batchnorm: bool
    unit_bias: bool
    project: bool

    @classmethod
    def from_state_dict(cls, shapes: StateShapes, source: str) -> DPTConfig:
        """Read the configuration off a decoder state dict's keys and shapes (prefix removed).

        Raises:
            WeightsError: a key the widths are read from is missing (named in the message).
        """
        needed = [f"reassemble_blocks.projects.{i}.conv.weight" for i in range(LEVELS)]
        needed += ["convs.0.conv.weight", "conv_depth.head.2.weight", "conv_depth.head.4.weight"]
        missing = [k for k in needed if k not in shapes]
        if missing:
            raise WeightsError(f"{source}: not a complete DPT head; missing key(s): {missing}")
        projects = [shapes[k] for k in needed[:LEVELS]]
        return cls(
            embed_dims=tuple(s[1] for s in projects),
            post_process_channels=tuple(s[0] for s in projects),
            channels=shapes["convs.0.conv.weight"][0],
            hidden_channels=shapes["conv_depth.head.2.weight"][0],
            num_outputs=shapes["conv_depth.head.4.weight"][0],
            readout=any(k.startswith("reassemble_blocks.readout_projects.") for k in shapes),
            batchnorm=any(k.startswith("reassemble_blocks.batchnorm_layers.") for k in shapes),
            unit_bias=any(".res_conv_unit" in k and k.endswith(".bias") for k in shapes),
            project="project.conv.weight" in shapes,
        )

    def describe(self) -> str:
        switches = [
            name for name in ("readout", "batchnorm", "unit_bias", "project") if getattr(self, name)
        ]
        return (
            f"DPT on layers of width {list(self.embed_dims)}, reassembled to "
            f"{list(self.post_process_channels)}, {self.channels} fusion channels, "
            f"{self.num_outputs} output(s); switches on: {switches or 'none'}"
        )


class DPTDecoder(nn.Module):
    """Four ``(map (B, D, h, w), class token (B, D))`` layers -> ``(B, outputs, h', w')`` with
    ``(h', w') =`` :func:`dpt_grid` ``(h, w)``.

    Args:
        config: widths and switches (:meth:`DPTConfig.from_state_dict` reads them off a file).
    """

    def __init__(self, config: DPTConfig) -> None:
        super().__init__()
        self.config = config
        self.reassemble_blocks = Reassemble(
            config.embed_dims, config.post_process_channels, config.readout, config.batchnorm
        )
        self.convs = nn.ModuleList(
            ConvBlock(r, config.channels, 3, bias=False) for r in config.post_process_channels
        )
        self.fusion_blocks = nn.ModuleList(
            FusionBlock(config.channels, config.unit_bias, first=i == 0) for i in range(LEVELS)
        )
        self.project = (
            ConvBlock(config.channels, config.channels, 3, bias=True, relu="after")
            if config.project
            else None
        )
        self.conv_depth = UpConvHead(config.channels, config.hidden_channels, config.num_outputs)

    def forward(self, layers: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        if len(layers) != LEVELS:
            raise DensekitError(f"the DPT decoder takes {LEVELS} layers, got {len(layers)}")
        levels = [
            conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(layers), strict=True)
        ]
        out = self.fusion_blocks[0](levels[-1])
        for i in range(1, LEVELS):
            out = self.fusion_blocks[i](out, levels[-(i + 1)])
        if self.project is not None:
            out = self.project(out)
        return self.conv_depth(out)
