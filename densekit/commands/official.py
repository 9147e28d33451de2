"""Meta's released heads on the command line: ``densekit heads`` lists them, ``densekit
import-head`` turns one head file and its backbone into a densekit checkpoint that ``densekit
tile``, ``test`` and ``predict`` use as they use a trained one (its arguments are parsed by
:mod:`densekit.cli`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError

TASK_CLASSES = {"depth": "DepthTask", "segmentation": "SegmentationTask"}


def list_heads() -> list[str]:
    """One tab-separated line per released head (greppable): name, kind, backbone, layers,
    depth range, licence, head file; then the hub aliases."""
    from densekit.heads.official import ALIASES, list_official_heads

    lines = ["name\tkind\tbackbone\tlayers\tdepth_range_m\tlicence\thead_file"]
    for h in list_official_heads():
        drange = "-" if h.depth_range is None else f"{h.depth_range[0]:g}-{h.depth_range[1]:g}"
        layers = ",".join(map(str, h.layers))
        lines.append(
            f"{h.name}\t{h.kind}\t{h.backbone}\t{layers}\t{drange}\t{h.licence}\t{h.head_file}"
        )
    lines.append("aliases: " + ", ".join(f"{a} -> {n}" for a, n in ALIASES.items()))
    return lines


def import_head(
    kind: str,
    head_weights: str,
    backbone: str,
    backbone_weights: str,
    out: str,
    *,
    layers: Sequence[int] | None = None,
    depth_range: tuple[float, float] | None = None,
    arch: dict[str, Any] | None = None,
    scale: float | None = None,
    dtype: str = "uint8",
    bands: Sequence[int | str] = (1, 2, 3),
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write a densekit checkpoint of Meta's head ``head_weights`` on ``backbone``.

    The checkpoint's model takes the raw ``bands`` (red, green, blue, in that order) of a raster
    or image, multiplies them by ``scale`` and normalises them with the backbone's statistics
    (for the SAT-493M backbones, Meta's satellite ones); its outputs are depth or canopy height
    in metres, or class logits, on the input's pixels. The record names the head file, its
    sha256 and licence; the backbone's weights are named by path and sha256, not copied.

    It also records the rasters the model reads as three unnamed bands of ``dtype``, so
    ``densekit tile`` refuses a raster of another band count, data type or with band names
    unless ``--bands`` says which bands are red, green and blue.

    Args:
        scale: multiplies raw values to reach [0, 1]; default 1/255 for ``uint8``, required
            for other data types.
        dtype: the data type of the imagery (``uint8``, ``uint16``, ...).

    Returns:
        The checkpoint's ``official_head`` record.

    Raises:
        DensekitError: a file or argument that does not fit (named).
    """
    import numpy as np

    from densekit.data.band_layout import BandLayout
    from densekit.heads.official import load_head_file
    from densekit.models import DenseModel, ModelConfig
    from densekit.models.build import build_parts
    from densekit.models.config import (
        BackboneOptions,
        HeadOptions,
        OfficialHeadOptions,
        absolute_weights,
    )
    from densekit.models.official import official_output, official_task

    path = Path(out)
    if not path.parent.is_dir():
        raise DensekitError(f"--out {out}: folder {path.parent} does not exist")
    if len(bands) != 3:
        raise DensekitError(f"--bands {list(bands)}: Meta's heads take 3 bands (red, green, blue)")
    try:
        np.dtype(dtype)
    except TypeError:
        raise DensekitError(
            f"--dtype {dtype!r}: not a data type (uint8, uint16, float32, ...)"
        ) from None
    if scale is None and dtype != "uint8":
        raise DensekitError(
            f"--scale: give the factor that takes {dtype} values to [0, 1] (1/255 is only the "
            "default for uint8 imagery)"
        )
    scale = 1 / 255 if scale is None else scale
    if not scale > 0:
        raise DensekitError(f"--scale {scale}: give a positive factor (1/255 for 8-bit data)")
    overrides = dict(arch or {})
    task = official_task(kind)
    head = load_head_file(kind, head_weights, backbone, layers, depth_range, **overrides)
    if class_names is not None and len(class_names) != head.num_outputs:
        raise DensekitError(
            f"--class-names: {len(class_names)} given, the head has {head.num_outputs} classes"
        )
    official = OfficialHeadOptions(
        kind=kind,
        weights=str(Path(head_weights).expanduser().resolve()),
        layers=head.layers,
        depth_range=head.depth_range,
    )
    config = ModelConfig(
        backbone=BackboneOptions(
            name=backbone, weights=absolute_weights(backbone_weights), overrides=overrides
        ),
        head=HeadOptions(kind="official", official=official),
        in_channels=3,
        bands=tuple(bands),
        scale=scale,
    )
    output = official_output(kind, task, head.num_outputs, class_names)
    # the decoder's tensors are in memory: the model is built from them, not from a second read
    state = {f"head.decoder.{k}": v for k, v in head.decoder.state_dict().items()}
    model = DenseModel(config, output, build_parts(config, output, state))
    rasters = BandLayout(3, str(np.dtype(dtype)), (None, None, None))
    model.save(path, task=TASK_CLASSES[task], rasters=rasters)
    return model.record(TASK_CLASSES[task])["official_head"]
