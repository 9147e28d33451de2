"""The tiled run: tile grid, strips, blending, resume and the split between processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from tqdm import tqdm

from densekit.backbones.checkpoint import sha256_file
from densekit.data.datasets import RasterReaders
from densekit.data.grids import Grid
from densekit.errors import DensekitError, InputImageError
from densekit.tiling.blend import StripSums, weight_tables
from densekit.tiling.model import RasterInput, TileModel, load_tile_model, open_input
from densekit.tiling.output import CLASS_NODATA, _assemble, _StripWriter


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


class _StripOutput:
    """Normalises and writes the finished columns of strip ``s`` (nothing for a seed strip)."""

    def __init__(
        self,
        model: TileModel,
        plan: Plan,
        writer: _StripWriter,
        weights: tuple[np.ndarray, np.ndarray],
        s: int,
        write: bool,
        timings: dict[str, float],
    ) -> None:
        self.model, self.plan, self.weights, self.timings = model, plan, weights, timings
        self.rows = plan.strip_rows(s)
        self.files = contextlib.ExitStack()
        self.dst: Any = None
        self.probs: Any = None
        if write:
            self.dst, self.probs = self.files.enter_context(writer.strip(s, self.rows))

    def __call__(self, c0: int, c1: int, sums: np.ndarray, valid: np.ndarray) -> None:
        """Padded columns ``[c0, c1)`` are final: their first rows go to the strip's files."""
        c1 = min(c1, self.plan.width)
        if self.dst is None or c1 <= c0:
            return
        tic = time.perf_counter()
        a, b = self.rows
        n = b - a
        model = self.model
        weight = self.weights[0][a:b, None] * self.weights[1][None, c0:c1]
        blended = sums[:, :n, : c1 - c0] / weight
        ok = valid[:n, : c1 - c0]
        values = model.finish(blended)
        if not ok.all():
            values[~ok] = np.nan if model.kind == "depth" else CLASS_NODATA
        window = Window(c0, 0, c1 - c0, n)
        self.dst.write(values, 1, window=window)
        if self.probs is not None:
            blended = np.where(ok[None], blended, np.float32(np.nan))
            self.probs.write(blended.astype(np.float32), window=window)
        self.timings["write_s"] += time.perf_counter() - tic

    def close(self) -> None:
        """Close the strip's files (GDAL writes what it still holds)."""
        tic = time.perf_counter()
        self.files.close()
        if self.dst is not None:
            self.timings["write_s"] += time.perf_counter() - tic


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
    """Strips ``[first, last)``: blend, write finished columns, record finished strips."""
    sums = StripSums(plan, model.channels)
    weights = weight_tables(plan)
    start = first + writer.done
    seed = start - 1 if start > 0 else None  # its tiles overlap the first rows of ``start``
    strips = range(seed if seed is not None else start, last)
    timings = {"model_s": 0.0, "write_s": 0.0}
    processed = 0
    strip: _StripOutput | None = None
    current = -1
    try:
        for s, cols, inputs, ok in _batches(raster, plan, strips, opts.batch_size, opts.prefetch):
            if s != current:
                if strip is not None:  # strip ``current`` is complete
                    processed += _end_strip(sums, strip, writer, current, seed, first)
                    if opts.stop_after_strips is not None and processed >= opts.stop_after_strips:
                        raise StoppedEarly(f"stopped after {processed} strips (resume to continue)")
                current = s
                strip = _StripOutput(model, plan, writer, weights, s, s != seed, timings)
                sums.start(strip)
            tic = time.perf_counter()
            out = model(*inputs).cpu().numpy()
            timings["model_s"] += time.perf_counter() - tic
            for k, c in enumerate(cols):
                sums.add(c, out[k], ok[k])
            if bar is not None and s != seed:  # the seed strip was counted by the earlier run
                bar.update(len(cols))
        if strip is not None:
            processed += _end_strip(sums, strip, writer, current, seed, first)
    finally:
        if strip is not None:
            strip.close()
    return timings


def _end_strip(
    sums: StripSums,
    strip: _StripOutput,
    writer: _StripWriter,
    s: int,
    seed: int | None,
    first: int,
) -> int:
    """Finish strip ``s``'s last columns, close its files and record it (not the seed strip)."""
    sums.end()
    strip.close()
    if s == seed:
        return 0
    writer.strip_done(s - first + 1)
    return 1


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
    if model.upscale != 1 and opts.progress and rank == 0:
        tqdm.write(model.scaling_note(plan.tile), file=sys.stderr)
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
