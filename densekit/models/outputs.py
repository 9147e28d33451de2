"""What a model outputs, and how its outputs become a map: one :class:`OutputSpec` per task.

A model's ``forward`` returns raw outputs ``(B, K, H, W)``: class logits, one change logit, or
values (depth, height). Every consumer of a trained model (tiled inference, volume inference,
``densekit predict``) reads the spec instead of asking which task it is:

* :meth:`OutputSpec.activate`: raw outputs -> what is blended between overlapping tiles and
  written as "probabilities" (softmax, sigmoid, or the values themselves);
* :meth:`OutputSpec.finish`: blended outputs ``(K, h, w)`` -> the map ``(h, w)``: the argmax of
  the class probabilities, the change probability above 0.5, or the values as float32;
* :meth:`OutputSpec.labels`: raw outputs -> class labels (argmax of the logits, or logit > 0),
  as the metrics and volume inference take them (``densekit predict`` takes the argmax of the
  probabilities, as tiling does);
* how the map is stored: ``dtype``, ``nodata``, the band's ``description``, class names and
  colours, and the resampling of its overviews.

A new task (or an official head: canopy height in metres, depth bins) adds one constructor here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from densekit.errors import DensekitError

CLASS_NODATA = 255

# A qualitative palette for class maps (class i gets entry i modulo its length).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)

Activation = Literal["softmax", "sigmoid", "none"]


@dataclass(frozen=True)
class DepthBins:
    """How depth is read from the head: ``"regression"`` (``ReLU(x) + min_depth``) or
    ``"bins"`` (``num_bins`` centres spaced ``spacing`` between ``min_depth`` and ``max_depth``,
    weighted by the softmax of the head's outputs); see :class:`densekit.heads.DepthOutput`."""

    mode: Literal["bins", "regression"] = "bins"
    num_bins: int = 256
    spacing: Literal["linear", "log"] = "linear"
    min_depth: float = 1e-3
    max_depth: float = 10.0

    @property
    def head_channels(self) -> int:
        return 1 if self.mode == "regression" else self.num_bins


@dataclass(frozen=True)
class OutputSpec:
    """What a model outputs and how inference finishes and stores it (module docstring).

    Args:
        task: the task's name, for messages and records (``segmentation``, ``change``,
            ``depth``); nothing branches on it.
        channels: channels of the model's output (classes, 1 for binary change or values).
        activation: ``softmax`` (classes), ``sigmoid`` (one change logit) or ``none`` (values).
        class_names: one name per class; empty for values.
        head_channels: channels the head produces (``channels``, or the depth bins).
        depth: how values are read from the head (depth/height tasks), else None (classes, or a
            head that outputs the values itself, as Meta's released depth heads do).
        description: the name of the map's band (``class``, ``depth``, ``canopy_height``).
        unit: the values' unit (``m``), written with the map; empty when unknown (the
            target's units).

    Class maps get the colours of :data:`PALETTE` (:meth:`colormap`).
    """

    task: str
    channels: int
    activation: Activation
    class_names: tuple[str, ...] = ()
    head_channels: int = 0
    depth: DepthBins | None = None
    description: str = "class"
    unit: str = ""

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def segmentation(cls, num_classes: int, class_names: Sequence[str] | None) -> OutputSpec:
        """One logit per class."""
        names = tuple(class_names or (f"class{i}" for i in range(num_classes)))
        return cls("segmentation", num_classes, "softmax", names, num_classes)

    @classmethod
    def change(cls, num_classes: int, class_names: Sequence[str] | None) -> OutputSpec:
        """Binary change (``num_classes`` 2): one logit; semantic change: one per class."""
        if num_classes == 2:
            names = tuple(class_names or ("no_change", "change"))
            return cls("change", 1, "sigmoid", names, 1)
        names = tuple(class_names or (f"class{i}" for i in range(num_classes)))
        return cls("change", num_classes, "softmax", names, num_classes)

    @classmethod
    def values(
        cls,
        task: str,
        depth: DepthBins | None,
        description: str = "depth",
        unit: str = "",
    ) -> OutputSpec:
        """One value per pixel (depth, height): read from the head as ``depth`` says, or, with
        ``depth`` None, the head's own single output channel."""
        head_channels = depth.head_channels if depth is not None else 1
        return cls(task, 1, "none", (), head_channels, depth, description, unit)

    # -- what the outputs are ----------------------------------------------------------------
    @property
    def is_map_of_classes(self) -> bool:
        """Outputs are class (or change) probabilities, finished into labels."""
        return self.activation != "none"

    @property
    def dtype(self) -> str:
        """The map's data type: ``uint8`` labels or ``float32`` values."""
        return "uint8" if self.is_map_of_classes else "float32"

    @property
    def nodata(self) -> float:
        """The map's nodata value: 255 for labels, NaN for values."""
        return CLASS_NODATA if self.is_map_of_classes else math.nan

    @property
    def overview_resampling(self) -> str:
        """How the map's overviews are computed: nearest for labels, average for values."""
        return "NEAREST" if self.is_map_of_classes else "AVERAGE"

    @property
    def probability_names(self) -> list[str]:
        """Band names of the written probabilities; empty for values (none are written)."""
        if not self.is_map_of_classes:
            return []
        return ["change"] if self.activation == "sigmoid" else list(self.class_names)

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """The colour table of the label map (nodata transparent)."""
        cmap = {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(len(self.class_names))}
        cmap[CLASS_NODATA] = (0, 0, 0, 0)
        return cmap

    # -- finishing ---------------------------------------------------------------------------
    def activate(self, raw: Tensor) -> Tensor:
        """Raw outputs -> blendable outputs: probabilities, or the values themselves."""
        if self.activation == "softmax":
            return torch.softmax(raw, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(raw)
        return raw

    def labels(self, raw: Tensor) -> Tensor:
        """Raw class outputs ``(B, K, H, W)`` -> labels ``(B, H, W)`` (int64)."""
        if self.activation == "sigmoid":
            return (raw[:, 0] > 0).long()
        if self.activation == "softmax":
            return raw.max(1).indices  # argmax(1) is ~15x slower on CPU
        raise DensekitError(f"a {self.task} model outputs values, not classes")

    def finish(self, blended: np.ndarray) -> np.ndarray:
        """Blended outputs ``(K, h, w)`` -> the map ``(h, w)`` in :attr:`dtype`."""
        if self.activation == "none":
            return blended[0].astype(np.float32)
        if self.activation == "sigmoid":
            return (blended[0] > 0.5).astype(np.uint8)
        return argmax0(blended).astype(np.uint8)

    def prediction(self, raw: Tensor) -> dict[str, Tensor]:
        """What ``densekit predict`` returns per batch: ``probs`` and ``pred`` (labels), or the
        values under :attr:`description` (e.g. ``depth``)."""
        if not self.is_map_of_classes:
            return {self.description: raw}
        probs = self.activate(raw)
        if self.activation == "softmax":  # the class of the largest probability, as tile finds
            return {"probs": probs, "pred": probs.max(1).indices}
        return {"probs": probs, "pred": self.labels(raw)}

    # -- records -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["class_names"] = list(self.class_names)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> OutputSpec:
        fields = dict(record)
        depth = fields.pop("depth", None)
        return cls(
            **{
                **fields,
                "class_names": tuple(fields.get("class_names", ())),
                "depth": DepthBins(**depth) if depth is not None else None,
            }
        )


def argmax0(x: np.ndarray) -> np.ndarray:
    """``x.argmax(0)`` for ``(K, h, w)``, a channel at a time.

    NumPy's argmax over the first axis copies the array to put that axis last and then runs
    one tiny argmax per pixel, tens of times slower than these ``K - 1`` element-wise passes.
    Ties go to the first channel, as with argmax; with a NaN anywhere NumPy's own is used (it
    picks the first NaN).
    """
    if np.isnan(x).any():
        return x.argmax(0)
    best = x[0]
    index = np.zeros(x.shape[1:], np.intp)
    for k in range(1, len(x)):
        larger = x[k] > best
        np.copyto(index, k, where=larger)
        best = np.maximum(best, x[k])
    return index
