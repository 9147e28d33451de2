"""The k-NN check of ``DinoPretrainTask`` on a small labelled raster (its ``probe_*`` arguments).

The raster is cut into ``window`` squares (trimmed to a multiple of the patch ``p``); the left
half's squares are the bank, the right half's the queries. Each patch takes the class of most of
its ``p * p`` pixels (patches less than half labelled are left out). The teacher's l2-normalised
patch features of the queries are labelled by a similarity-weighted vote (``exp(sim / 0.07)``,
as DINO's k-NN evaluation) of their ``k`` nearest bank patches, each class's votes divided by its
share of the bank (class-balanced, so a rare class can win); the score is the macro IoU of the
patch labels. The pair is read and checked once, when the task is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch import Tensor
from torchmetrics.functional.classification import multiclass_jaccard_index

from densekit.errors import DensekitError
from densekit.pretrain.data import Source

KEY = "model.init_args.probe_"


class Probe:
    """A probe image and label raster cut into bank and query squares (module docstring).

    Args:
        image, label: the image and its label raster (same size).
        label_map: raw label value -> class (other values are ignored; None: identity).
        num_classes: classes of the probe.
        channels: channels the backbone takes (a one-band image is repeated).
        patch: the backbone's patch size.
        window: side of the squares.
    """

    def __init__(
        self,
        image: str,
        label: str,
        label_map: dict[Any, int] | None,
        num_classes: int,
        channels: int,
        patch: int,
        window: int,
    ) -> None:
        self.num_classes = num_classes
        try:
            source = Source(image, None, None, channels)
        except DensekitError as e:
            raise DensekitError(f"{KEY}image: {e}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(label) as src:
                    raw = src.read(1)
        except RasterioIOError as e:
            raise DensekitError(f"{KEY}label: {label} is not a readable raster ({e})") from None
        if raw.shape != (source.height, source.width):
            raise DensekitError(
                f"{KEY}label: {label} is {raw.shape[1]}x{raw.shape[0]}, the probe image {image} "
                f"is {source.width}x{source.height}"
            )
        labels = np.full(raw.shape, -1, np.int64)
        for value, cls in (label_map or {v: v for v in range(num_classes)}).items():
            if not 0 <= int(cls) < num_classes:  # YAML/CLI keys may arrive as strings
                raise DensekitError(
                    f"{KEY}label_map: class {cls} for value {value} is outside "
                    f"0..{num_classes - 1} (probe_num_classes)"
                )
            labels[raw == int(value)] = int(cls)
        x, invalid = source.read((0, 0, source.width, source.height))
        labels[invalid] = -1
        image_t = torch.from_numpy(np.repeat(x, channels, axis=0) if len(x) == 1 else x)
        win = window - window % patch
        if win == 0:
            raise DensekitError(f"{KEY}window: {window} is smaller than the patch {patch}")
        h, w = labels.shape
        half = (w // 2) // win * win
        # (part, image (C, win, win), kept patches (n,), their classes (n_kept,))
        self.squares: list[tuple[str, Tensor, Tensor, Tensor]] = []
        for r in range(0, h - win + 1, win):
            for c in range(0, w - win + 1, win):
                part = "bank" if c + win <= half else "query" if c >= half else None
                if part is None:
                    continue
                lab = torch.from_numpy(labels[r : r + win, c : c + win])
                lab = lab.reshape(win // patch, patch, win // patch, patch).permute(0, 2, 1, 3)
                lab = lab.reshape(-1, patch * patch)
                counts = (F.one_hot(lab.clamp(min=0), num_classes) * (lab >= 0)[..., None]).sum(1)
                ok = counts.sum(1) > (patch * patch) // 2
                tile = image_t[:, r : r + win, c : c + win]
                self.squares.append((part, tile, ok, counts.argmax(1)[ok]))
        kept = [
            sum(len(y) for p, _, _, y in self.squares if p == part) for part in ("bank", "query")
        ]
        if not all(kept):
            raise DensekitError(
                f"{KEY}label: the probe raster {image} ({w}x{h}) has no labelled patch in one of "
                f"its halves with {win}-pixel squares (check {KEY}label_map, or lower "
                f"{KEY}window {window}; the patch is {patch})"
            )

    @torch.no_grad()
    def miou(self, encode: Callable[[Tensor], Tensor], k: int) -> float:
        """Macro IoU of the queries' k-NN labels; ``encode`` maps ``(1, C, win, win)`` to patch
        features ``(1, n, D)``."""
        feats: dict[str, list[Tensor]] = {"bank": [], "query": []}
        targets: dict[str, list[Tensor]] = {"bank": [], "query": []}
        for part, tile, ok, y in self.squares:
            feats[part].append(F.normalize(encode(tile[None])[0].float(), dim=-1).cpu()[ok])
            targets[part].append(y)
        bank, bank_y = torch.cat(feats["bank"]), torch.cat(targets["bank"])
        query, query_y = torch.cat(feats["query"]), torch.cat(targets["query"])
        top, idx = (query @ bank.T).topk(min(k, len(bank)), dim=1)
        scores = torch.zeros(len(query), self.num_classes)
        scores.scatter_add_(1, bank_y[idx], torch.exp(top / 0.07))
        # Votes are divided by each class's share of the bank, so a rare class (buildings on
        # 4 % of the pixels) is not outvoted by the majority's sheer number of neighbours.
        share = torch.bincount(bank_y, minlength=self.num_classes).float() / len(bank_y)
        scores = scores / share.clamp_min(1e-6)
        pred = scores.argmax(1)
        return float(multiclass_jaccard_index(pred, query_y, self.num_classes, average="macro"))
