"""Tiled inference on rasters of any size: ``densekit tile`` and :func:`tile`.

How a raster is processed:

* Tiles of ``tile`` pixels (a multiple of the patch) on a regular grid with step
  ``tile - overlap``, starting at the top-left corner. Tiles that reach past the right or bottom
  edge are padded (the pixels outside count as nodata, i.e. the normalisation mean), never
  shifted, so every tile sits at a multiple of the step.
* Each tile's output (class or change probabilities, or depth) is multiplied by a smooth window
  ``w(i) w(j)`` with ``w(i) = sin^2(pi (i + 0.5) / tile)`` (a Hann window shifted half a pixel so
  it is never zero) and summed; the result is the sum divided by the summed weights. Where tiles
  overlap, each one's borders weigh least, so no seam shows; a model that is exactly
  translation-equivariant gives the untiled result.
* The raster is processed one strip (a row of tiles) at a time. The accumulator holds the rows
  of one strip; after a strip, its first ``tile - overlap`` rows have received every tile that
  overlaps them and are written out, the rest moves up. Peak memory is one strip of tiles
  (``(channels + 1) x tile x width`` floats) plus the read-ahead, whatever the raster's height;
  windows are read by a background thread while the model runs (``prefetch`` batches ahead).
* Pixels that are nodata in the input (any band, either date) are nodata in the output.
* Outputs: segmentation and change maps as uint8 with a colour table, nodata 255 and the class
  names in the metadata (``CLASS_NAMES``, ``CLASS_<i>``); depth/height as float32 (nodata NaN);
  optionally the probabilities (float32, one band per class, or the change probability). Each
  has the input's CRS, transform and size, and is written as a tiled, deflate-compressed
  Cloud-Optimised GeoTIFF with overviews (GDAL's COG driver), built from a partial file once
  every strip is done and then moved into place; nothing half-written is left at the output.
* ``resume``: the partial file and a progress record (``<output>.partial/``) survive a killed
  run; a resumed run recomputes the strip before the first unfinished one (for the overlap) and
  continues; the output has the same bytes as an uninterrupted run.
* Several processes (``torchrun``; ``RANK``/``WORLD_SIZE`` from the environment) split the
  strips into contiguous ranges; each writes its own part, rank 0 assembles the output once all
  are done. The output is the same as from one process.
* A JSON sidecar ``<output>.json`` records the parameters, the checkpoint's and the backbone
  weights' sha256 and the timings.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from densekit import __version__
from densekit.backbones.checkpoint import sha256_file
from densekit.data.bands import resolve_band_indices
from densekit.data.datasets import RasterReaders, band_table, read_box, reference_grid
from densekit.data.grids import Grid, check_alignable
from densekit.errors import DensekitError, InputImageError

CLASS_NODATA = 255
FINISH_COLUMNS = 2048  # columns finished at a time (bounds the temporaries of a wide strip)
# A qualitative palette for class maps (class i gets entry i modulo its length).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


@dataclass
class TileOptions:
    """Settings of a tiled run (see the module docstring).

    Args:
        tile: tile side in pixels; rounded down to a multiple of the backbone's patch.
        overlap: pixels shared by neighbouring tiles (less than half the tile).
        batch_size: tiles per forward pass (batches never span two strips).
        probabilities: also write the probabilities to ``<output stem>_probs.tif``.
        device: torch device, e.g. ``cpu`` or ``cuda`` (under torchrun ``cuda`` means the GPU
            of the process's ``LOCAL_RANK``).
        precision: ``32`` or ``bf16`` (autocast; on GPUs).
        prefetch: batches read ahead by the background thread.
        resume: continue from the progress of a killed run with the same settings.
        stop_after_strips: stop (keeping the partial file) after this many strips of this
            process; a later ``resume`` continues. For time-limited jobs and tests.
        progress: show a progress bar (tiles/s and ETA) on rank 0.
        gdal_cache_mb: GDAL's block cache during the run (bounds the memory of reads and writes).
    """

    tile: int = 512
    overlap: int = 64
    batch_size: int = 4
    probabilities: bool = False
    device: str = "cpu"
    precision: str = "32"
    prefetch: int = 2
    resume: bool = False
    stop_after_strips: int | None = None
    progress: bool = True
    gdal_cache_mb: int = 32


class StoppedEarly(Exception):  # noqa: N818 - not an error: the user asked for it
    """Raised when ``stop_after_strips`` ends a run early (the partial file is kept)."""


def hann_window(size: int) -> torch.Tensor:
    """``w(i) = sin^2(pi (i + 0.5) / size)``, never 0, largest in the middle."""
    i = torch.arange(size, dtype=torch.float64)
    return torch.sin(math.pi * (i + 0.5) / size).pow(2).float()


def tile_positions(length: int, tile: int, step: int) -> list[int]:
    """Tile starts ``0, step, 2 step, ...`` until a tile reaches ``length``."""
    if length <= tile:
        return [0]
    return [k * step for k in range(math.ceil((length - tile) / step) + 1)]


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _init_distributed(world: int) -> bool:
    """Join the process group torchrun describes; True when this call created it."""
    import torch.distributed as dist

    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        return True
    return False


# -- the model side --------------------------------------------------------------------------
class TileModel:
    """A trained task and what tiling needs to know about it."""

    def __init__(self, task: Any, checkpoint: str | None, device: str, precision: str) -> None:
        self.task = task.eval().to(device)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        if precision not in ("32", "bf16"):
            raise DensekitError(f"precision {precision!r}: valid values are '32' and 'bf16'")
        self.autocast = precision == "bf16"
        hp = task.hparams
        self.kind: str = task.kind
        self.in_channels = int(hp.in_channels)
        self.bands = list(hp.bands) if hp.bands is not None else None
        self.patch = task.backbone.patch_size if task.backbone is not None else 32
        if self.kind == "depth":
            self.channels = 1
            self.class_names: list[str] = []
        else:
            binary = self.kind == "change" and task.binary
            self.channels = 1 if binary else int(hp.num_classes)
            names = hp.get("class_names") or []
            self.class_names = list(names) or (
                ["no_change", "change"] if binary else [f"class{i}" for i in range(hp.num_classes)]
            )

    @torch.no_grad()
    def __call__(self, *images: torch.Tensor) -> torch.Tensor:
        """Raw tiles ``(B, C, T, T)`` -> blendable outputs ``(B, K, T, T)``."""
        xs = [x.to(self.device, non_blocking=True) for x in images]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.task(*xs).float()
        if self.kind == "depth":
            return out
        if self.channels == 1:
            return torch.sigmoid(out)
        return torch.softmax(out, dim=1)

    def finish(self, blended: np.ndarray) -> np.ndarray:
        """Blended outputs ``(K, h, w)`` -> the map ``(h, w)``."""
        if self.kind == "depth":
            return blended[0].astype(np.float32)
        if self.channels == 1:
            return (blended[0] > 0.5).astype(np.uint8)
        return blended.argmax(0).astype(np.uint8)


def load_tile_model(
    checkpoint: str | Path, device: str = "cpu", precision: str = "32"
) -> TileModel:
    """Load a densekit checkpoint of any task (the backbone file is checked by sha256)."""
    from densekit.tasks import TASKS

    path = Path(checkpoint)
    if not path.is_file():
        raise DensekitError(f"--checkpoint {path}: no such file")
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("densekit")
    except Exception as e:
        raise DensekitError(
            f"--checkpoint {path}: not a readable PyTorch checkpoint ({type(e).__name__}); "
            "give a .ckpt written by densekit fit"
        ) from None
    if meta is None or meta.get("task") not in TASKS:
        raise DensekitError(f"--checkpoint {path}: not a checkpoint of densekit fit")
    task = TASKS[meta["task"]].load_from_checkpoint(str(path), map_location="cpu")
    return TileModel(task, str(path), device, precision)


# -- reading ---------------------------------------------------------------------------------
@dataclass
class RasterInput:
    """The input raster(s) of one run, read on the first date's grid."""

    path: str
    path2: str | None
    grid: Grid
    band_idx: list[int] | None
    band_idx2: list[int] | None = None

    def read(self, readers: RasterReaders, col: int, row: int, size: int) -> list[np.ndarray]:
        """The tile at ``(col, row)`` of each date as ``(C, size, size)`` with NaN for nodata."""
        region = (0, 0, self.grid.width, self.grid.height)
        window = (col, row, size, size)
        out = []
        for path, idx in ((self.path, self.band_idx), (self.path2, self.band_idx2)):
            if path is None:
                continue
            bands = None if idx is None else [i + 1 for i in idx]
            x, inside, invalid = read_box(path, window, region, bands, self.grid, readers=readers)
            x[:, ~inside | invalid] = np.nan
            out.append(x)
        return out


def open_input(model: TileModel, path: str, path2: str | None) -> RasterInput:
    """Check the input against the checkpoint (bands, dates, overlap) and describe it."""
    if not Path(path).exists():
        raise InputImageError(f"--input {path}: no such file")
    grid, _ = reference_grid(path)
    table = band_table(path)
    names = [name for _, _, name in table]
    idx = None if model.bands is None else resolve_band_indices(model.bands, names, path)
    count = len(table) if idx is None else len(idx)
    if count != model.in_channels:
        raise DensekitError(
            f"--input {path}: {count} bands; the checkpoint {model.checkpoint} was trained on "
            f"{model.in_channels} (bands {model.bands or 'all'})"
        )
    if (model.kind == "change") != (path2 is not None):
        need = "two dates (--input and --input2)" if model.kind == "change" else "one input"
        raise DensekitError(f"the checkpoint is a {model.kind} model and takes {need}")
    idx2 = None
    if path2 is not None:
        if not Path(path2).exists():
            raise InputImageError(f"--input2 {path2}: no such file")
        grid2, _ = reference_grid(path2)
        check_alignable(path2, grid2, grid, path)
        names2 = [name for _, _, name in band_table(path2)]
        if model.bands is not None:  # each date's own positions of the named bands
            idx2 = resolve_band_indices(model.bands, names2, path2)
        elif len(names2) != count:
            raise DensekitError(f"--input2 {path2}: {len(names2)} bands, --input has {count}")
    raster = RasterInput(path, path2, grid, idx, idx2)
    _check_statistics(model, raster)
    return raster


def _check_statistics(model: TileModel, raster: RasterInput, grid: int = 5, side: int = 64) -> None:
    """Warn when the input's band means sit far outside what the model was trained on (another
    unit or scaling, e.g. reflectance x 10000 against 8-bit data). Reads ``grid x grid`` small
    windows spread over the raster: the cost does not depend on its size."""
    task = model.task
    if not hasattr(task, "input_mean"):  # a model without recorded statistics
        return
    w, h = raster.grid.width, raster.grid.height
    samples = []
    with RasterReaders() as readers:
        for fy in np.linspace(0, 1, grid):
            for fx in np.linspace(0, 1, grid):
                col, row = int(fx * max(w - side, 0)), int(fy * max(h - side, 0))
                samples.append(raster.read(readers, col, row, side)[0])
    x = np.stack(samples).transpose(1, 0, 2, 3).reshape(len(samples[0]), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nodata band: no mean
        means = np.nanmean(x.astype(np.float64), axis=1)
    mean = task.input_mean.flatten().cpu().numpy()
    std = task.input_std.flatten().cpu().numpy()
    z = (means * task.input_scale - mean) / std
    far = [(i, float(v)) for i, v in enumerate(z) if np.isfinite(v) and abs(v) > 4]
    if far:
        bands = ", ".join(f"band {i + 1} at {v:+.1f} std" for i, v in far)
        warnings.warn(
            f"--input {raster.path}: band means far from the checkpoint's training statistics "
            f"({bands}); check the bands and units the model was trained on",
            UserWarning,
            stacklevel=3,
        )


# -- writing ---------------------------------------------------------------------------------
def _profile(grid: Grid, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if grid.georeferenced:
        profile.update(crs=grid.crs, transform=grid.transform)
    return profile


def _class_metadata(names: Sequence[str]) -> dict[str, str]:
    tags = {"CLASS_NAMES": json.dumps(list(names))}
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    return tags


def _colormap(n: int) -> dict[int, tuple[int, int, int, int]]:
    cmap = {i: (*PALETTE[i % len(PALETTE)], 255) for i in range(n)}
    cmap[CLASS_NODATA] = (0, 0, 0, 0)
    return cmap


def _vrt(parts: list[tuple[Path, int]], template: Path, grid: Grid, dest: Path) -> None:
    """A VRT mosaic of row parts ``(file, first row)`` with the template's band metadata."""
    with rasterio.open(template) as t:
        count, dtype, nodata = t.count, t.dtypes[0], t.nodata
        tags = t.tags()
        descriptions = t.descriptions
        cmap = t.colormap(1) if t.colorinterp[0].name == "palette" else None
        crs_wkt = t.crs.to_wkt() if t.crs else None
        gt = t.transform.to_gdal()
    gdal_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">']
    if crs_wkt:
        lines.append(f"  <SRS>{escape(crs_wkt)}</SRS>")
        lines.append("  <GeoTransform>" + ", ".join(repr(v) for v in gt) + "</GeoTransform>")
    if tags:
        lines.append("  <Metadata>")
        for k, v in tags.items():
            lines.append(f"    <MDI key={quoteattr(k)}>{escape(v)}</MDI>")
        lines.append("  </Metadata>")
    for b in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">')
        if descriptions[b - 1]:
            lines.append(f"    <Description>{escape(descriptions[b - 1])}</Description>")
        nd = "nan" if nodata is not None and math.isnan(nodata) else repr(nodata)
        lines.append(f"    <NoDataValue>{nd}</NoDataValue>")
        if cmap is not None and b == 1:
            lines.append("    <ColorInterp>Palette</ColorInterp>")
            lines.append("    <ColorTable>")
            for i in range(256):
                c = cmap.get(i, (0, 0, 0, 0))
                lines.append(f'      <Entry c1="{c[0]}" c2="{c[1]}" c3="{c[2]}" c4="{c[3]}"/>')
            lines.append("    </ColorTable>")
        for path, row0 in parts:
            with rasterio.open(path) as p:
                h = p.height
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{h}"/>',
                f'      <DstRect xOff="0" yOff="{row0}" xSize="{grid.width}" ySize="{h}"/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    dest.write_text("\n".join(lines))


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Plan:
    """Tile grid and strip ranges of one run."""

    tile: int
    step: int
    cols: list[int]
    rows: list[int]
    width: int
    height: int

    def strip_rows(self, s: int) -> tuple[int, int]:
        """Output rows ``[a, b)`` that are final after strip ``s``."""
        a = self.rows[s]
        b = self.height if s == len(self.rows) - 1 else self.rows[s + 1]
        return a, min(b, self.height)

    def split(self, rank: int, world: int) -> tuple[int, int]:
        """Contiguous strips ``[first, last)`` of ``rank``."""
        n = len(self.rows)
        return rank * n // world, (rank + 1) * n // world


def make_plan(grid: Grid, opts: TileOptions, patch: int, path: str) -> Plan:
    tile = opts.tile - opts.tile % patch
    if tile < patch:
        raise DensekitError(f"--tile {opts.tile}: smaller than the backbone's patch {patch}")
    if not 0 <= opts.overlap < tile / 2:
        raise DensekitError(f"--overlap {opts.overlap}: must be >= 0 and less than half of {tile}")
    if grid.width < tile or grid.height < tile:
        raise DensekitError(
            f"--input {path}: {grid.width}x{grid.height} is smaller than one tile ({tile}x{tile}); "
            f"use --tile {max(patch, min(grid.width, grid.height) // patch * patch)} or less"
        )
    step = tile - opts.overlap
    return Plan(
        tile,
        step,
        tile_positions(grid.width, tile, step),
        tile_positions(grid.height, tile, step),
        grid.width,
        grid.height,
    )


def _batches(
    raster: RasterInput, plan: Plan, strips: range, batch_size: int, depth: int
) -> Iterator[tuple[int, list[int], list[torch.Tensor], np.ndarray]]:
    """``(strip, tile columns, inputs, valid (B, T, T))`` read by a background thread."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with RasterReaders() as readers:
                for s in strips:
                    row = plan.rows[s]
                    for i in range(0, len(plan.cols), batch_size):
                        cols = plan.cols[i : i + batch_size]
                        dates = [raster.read(readers, c, row, plan.tile) for c in cols]
                        valid = np.stack([np.isfinite(np.stack(d)).all(axis=(0, 1)) for d in dates])
                        inputs = [
                            torch.from_numpy(np.stack([d[k] for d in dates]))
                            for k in range(len(dates[0]))
                        ]
                        if not put((s, cols, inputs, valid)):
                            return
            put(None)
        except BaseException as e:  # surfaced in the consumer
            put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _StripWriter:
    """Writes each finished strip of one process to its own files, then records the progress.

    Every strip goes to new files (``map-<strip>.tif``, ``probs-<strip>.tif``) that are closed
    before the progress record names the strip done, so a kill can only lose the strip being
    written, never damage a finished one; rank 0 mosaics the strips at the end.
    """

    def __init__(
        self,
        folder: Path,
        rank: int,
        grid: Grid,
        model: TileModel,
        probabilities: bool,
        signature: dict[str, Any],
        resume: bool,
    ) -> None:
        self.folder = folder
        self.grid = grid
        self.model = model
        self.probabilities = probabilities and model.kind != "depth"
        self.progress_file = folder / f"progress-{rank}.json"
        self.signature = signature
        self.done = 0
        if resume and self.progress_file.is_file():
            state = json.loads(self.progress_file.read_text())
            if state["signature"] != signature:
                changed = sorted(
                    k for k in signature if state["signature"].get(k) != signature.get(k)
                )
                raise DensekitError(
                    f"--resume: the unfinished run in {folder} used other settings ({changed}); "
                    "run without --resume to start again"
                )
            self.done = int(state["strips_done"])

    @contextlib.contextmanager
    def strip(self, s: int, rows: tuple[int, int]) -> Iterator[tuple[Any, Any]]:
        """The open files of strip ``s`` (map, probabilities or None), closed afterwards."""
        a, b = rows
        g = self.grid
        part = Grid(g.crs, g.transform @ Affine.translation(0, a), g.width, b - a)
        model = self.model
        if model.kind == "depth":
            profile = _profile(part, 1, "float32", float("nan"))
        else:
            profile = _profile(part, 1, "uint8", CLASS_NODATA)
        with contextlib.ExitStack() as stack:
            dst = stack.enter_context(
                rasterio.open(self.folder / f"map-{s:06d}.tif", "w", **profile)
            )
            dst.set_band_description(1, "depth" if model.kind == "depth" else "class")
            if model.kind != "depth":
                dst.update_tags(**_class_metadata(model.class_names))
                dst.write_colormap(1, _colormap(len(model.class_names)))
            probs = None
            if self.probabilities:
                profile = _profile(part, model.channels, "float32", float("nan"))
                probs = stack.enter_context(
                    rasterio.open(self.folder / f"probs-{s:06d}.tif", "w", **profile)
                )
                names = ["change"] if model.channels == 1 else model.class_names
                for band, name in enumerate(names, start=1):
                    probs.set_band_description(band, f"p_{name}")
            yield dst, probs

    def strip_done(self, count: int) -> None:
        """Record ``count`` finished strips (their files are closed)."""
        state = {"signature": self.signature, "strips_done": count}
        tmp = self.progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.progress_file)


def _accumulate(
    acc: torch.Tensor,
    valid: torch.Tensor,
    out: torch.Tensor,
    ok: np.ndarray,
    cols: list[int],
    window: torch.Tensor,
) -> None:
    t = out.shape[-1]
    for k, c in enumerate(cols):
        acc[:, :, c : c + t] += out[k] * window
        valid[:, c : c + t] |= torch.from_numpy(ok[k])


def _run_part(
    model: TileModel,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    writer: _StripWriter,
    first: int,
    last: int,
    bar: Any,
) -> dict[str, float]:
    """Strips ``[first, last)``: blend, write finished rows, record progress."""
    t = plan.tile
    width = plan.cols[-1] + t
    k = model.channels
    acc = torch.zeros(k, t, width)
    w1 = hann_window(t)
    # The weights are separable and the tiles form a full grid, so the summed weight at (r, c)
    # is (sum over tile rows covering r) x (sum over tile columns covering c): two 1-D tables.
    wrows = torch.zeros(plan.rows[-1] + t)
    for r in plan.rows:
        wrows[r : r + t] += w1
    wcols = torch.zeros(width)
    for c in plan.cols:
        wcols[c : c + t] += w1
    wsum = (wrows, wcols[: plan.width])
    valid = torch.zeros(t, width, dtype=torch.bool)
    window = w1[:, None] * w1[None, :]
    start = first + writer.done
    seed = start - 1 if start > 0 else None  # its tiles overlap the first rows of ``start``
    strips = range(seed if seed is not None else start, last)
    timings = {"model_s": 0.0, "write_s": 0.0}
    current = strips.start if len(strips) else last
    processed = 0
    for s, cols, inputs, ok in _batches(raster, plan, strips, opts.batch_size, opts.prefetch):
        if s != current:  # strip ``current`` is complete
            processed += _finish_strip(
                model, plan, writer, acc, wsum, valid, current, seed, first, timings
            )
            if opts.stop_after_strips is not None and processed >= opts.stop_after_strips:
                raise StoppedEarly(f"stopped after {processed} strips (resume to continue)")
            current = s
        tic = time.perf_counter()
        out = model(*inputs).cpu()
        timings["model_s"] += time.perf_counter() - tic
        _accumulate(acc, valid, out, ok, cols, window)
        if bar is not None and s != seed:  # the seed strip was counted by the earlier run
            bar.update(len(cols))
    if len(strips):
        processed += _finish_strip(
            model, plan, writer, acc, wsum, valid, current, seed, first, timings
        )
    return timings


def _finish_strip(
    model: TileModel,
    plan: Plan,
    writer: _StripWriter,
    acc: torch.Tensor,
    wsum: tuple[torch.Tensor, torch.Tensor],
    valid: torch.Tensor,
    s: int,
    seed: int | None,
    first: int,
    timings: dict[str, float],
) -> int:
    """Write strip ``s``'s final rows (not for the seed strip), then shift the buffers up."""
    a, b = plan.strip_rows(s)
    n = b - a
    wrote = 0
    if s != seed:
        tic = time.perf_counter()
        with writer.strip(s, (a, b)) as (dst, probs):
            # column blocks: the temporaries (weights, blended values, argmax) stay small
            for c0 in range(0, plan.width, FINISH_COLUMNS):
                c1 = min(c0 + FINISH_COLUMNS, plan.width)
                weight = wsum[0][a:b, None] * wsum[1][None, c0:c1]
                blended = (acc[:, :n, c0:c1] / weight).numpy()
                ok = valid[:n, c0:c1].numpy()
                values = model.finish(blended)
                values[~ok] = np.nan if model.kind == "depth" else CLASS_NODATA
                window = Window(c0, 0, c1 - c0, n)
                dst.write(values, 1, window=window)
                if probs is not None:
                    blended = np.where(ok[None], blended, np.float32(np.nan))
                    probs.write(blended.astype(np.float32), window=window)
        writer.strip_done(s - first + 1)
        timings["write_s"] += time.perf_counter() - tic
        wrote = 1
    step = plan.step
    for buf in (acc, valid):
        view = buf if buf.ndim == 3 else buf[None]
        view[:, : plan.tile - step] = view[:, step:].clone()
        view[:, plan.tile - step :] = 0
    return wrote


def _signature(model: TileModel, raster: RasterInput, plan: Plan, opts: TileOptions) -> dict:
    ckpt = model.checkpoint
    return {
        "checkpoint": ckpt,
        "checkpoint_sha256": sha256_file(ckpt) if ckpt else None,
        "input": str(Path(raster.path).resolve()),
        "input2": str(Path(raster.path2).resolve()) if raster.path2 else None,
        "tile": plan.tile,
        "overlap": opts.overlap,
        "batch_size": opts.batch_size,
        "probabilities": opts.probabilities,
        "precision": opts.precision,
        "world_size": _rank_world()[1],
    }


def tile_raster(
    model: TileModel,
    input: str | Path,
    output: str | Path,
    input2: str | Path | None = None,
    options: TileOptions | None = None,
) -> dict[str, Any]:
    """Apply ``model`` to one raster (two for change detection); returns the sidecar record."""
    opts = options or TileOptions()
    tic = time.perf_counter()
    output = Path(output)
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise DensekitError(f"--output {output}: give a .tif path")
    if not output.parent.is_dir():
        raise DensekitError(f"--output {output}: the folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise DensekitError(f"--output {output}: the folder {output.parent} is not writable")
    if output.is_dir() or (output.exists() and not os.access(output, os.W_OK)):
        raise DensekitError(f"--output {output}: exists and is a folder or not writable")
    raster = open_input(model, str(input), None if input2 is None else str(input2))
    plan = make_plan(raster.grid, opts, model.patch, str(input))
    rank, world = _rank_world()
    own_group = _init_distributed(world)
    try:
        return _tile_distributed(model, raster, plan, opts, output, rank, world, tic)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _agree(status: int) -> int:
    """The largest status of all processes (0 ok, 1 stopped early, 2 failed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return status
    t = torch.tensor([status])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _tile_distributed(
    model: TileModel,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    output: Path,
    rank: int,
    world: int,
    tic: float,
) -> dict[str, Any]:
    """The run of one process; every process learns whether all others succeeded."""
    folder = output.with_name(output.name + ".partial")
    signature = _signature(model, raster, plan, opts)
    if rank == 0 and folder.exists() and not opts.resume:
        shutil.rmtree(folder)
    _barrier()
    folder.mkdir(exist_ok=True)
    first, last = plan.split(rank, world)
    error: BaseException | None = None
    timings: dict[str, float] = {}
    with rasterio.Env(GDAL_CACHEMAX=opts.gdal_cache_mb * 1024 * 1024, GDAL_NUM_THREADS=1):
        bar = None
        try:
            writer = _StripWriter(
                folder, rank, raster.grid, model, opts.probabilities, signature, opts.resume
            )
            if opts.progress and rank == 0:
                bar = tqdm(
                    total=(last - first) * len(plan.cols),
                    initial=writer.done * len(plan.cols),
                    unit="tile",
                    desc=Path(raster.path).name,
                    dynamic_ncols=True,
                )
            timings = _run_part(model, raster, plan, opts, writer, first, last, bar)
        except BaseException as e:  # re-raised below, once every process knows
            error = e
        finally:
            if bar is not None:
                bar.close()
        status = _agree(0 if error is None else 1 if isinstance(error, StoppedEarly) else 2)
        if error is not None:
            raise error
        if status == 1:
            raise StoppedEarly("another process stopped early (resume to continue)")
        if status == 2:
            raise DensekitError("another process of this run failed; see its error")
        record: dict[str, Any] = {}
        if rank == 0:
            try:
                record = _assemble(model, raster, plan, opts, output, folder, signature)
                record["timings"] = {
                    **{k: round(v, 3) for k, v in timings.items()},
                    "total_s": round(time.perf_counter() - tic, 3),
                }
                mpx = plan.width * plan.height / 1e6
                record["megapixels_per_s"] = round(mpx / record["timings"]["total_s"], 4)
                sidecar = output.with_name(output.stem + ".json")
                tmp = sidecar.with_name("." + sidecar.name + ".partial")
                tmp.write_text(json.dumps(record, indent=1))
                os.replace(tmp, sidecar)
                shutil.rmtree(folder)
            except BaseException as e:
                error = e
        if _agree(0 if error is None else 2) and error is None:
            raise DensekitError("rank 0 failed to assemble the output; see its error")
        if error is not None:
            raise error
    return record


def _assemble(
    model: TileModel,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    output: Path,
    folder: Path,
    signature: dict[str, Any],
) -> dict[str, Any]:
    """Rank 0: the COG(s) from every strip's file, moved into place together."""
    targets = {"map": output}
    if opts.probabilities and model.kind != "depth":
        targets["probs"] = output.with_name(output.stem + "_probs.tif")
    tmps: dict[Path, Path] = {}
    try:
        for name, dest in targets.items():
            parts = [(folder / f"{name}-{s:06d}.tif", r) for s, r in enumerate(plan.rows)]
            missing = [p.name for p, _ in parts if not p.is_file()]
            if missing:
                raise DensekitError(f"{folder}: strip files {missing[:3]} are missing")
            vrt = folder / f"{name}.vrt"
            _vrt(parts, parts[0][0], raster.grid, vrt)
            tmp = dest.with_name(f".{dest.stem}.partial-{os.getpid()}.tif")
            resampling = "NEAREST" if name == "map" and model.kind != "depth" else "AVERAGE"
            rasterio.shutil.copy(
                vrt,
                tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
                NUM_THREADS="ALL_CPUS",
            )
            tmps[dest] = tmp
        for dest, tmp in tmps.items():
            os.replace(tmp, dest)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()
    task = model.task
    backbone = task.backbone
    return {
        "densekit": __version__,
        "outputs": [str(p) for p in targets.values()],
        **signature,
        "kind": model.kind,
        "classes": model.class_names,
        "size": [plan.width, plan.height],
        "tiles": len(plan.cols) * len(plan.rows),
        "strips": len(plan.rows),
        "blending": "sin^2(pi (i + 0.5) / tile) per axis",
        "backbone": None
        if backbone is None
        else backbone.weights.as_dict() | {"name": backbone.name},
        "options": asdict(opts),
    }


def tile(
    checkpoint: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    inputs2: str | Path | Sequence[str | Path] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Tiled inference for notebooks: one checkpoint, one or many rasters (loaded once).

    ``inputs`` is a file, a folder of rasters or a list; with several inputs ``output`` is a
    folder that receives ``<input stem>.tif`` each. ``inputs2`` gives the second dates of change
    detection, paired by position (or by file name for folders). ``options`` are
    :class:`TileOptions` fields.
    """
    opts = TileOptions(**options)
    device = opts.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model = load_tile_model(checkpoint, device, opts.precision)
    firsts = _expand(inputs, "--input")
    seconds: list[str | None] = (
        list(_expand(inputs2, "--input2")) if inputs2 is not None else [None] * len(firsts)
    )
    if inputs2 is not None and Path(str(inputs)).is_dir() and Path(str(inputs2)).is_dir():
        by_stem = {Path(str(p)).stem: str(p) for p in seconds}
        unpaired = [p for p in firsts if Path(p).stem not in by_stem]
        extra = sorted(set(by_stem) - {Path(p).stem for p in firsts})
        if unpaired or extra:
            raise DensekitError(
                f"--input {inputs} and --input2 {inputs2} pair by file name; without a partner: "
                f"{[Path(p).name for p in unpaired][:5]} / {extra[:5]}"
            )
        seconds = [by_stem[Path(p).stem] for p in firsts]
    if len(seconds) != len(firsts):
        raise DensekitError(
            f"--input names {len(firsts)} rasters, --input2 {len(seconds)}; they pair by position"
        )
    out = Path(output)
    if len(firsts) > 1 or Path(str(inputs)).is_dir():
        out.mkdir(parents=True, exist_ok=True)
        dests = [out / (Path(p).stem + ".tif") for p in firsts]
    else:
        dests = [out]
    return [
        tile_raster(model, a, d, b, opts) for a, b, d in zip(firsts, seconds, dests, strict=True)
    ]


def _expand(spec: str | Path | Sequence[str | Path], flag: str) -> list[str]:
    if isinstance(spec, str | Path):
        path = Path(spec)
        if path.is_dir():
            files = sorted(
                str(p) for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".vrt")
            )
            if not files:
                raise InputImageError(f"{flag} {path}: the folder holds no .tif/.vrt raster")
            return files
        return [str(path)]
    return [str(p) for p in spec]
