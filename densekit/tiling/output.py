"""Writing tiled outputs: strip files, their VRT mosaic and the Cloud-Optimised GeoTIFF."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import rasterio
import rasterio.shutil
from affine import Affine

from densekit import __version__
from densekit.data.grids import Grid
from densekit.errors import DensekitError
from densekit.tiling.model import RasterInput, TileModel

if TYPE_CHECKING:
    from densekit.tiling.run import Plan, TileOptions

CLASS_NODATA = 255
BLOCK = 256  # block side of the strip files

# A qualitative palette for class maps (class i gets entry i modulo its length).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


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
        # with input scaling the backbone sees each tile resized: its memory and time follow
        # that side (tokens grow with its square), not the tile's
        "backbone_tile": None if backbone is None else model.backbone_tile(plan.tile),
        "options": asdict(opts),
    }
