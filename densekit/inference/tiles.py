"""Tiled inference on rasters of any size: ``densekit tile`` and :func:`tile`.

The GeoTIFF plan over :func:`~densekit.inference.runner.run`:

* the plan: tiles on a regular grid, processed one strip (a row of tiles) at a time, each strip
  left to right (:mod:`densekit.inference.plan`);
* the reader: the tiles of each strip, nodata as NaN, read by a background thread while the
  model runs (:mod:`densekit.inference.rasters`);
* the merger (:class:`StripMerger`): each tile's activated output (probabilities, or values)
  blended with a smooth window into the strip's running sums (:mod:`densekit.inference.blend`);
  once a tile at column ``c`` is added, the strip's columns left of ``c`` have every tile of the
  strip: their first ``tile - overlap`` rows are final, finished into the map (argmax, threshold
  or values, as the model's :class:`~densekit.models.OutputSpec` says) and written in column
  blocks; their last ``overlap`` rows are kept to start the next strip's sums. The sums held are
  ``(channels + 1) x tile x (2048 + tile)`` floats plus that ``overlap x width`` band, whatever
  the raster's size. Pixels that are nodata in the input (any band, either date) are nodata in
  the output;
* the sink: each strip's files, then the Cloud-Optimised GeoTIFF(s) with overviews
  (:mod:`densekit.inference.strips`).

``resume``: the partial files and a progress record (``<output>.partial/``) survive a killed run;
a resumed run recomputes the strip before the first unfinished one (for the overlap) and
continues; the output has the same bytes as an uninterrupted run. Several processes
(``torchrun``; ``RANK``/``WORLD_SIZE`` from the environment) split the strips into contiguous
ranges; each writes its own part, rank 0 assembles the output once all are done; the output is
the same as from one process. A JSON sidecar ``<output stem>.json`` records the parameters, the
checkpoint's and the backbone weights' sha256 and the timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from densekit.errors import DensekitError, InputImageError
from densekit.inference.blend import StripSums, weight_tables
from densekit.inference.plan import Plan, TileOptions, make_plan
from densekit.inference.rasters import RasterInput, open_input, strip_batches
from densekit.inference.runner import Batch, read_ahead, run
from densekit.inference.safety import check_not_an_input, input_fingerprint, output_lock
from densekit.inference.strips import StripWriter, assemble
from densekit.inference.trained import Trained, load_trained
from densekit.io import as_output_error
from densekit.progress import progress_bar
from densekit.version import __version__


class StoppedEarly(Exception):  # noqa: N818 - not an error: the user asked for it
    """Raised when ``stop_after_strips`` ends a run early (the partial file is kept)."""


class StripMerger:
    """Blends each batch of tiles into the strip's sums and writes the finished columns.

    A strip's outputs are written (and the strip recorded as done) when the first batch of the
    next strip arrives, or at the end; the ``seed`` strip (the one before a resumed run's first)
    only fills the sums its overlap rows pass on.
    """

    def __init__(
        self,
        model: Trained,
        plan: Plan,
        writer: StripWriter,
        first: int,
        seed: int | None,
        stop_after: int | None,
        source: str = "the input",
    ) -> None:
        self.output = model.output
        self.source = source
        self.plan = plan
        self.writer = writer
        self.first = first
        self.seed = seed
        self.stop_after = stop_after
        self.sums = StripSums(plan, model.output.channels)
        self.weights = weight_tables(plan)
        self.timings = {"write_s": 0.0}
        self.processed = 0
        self.current = -1
        self.files = contextlib.ExitStack()
        self.dst: Any = None
        self.probs: Any = None

    def aggregate(self, outputs: torch.Tensor, batch: Batch) -> None:
        s, cols = batch.where
        if s != self.current:
            if self.current >= 0:
                self._end_strip()
                if self.stop_after is not None and self.processed >= self.stop_after:
                    raise StoppedEarly(
                        f"stopped after {self.processed} strips (resume to continue)"
                    )
            self.current = s
            if s != self.seed:
                rows = self.plan.strip_rows(s)
                self.dst, self.probs = self.files.enter_context(self.writer.strip(s, rows))
            self.sums.start(self._emit)
        out = self.output.activate(outputs).cpu().numpy()
        valid = (
            batch.valid if batch.valid is not None else np.ones(out.shape[:1] + out.shape[2:], bool)
        )
        self._check_finite(out, valid, s, cols)
        for k, c in enumerate(cols):
            self.sums.add(c, out[k], valid[k])

    def _check_finite(self, out: np.ndarray, valid: np.ndarray, s: int, cols: list[int]) -> None:
        """A NaN or infinite output on a valid pixel is an error naming the first such tile
        (NaN weights would otherwise give an all-background map without a word)."""
        bad = ~np.isfinite(out).all(axis=1) & valid
        if not bad.any():
            return
        k = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
        raise DensekitError(
            f"input {self.source}: the model's output is NaN or infinite on {int(bad[k].sum())} "
            f"valid pixel(s) of the tile at column {cols[k]}, row {self.plan.rows[s]}; no map is "
            "written. Check the checkpoint and the backbone weights (non-finite values?)"
        )

    def finalize(self) -> None:
        if self.current >= 0:
            self._end_strip()

    def close(self) -> None:
        """Close the open strip's files (after a failure)."""
        self.files.close()

    def _end_strip(self) -> None:
        """Finish the strip's last columns, close its files and record it (not the seed)."""
        self.sums.end()
        tic = time.perf_counter()
        self.files.close()
        self.timings["write_s"] += time.perf_counter() - tic
        s = self.current
        self.dst = self.probs = None
        if s == self.seed:
            return
        self.writer.strip_done(s - self.first + 1)
        self.processed += 1

    def _emit(self, c0: int, c1: int, sums: np.ndarray, valid: np.ndarray) -> None:
        """Padded columns ``[c0, c1)`` are final: their first rows go to the strip's files."""
        c1 = min(c1, self.plan.width)
        if self.dst is None or c1 <= c0:
            return
        tic = time.perf_counter()
        a, b = self.plan.strip_rows(self.current)
        n = b - a
        weight = self.weights[0][a:b, None] * self.weights[1][None, c0:c1]
        blended = sums[:, :n, : c1 - c0] / weight
        ok = valid[:n, : c1 - c0]
        values = self.output.finish(blended)
        if not ok.all():
            values[~ok] = self.output.nodata
        window = Window(c0, 0, c1 - c0, n)
        self.dst.write(values, 1, window=window)
        if self.probs is not None:
            blended = np.where(ok[None], blended, np.float32(np.nan))
            self.probs.write(blended.astype(np.float32), window=window)
        self.timings["write_s"] += time.perf_counter() - tic


# -- one raster ------------------------------------------------------------------------------
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


def _agree(status: int) -> int:
    """The largest status of all processes (0 ok, 1 stopped early, 2 failed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return status
    t = torch.tensor([status])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _signature(model: Trained, raster: RasterInput, plan: Plan, opts: TileOptions) -> dict:
    """What must not change between a run and its resumption: the settings, and each input's
    size, modification time and first strip (:func:`input_fingerprint`)."""
    rows = plan.tile
    return {
        "input_file": input_fingerprint(raster.path, rows, raster.band_idx),
        "input2_file": (
            None
            if raster.path2 is None
            else input_fingerprint(raster.path2, rows, raster.band_idx2)
        ),
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": model.checkpoint_sha256,
        "input": str(Path(raster.path).resolve()),
        "input2": str(Path(raster.path2).resolve()) if raster.path2 else None,
        "tile": plan.tile,
        "overlap": opts.overlap,
        "batch_size": opts.batch_size,
        "probabilities": opts.probabilities,
        "precision": opts.precision,
        "bands": None if opts.bands is None else list(opts.bands),
        "world_size": _rank_world()[1],
    }


def check_output_path(output: Path) -> None:
    """The output is a .tif in a writable folder, not a folder or a read-only file."""
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise DensekitError(f"output {output}: give a .tif path")
    if not output.parent.is_dir():
        raise DensekitError(f"output {output}: the folder {output.parent} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise DensekitError(f"output {output}: the folder {output.parent} is not writable")
    if output.is_dir() or (output.exists() and not os.access(output, os.W_OK)):
        raise DensekitError(f"output {output}: exists and is a folder or not writable")


def tile_raster(
    model: Trained,
    input: str | Path,
    output: str | Path,
    input2: str | Path | None = None,
    options: TileOptions | None = None,
) -> dict[str, Any]:
    """Apply ``model`` to one raster (two for change detection); returns the sidecar record
    (empty on ranks other than 0)."""
    opts = options or TileOptions()
    tic = time.perf_counter()
    output = Path(output)
    check_output_path(output)
    outputs = {"output": output}
    if opts.probabilities and model.output.probability_names:
        outputs["probabilities output"] = output.with_name(output.stem + "_probs.tif")
    check_not_an_input(
        outputs, {"input": str(input), "input2": None if input2 is None else str(input2)}
    )
    raster = open_input(model, str(input), None if input2 is None else str(input2), opts.bands)
    plan = make_plan(raster.grid, opts, model.patch, str(input))
    rank, world = _rank_world()
    if model.upscale != 1 and opts.progress and rank == 0:
        print(model.scaling_note(plan.tile), file=sys.stderr)
    own_group = _init_distributed(world)
    try:
        return _tile_distributed(model, raster, plan, opts, output, rank, world, tic)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_part(
    model: Trained,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    writer: StripWriter,
    first: int,
    last: int,
    bar: Any,
) -> dict[str, float]:
    """Strips ``[first, last)``: blend, write finished columns, record finished strips."""
    start = first + writer.done
    seed = start - 1 if start > 0 else None  # its tiles overlap the first rows of ``start``
    strips = range(seed if seed is not None else start, last)
    merger = StripMerger(model, plan, writer, first, seed, opts.stop_after_strips, raster.path)
    batches = read_ahead(
        lambda: strip_batches(raster, plan, strips, opts.batch_size, seed), opts.prefetch
    )
    with contextlib.closing(batches), contextlib.closing(merger):
        timings = run(model, batches, merger, opts.precision, bar)
    return {**timings, **merger.timings}


def _tile_distributed(
    model: Trained,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    output: Path,
    rank: int,
    world: int,
    tic: float,
) -> dict[str, Any]:
    """The run of one process; every process learns whether all others succeeded. Rank 0
    holds the output's lock for the whole run."""
    with contextlib.ExitStack() as stack:
        refused: DensekitError | None = None
        if rank == 0:
            try:
                stack.enter_context(output_lock(output))
            except DensekitError as e:
                refused = e
        if _agree(0 if refused is None else 2):  # every process stops, none waits
            raise refused or DensekitError(f"output {output}: rank 0 could not lock it")
        return _tile_locked(model, raster, plan, opts, output, rank, world, tic)


def _tile_locked(
    model: Trained,
    raster: RasterInput,
    plan: Plan,
    opts: TileOptions,
    output: Path,
    rank: int,
    world: int,
    tic: float,
) -> dict[str, Any]:
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
            writer = StripWriter(
                folder,
                rank,
                raster.grid,
                model.output,
                opts.probabilities,
                signature,
                opts.resume,
            )
            if opts.progress and rank == 0:
                bar = progress_bar(
                    (last - first) * len(plan.cols),
                    desc=Path(raster.path).name,
                    unit="tile",
                    prefix="densekit tile: ",
                    initial=writer.done * len(plan.cols),
                )
            timings = _run_part(model, raster, plan, opts, writer, first, last, bar)
        except BaseException as e:  # re-raised below, once every process knows
            error = e
        finally:
            if bar is not None:
                bar.close()
        status = _agree(0 if error is None else 1 if isinstance(error, StoppedEarly) else 2)
        if isinstance(error, OSError):  # reads raise InputImageError: this is a write
            raise as_output_error(error, _written(error, output, folder)) from error
        if error is not None:
            raise error
        if status == 1:
            raise StoppedEarly("another process stopped early (resume to continue)")
        if status == 2:
            raise DensekitError("another process of this run failed; see its error")
        record: dict[str, Any] = {}
        if rank == 0:
            try:
                outputs = assemble(
                    model.output, raster.grid, plan, opts.probabilities, output, folder
                )
                record = _sidecar(model, plan, opts, outputs, signature)
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
        if isinstance(error, OSError):
            raise as_output_error(error, _written(error, output, folder)) from error
        if error is not None:
            raise error
    return record


def _written(error: OSError, output: Path, folder: Path) -> Path:
    """The output a failed write concerns: the file the error names, unless it is one of the
    partial run's files (then the output they are for)."""
    named = Path(error.filename) if isinstance(error.filename, str) else None
    if named is None or named.parent == folder:
        return output
    return named


def _sidecar(
    model: Trained,
    plan: Plan,
    opts: TileOptions,
    outputs: list[Path],
    signature: dict[str, Any],
) -> dict[str, Any]:
    """The sidecar record of a finished run (without the timings)."""
    spec = model.output
    return {
        "densekit": __version__,
        "outputs": [str(p) for p in outputs],
        **signature,
        "kind": spec.task,
        "classes": list(spec.class_names),
        "size": [plan.width, plan.height],
        "tiles": plan.tiles,
        "strips": len(plan.rows),
        "blending": "sin^2(pi (i + 0.5) / tile) per axis",
        "backbone": model.backbone,
        # with input scaling the backbone sees each tile resized: its memory and time follow
        # that side (tokens grow with its square), not the tile's
        "backbone_tile": None if model.backbone is None else model.backbone_tile(plan.tile),
        "options": asdict(opts),
    }


# -- many rasters ----------------------------------------------------------------------------
def tile(
    checkpoint: str | Path | Trained,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    inputs2: str | Path | Sequence[str | Path] | None = None,
    options: TileOptions | None = None,
) -> list[dict[str, Any]]:
    """Tiled inference for notebooks: one model (a checkpoint, loaded once, or a
    :class:`~densekit.inference.trained.Trained`), one or many rasters.

    ``inputs`` is a file, a folder of rasters or a list; with several inputs ``output`` is a
    folder that receives ``<input stem>.tif`` each. ``inputs2`` gives the second dates of change
    detection, paired by position (or by file name for folders). Returns each raster's sidecar
    record.
    """
    opts = options or TileOptions()
    device = opts.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if isinstance(checkpoint, Trained):
        model = checkpoint if device is None else checkpoint.to(device)
    else:
        model = load_trained(checkpoint, device or "cpu")
    firsts = _expand(inputs, "input")
    seconds: list[str | None] = (
        list(_expand(inputs2, "input2")) if inputs2 is not None else [None] * len(firsts)
    )
    if inputs2 is not None and Path(str(inputs)).is_dir() and Path(str(inputs2)).is_dir():
        by_stem = {Path(str(p)).stem: str(p) for p in seconds}
        unpaired = [p for p in firsts if Path(p).stem not in by_stem]
        extra = sorted(set(by_stem) - {Path(p).stem for p in firsts})
        if unpaired or extra:
            raise DensekitError(
                f"input {inputs} and input2 {inputs2} pair by file name; without a partner: "
                f"{[Path(p).name for p in unpaired][:5]} / {extra[:5]}"
            )
        seconds = [by_stem[Path(p).stem] for p in firsts]
    if len(seconds) != len(firsts):
        raise DensekitError(
            f"input names {len(firsts)} rasters, input2 {len(seconds)}; they pair by position"
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


def _expand(spec: str | Path | Sequence[str | Path], name: str) -> list[str]:
    if isinstance(spec, str | Path):
        path = Path(spec)
        if path.is_dir():
            files = sorted(
                str(p) for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".vrt")
            )
            if not files:
                raise InputImageError(f"{name} {path}: the folder holds no .tif/.vrt raster")
            return files
        return [str(path)]
    return [str(p) for p in spec]
