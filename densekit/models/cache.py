"""A disk cache of frozen-backbone features, so heads train without re-running the backbone.

The backbone is frozen, so the features of a window depend only on

* the model side: backbone name, a sha256 of its weights as loaded (so random weights, adapted
  input channels and overrides are covered), the layers, the input normalisation (mean, std,
  scale) and positions of the bands the backbone sees, the input scaling factor, the autocast
  dtype and densekit's version;
* the data side: each image file (absolute path, size, modification time), the window and the
  region it is read from, the bands, the nodata override. Items that are augmented or drawn at
  random have no key and are always computed.

Each window's maps and class tokens are stored as one ``.pt`` file (fp32, read back with
``weights_only=True``) named by the sha256 of both sides; a changed file, window or model is a
different key, so stale entries are never read. When the folder grows past ``max_gb``, the least
recently used entries are removed. Writes are atomic (a temporary file, then a rename), so
several processes may share a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densekit.backbones.base import Backbone
from densekit.version import __version__


def model_key(
    backbone: Backbone,
    mean: Tensor,
    std: Tensor,
    scale: float,
    input_upscale: float = 1.0,
    backbone_bands: Sequence[int] | None = None,
) -> str:
    """The model side of the key (see the module docstring); ``mean``/``std`` of the bands the
    backbone sees (``backbone_bands``: their positions among the inputs), ``input_upscale`` the
    factor it sees them resized by."""
    h = hashlib.sha256()
    for name, t in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    record = {
        "backbone": backbone.name,
        "weights": h.hexdigest(),
        "layers": list(backbone.layers),
        "mean": mean.flatten().tolist(),
        "std": std.flatten().tolist(),
        "scale": scale,
        "autocast": str(backbone.autocast_dtype),
        "densekit": __version__,
    }
    if input_upscale != 1:
        record["input_upscale"] = input_upscale
    if backbone_bands is not None:
        record["backbone_bands"] = list(backbone_bands)
    return json.dumps(record, sort_keys=True)


class FeatureCache:
    """Features of windows on disk (module docstring).

    Args:
        folder: where the entries live (created if missing).
        max_gb: size above which the least recently used entries are removed.
    """

    def __init__(self, folder: str | Path, max_gb: float = 20.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_gb * 1e9)
        self.hits = 0
        self.misses = 0

    def path(self, model: str, item: str) -> Path:
        digest = hashlib.sha256((model + "\n" + item).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.pt"

    def load(self, path: Path) -> tuple[list[Tensor], list[Tensor]] | None:
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, EOFError, RuntimeError):
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        self.hits += 1
        return entry["maps"], entry["tokens"]

    def save(self, path: Path, maps: list[Tensor], tokens: list[Tensor]) -> None:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        # clones: a slice of a batch would save the whole batch's storage
        entry = {"maps": [m.clone() for m in maps], "tokens": [t.clone() for t in tokens]}
        torch.save(entry, tmp)
        os.replace(tmp, path)

    def features(
        self, model: str, keys: Sequence[str], x: Tensor, compute: Callable[[Tensor], Any]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The maps and class tokens of the batch ``x`` (one key per item): read back, and the
        missing ones computed with ``compute(x) -> [(map, class token)]`` and saved."""
        paths = [self.path(model, k) for k in keys]
        found = [self.load(p) for p in paths]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            pairs = compute(x[missing])
            for j, i in enumerate(missing):
                maps = [m[j].cpu() for m, _ in pairs]
                tokens = [c[j].cpu() for _, c in pairs]
                self.save(paths[i], maps, tokens)
                found[i] = (maps, tokens)
        entries = [f for f in found if f is not None]
        n = len(entries[0][0])
        maps_out = [torch.stack([e[0][k] for e in entries]).to(x.device) for k in range(n)]
        tokens_out = [torch.stack([e[1][k] for e in entries]).to(x.device) for k in range(n)]
        return maps_out, tokens_out

    def evict(self) -> int:
        """Remove the least recently used entries until the folder fits; returns how many."""
        entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.folder.glob("*/*.pt")]
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            total -= size
            removed += 1
        return removed
