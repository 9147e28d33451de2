"""The sink of tiled inference: each finished strip to its own files, then their VRT mosaic
copied into a Cloud-Optimised GeoTIFF.

Outputs: the map (labels as uint8 with a colour table, nodata 255 and the class names in the
metadata, ``CLASS_NAMES`` and ``CLASS_<i>``; values as float32 with NaN nodata), and optionally
the probabilities (float32, one band per class, or the change probability), each with the
input's CRS, transform and size, tiled and deflate-compressed with overviews (GDAL's COG
driver); the COGs are built from the strip files once every strip is done and moved into place
together, so nothing half-written is left at an output path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import rasterio
import rasterio.shutil
from affine import Affine

from densekit.data.grids import Grid
from densekit.errors import DensekitError
from densekit.inference.plan import BLOCK, Plan
from densekit.io import as_output_error
from densekit.models import OutputSpec


def _profile(grid: Grid, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "zlevel": 1,  # intermediate files: the COG recompresses them at the default level
        "BIGTIFF": "IF_SAFER",
    }
    if grid.crs is not None:
        profile["crs"] = grid.crs
    if not grid.transform.is_identity:  # a geotransform without a CRS is kept too
        profile["transform"] = grid.transform
    return profile


def _class_metadata(names: Sequence[str]) -> dict[str, str]:
    tags = {"CLASS_NAMES": json.dumps(list(names))}
    tags.update({f"CLASS_{i}": n for i, n in enumerate(names)})
    return tags


def _vrt(parts: list[tuple[Path, int]], template: Path, grid: Grid, dest: Path) -> None:
    """A VRT mosaic of row parts ``(file, first row)`` with the template's band metadata."""
    with rasterio.open(template) as t:
        count, dtype, nodata = t.count, t.dtypes[0], t.nodata
        tags = t.tags()
        descriptions = t.descriptions
        units = t.units
        cmap = t.colormap(1) if t.colorinterp[0].name == "palette" else None
        crs_wkt = t.crs.to_wkt() if t.crs else None
        gt = None if t.transform.is_identity else t.transform.to_gdal()
    gdal_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">']
    if crs_wkt:
        lines.append(f"  <SRS>{escape(crs_wkt)}</SRS>")
    if gt is not None:
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
        if units[b - 1]:
            lines.append(f"    <UnitType>{escape(units[b - 1])}</UnitType>")
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


class StripWriter:
    """Writes each finished strip of one process to its own files, then records the progress.

    Every strip goes to new files (``map-<strip>.tif``, ``probs-<strip>.tif``) that are closed
    before the progress record names the strip done, so a kill can only lose the strip being
    written, never damage a finished one; rank 0 mosaics the strips at the end
    (:func:`assemble`).
    """

    def __init__(
        self,
        folder: Path,
        rank: int,
        grid: Grid,
        output: OutputSpec,
        probabilities: bool,
        signature: dict[str, Any],
        resume: bool,
    ) -> None:
        self.folder = folder
        self.grid = grid
        self.output = output
        self.probabilities = probabilities and bool(output.probability_names)
        self.progress_file = folder / f"progress-{rank}.json"
        self.signature = signature
        self.done = 0
        if resume and self.progress_file.is_file():
            state = json.loads(self.progress_file.read_text())
            if state["signature"] != signature:
                changed = sorted(
                    k for k in signature if state["signature"].get(k) != signature.get(k)
                )
                inputs = [k for k in changed if k in ("input_file", "input2_file")]
                if inputs:
                    what = {k: _changes(state["signature"].get(k), signature[k]) for k in inputs}
                    raise DensekitError(
                        f"resume: the input changed since the unfinished run in {folder} "
                        f"({'; '.join(f'{k[:-5]}: {v}' for k, v in what.items())}); its "
                        "finished strips would not match the rest: run without resume to "
                        "start again"
                    )
                raise DensekitError(
                    f"resume: the unfinished run in {folder} used other settings ({changed}); "
                    "run without resume to start again"
                )
            self.done = int(state["strips_done"])

    @contextlib.contextmanager
    def strip(self, s: int, rows: tuple[int, int]) -> Iterator[tuple[Any, Any]]:
        """The open files of strip ``s`` (map, probabilities or None), closed afterwards."""
        a, b = rows
        g = self.grid
        part = Grid(g.crs, g.transform @ Affine.translation(0, a), g.width, b - a)
        spec = self.output
        profile = _profile(part, 1, spec.dtype, spec.nodata)
        with contextlib.ExitStack() as stack:
            dst = stack.enter_context(
                rasterio.open(self.folder / f"map-{s:06d}.tif", "w", **profile)
            )
            dst.set_band_description(1, spec.description)
            if spec.unit:
                dst.set_band_unit(1, spec.unit)
            if spec.is_map_of_classes:
                dst.update_tags(**_class_metadata(spec.class_names))
                dst.write_colormap(1, spec.colormap())
            probs = None
            if self.probabilities:
                names = spec.probability_names
                profile = _profile(part, len(names), "float32", float("nan"))
                probs = stack.enter_context(
                    rasterio.open(self.folder / f"probs-{s:06d}.tif", "w", **profile)
                )
                for band, name in enumerate(names, start=1):
                    probs.set_band_description(band, f"p_{name}")
            yield dst, probs

    def strip_done(self, count: int) -> None:
        """Record ``count`` finished strips (their files are closed)."""
        state = {"signature": self.signature, "strips_done": count}
        tmp = self.progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.progress_file)


def _changes(before: Any, now: dict[str, Any]) -> str:
    """Which of an input's fingerprint entries differ, e.g. ``size, mtime_ns``."""
    before = before if isinstance(before, dict) else {}
    return ", ".join(k for k in now if before.get(k) != now[k]) or "recorded differently"


def assemble(
    output_spec: OutputSpec,
    grid: Grid,
    plan: Plan,
    probabilities: bool,
    output: Path,
    folder: Path,
) -> list[Path]:
    """Rank 0: the COG(s) from every strip's file, moved into place together; returns them."""
    targets = {"map": output}
    if probabilities and output_spec.probability_names:
        targets["probs"] = output.with_name(output.stem + "_probs.tif")
    tmps: dict[Path, Path] = {}
    try:
        for name, dest in targets.items():
            parts = [(folder / f"{name}-{s:06d}.tif", r) for s, r in enumerate(plan.rows)]
            missing = [p.name for p, _ in parts if not p.is_file()]
            if missing:
                raise DensekitError(f"{folder}: strip files {missing[:3]} are missing")
            vrt = folder / f"{name}.vrt"
            _vrt(parts, parts[0][0], grid, vrt)
            tmp = dest.with_name(f".{dest.stem}.partial-{os.getpid()}.tif")
            tmps[dest] = tmp  # removed below if the copy fails half-way (a full disk)
            resampling = output_spec.overview_resampling if name == "map" else "AVERAGE"
            try:
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
            except OSError as e:  # named while the half-written copy still fills the disk
                raise as_output_error(e, dest) from e
        for dest, tmp in tmps.items():
            os.replace(tmp, dest)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()
    return list(targets.values())
