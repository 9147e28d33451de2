"""Vector labels (GeoJSON, shapefile, GeoPackage) rasterised on a sample's reference grid.

Features are read with fiona, reprojected to the grid's CRS, and burnt with rasterio's
``features.rasterize`` into each window (pixels whose centre lies in a polygon; the pixel holding a
point; the pixels a line crosses). A feature's value is its ``field`` attribute (integer-like) or
1 when no field is given. Pixels no feature covers are background (0) for dense labels, such as
building footprints, or ``ignore_index`` for sparse labels (points, a few polygons). Geometry
collections are burnt whole; features without a geometry or with an empty one are skipped, and
invalid ones too, with a warning; a geometry that cannot be read or reprojected is an error naming
the file and the feature.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import is_valid_geom, rasterize
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from densekit.data.grids import Grid
from densekit.data.windows import Box, intersect
from densekit.errors import DensekitError, InputImageError

VECTOR_SUFFIXES = (".geojson", ".json", ".shp", ".gpkg")


def is_vector(path: str) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def vector_bounds(path: str, reference: Grid) -> tuple[float, float, float, float]:
    """Bounds of the features in the reference grid's CRS (for the overlap check)."""
    import fiona

    try:
        with fiona.open(path) as src:
            if src.crs is None or not src.crs:
                raise DensekitError(f"{path}: the vector file has no CRS")
            if len(src) == 0:
                raise DensekitError(f"{path}: the vector file has no features")
            w, s_, e, n = transform_bounds(src.crs, reference.crs, *src.bounds)
            return (w, s_, e, n)
    except fiona.errors.FionaError as e:
        raise InputImageError(f"{path}: not a readable vector file ({e})") from None


def _mapping(geom: Any) -> dict[str, Any]:
    """A plain GeoJSON-like mapping of a fiona geometry, geometry collections included."""
    if geom["type"] == "GeometryCollection":
        return {"type": geom["type"], "geometries": [_mapping(g) for g in geom["geometries"]]}
    return {"type": geom["type"], "coordinates": geom["coordinates"]}


def _points(geom: dict[str, Any]) -> Iterator[Sequence[float]]:
    """Every vertex of a geometry mapping (none for an empty geometry)."""
    if geom["type"] == "GeometryCollection":
        for g in geom["geometries"]:
            yield from _points(g)
    else:
        yield from _vertices(geom["coordinates"])


def _vertices(coords: Any) -> Iterator[Sequence[float]]:
    if len(coords) and isinstance(coords[0], int | float):
        yield coords[:2]
    else:
        for c in coords:
            yield from _vertices(c)


def _feature(
    geom: Any, src_crs: Any, crs_wkt: str
) -> tuple[dict[str, Any], tuple[float, float, float, float]] | None:
    """A feature's geometry in ``crs_wkt`` and its bounds; None for an empty geometry."""
    from fiona.transform import transform_geom

    geom = _mapping(geom)
    points = np.asarray(list(_points(geom)), dtype=np.float64)
    if points.size == 0:
        return None
    if src_crs.to_wkt() != crs_wkt:
        geom = _mapping(transform_geom(src_crs, crs_wkt, geom))
        points = np.asarray(list(_points(geom)), dtype=np.float64)
    xs, ys = points[:, 0], points[:, 1]
    return geom, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


@functools.lru_cache(maxsize=16)
def load_features(
    path: str, crs_wkt: str, field: str | None
) -> tuple[tuple[dict, int, tuple[float, float, float, float]], ...]:
    """All features of ``path`` in the CRS ``crs_wkt``: ``(geometry, value, bounds)``, read once
    per process (windows then only select and burn). Features without a geometry or with an
    empty one are skipped; invalid ones (a polygon ring of fewer than 4 points) are skipped with
    a warning naming them; a geometry that cannot be read or reprojected is an error naming the
    feature."""
    import fiona

    out = []
    invalid = []
    with fiona.open(path) as src:
        for feature in src:
            if feature["geometry"] is None:
                continue
            try:
                found = _feature(feature["geometry"], src.crs, crs_wkt)
            except (TypeError, ValueError, IndexError, KeyError, fiona.errors.FionaError) as e:
                kind = feature["geometry"].get("type")
                raise DensekitError(
                    f"{path}: feature {feature.id}: its {kind} geometry cannot be read or "
                    f"reprojected to the image CRS ({e})"
                ) from None
            if found is None:
                continue
            if not is_valid_geom(found[0]):
                invalid.append(feature.id)
                continue
            if field is None:
                value = 1
            else:
                raw = feature["properties"].get(field)
                try:
                    value = int(float(raw))
                except (TypeError, ValueError):
                    raise DensekitError(
                        f"{path}: feature {feature.id} has {field}={raw!r}, not a class number"
                    ) from None
            out.append((found[0], value, found[1]))
    if invalid:
        warnings.warn(
            f"{path}: {len(invalid)} feature(s) with an invalid geometry are not burnt: "
            f"{invalid[:10]}",
            stacklevel=2,
        )
    return tuple(out)


def rasterize_box(
    path: str, reference: Grid, box: Box, field: str | None, background: int
) -> np.ndarray:
    """Labels ``(h, w)`` int64 of the features of ``path`` in ``box`` of the reference grid."""
    bc, br, bw, bh = box
    transform = window_transform(Window(bc, br, bw, bh), reference.transform)
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (bw, bh)
    west, east, south, north = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    out = np.full((bh, bw), background, np.int32)
    crs = reference.crs.to_wkt() if reference.crs is not None else ""
    shapes = [
        (geom, value)
        for geom, value, (gw, gs, ge, gn) in load_features(path, crs, field)
        if gw <= east and ge >= west and gs <= north and gn >= south
    ]
    if shapes:
        rasterize(shapes, out=out, transform=transform)
    return out.astype(np.int64)


def read_vector_box(
    path: str,
    window: Box,
    region: Box,
    reference: Grid,
    field: str | None,
    sparse: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`densekit.data.datasets.read_box` for a vector label file: ``(values (1, h, w),
    inside, unlabelled)``; with ``sparse``, pixels no feature covers are unlabelled."""
    c0, r0, w, h = window
    values = np.zeros((1, h, w), np.float32)
    inside = np.zeros((h, w), bool)
    unlabelled = np.zeros((h, w), bool)
    box = intersect(window, region)
    box = box and intersect(box, (0, 0, reference.width, reference.height))
    if box is None:
        return values, inside, unlabelled
    bc, br, bw, bh = box
    ys, xs = slice(br - r0, br - r0 + bh), slice(bc - c0, bc - c0 + bw)
    burnt = rasterize_box(path, reference, box, field, background=-1 if sparse else 0)
    values[0, ys, xs] = burnt
    inside[ys, xs] = True
    unlabelled[ys, xs] = burnt == -1
    return values, inside, unlabelled
