"""The tool subcommands ``densekit features`` and ``densekit stats`` (their arguments are parsed
by :mod:`densekit.cli`)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.version import __version__


def _check_writable(path: Path, flag: str) -> None:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise DensekitError(f"{flag} {path}: folder {parent} does not exist")
    if path.is_dir():
        raise DensekitError(f"{flag} {path}: is a folder, a file name is needed")


def features(
    image_path: str,
    *,
    backbone: str,
    weights: str,
    layers: str | list[int],
    bands: Sequence[int | str] | None,
    stats: str | None,
    scale: float | None,
    fill_nonfinite: bool,
    frame: int | None,
    arch: dict[str, Any],
    bf16: bool,
    device: Any,
    out: str,
    pca: str | None,
) -> int:
    """``densekit features``: the patch features of one image (and their PCA picture), written
    all or nothing; progress and warnings on stderr."""
    import numpy as np
    import torch
    from rich.console import Console

    from densekit.backbones.load import load_backbone
    from densekit.data.bands import BandStats
    from densekit.data.images import read_image
    from densekit.features import extract_features, pca_picture, prepare_input
    from densekit.io import atomic_outputs

    console = Console(stderr=True)
    t0 = time.perf_counter()
    named = [(Path(out), "--out")] + ([(Path(pca), "--pca")] if pca else [])
    for path, flag in named:
        _check_writable(path, flag)
    outputs = [path for path, _ in named]
    resolved = [p.expanduser().resolve() for p in outputs]
    if len(set(resolved)) != len(resolved):
        raise DensekitError(f"--out and --pca name the same file {out}")
    if Path(image_path).expanduser().resolve() in resolved:
        raise DensekitError(f"an output path is the input image {image_path}")
    image = read_image(image_path, frame=frame)
    band_stats = BandStats.from_yaml(stats) if stats else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_backbone(
            backbone,
            weights,
            layers=layers,
            autocast_dtype=torch.bfloat16 if bf16 else None,
            device=device,
            **arch,
        )
    for warning in caught:
        console.print(f"[yellow]warning:[/] {warning.message}")
    x, info = prepare_input(image, model, bands, band_stats, scale, fill_nonfinite)
    h, w = image.shape
    console.print(
        f"{image_path}: {w}x{h} px, bands {list(info.bands)} -> {model.name} "
        f"(normalisation: {info.normalization.source}, scale {info.normalization.scale:g})"
    )
    if info.invalid_pixels:
        console.print(
            f"{info.invalid_pixels} nodata/non-finite pixel(s) set to the normalisation mean"
        )
    feats = extract_features(model, x.to(device))
    feats["features"] = [f.cpu() for f in feats["features"]]  # type: ignore[attr-defined]
    feats["class_tokens"] = [c.cpu() for c in feats["class_tokens"]]  # type: ignore[attr-defined]
    record = {
        **feats,
        "backbone": model.name,
        "weights": {
            "source": model.weights.source,
            "file": Path(model.weights.path).name if model.weights.path else None,
            "sha256": model.weights.sha256,
        },
        "image": Path(image_path).name,
        "bands": list(info.bands),
        "mean": list(info.normalization.mean),
        "std": list(info.normalization.std),
        "scale": info.normalization.scale,
        "densekit_version": __version__,
    }
    writers: dict[Path, Callable[[Path], object]] = {Path(out): lambda tmp: torch.save(record, tmp)}
    if pca:
        import torchvision.io

        last = feats["features"][-1]  # type: ignore[index]
        stride = model.layer_stride(model.layers[-1])
        rgb = pca_picture(last, (h, w), stride, info.invalid if info.invalid_pixels else None)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
        writers[Path(pca)] = lambda tmp: torchvision.io.write_png(tensor, str(tmp))
    atomic_outputs(writers)
    shapes = ", ".join(
        f"layer {i}: {tuple(f.shape[1:])}"
        for i, f in zip(feats["layers"], feats["features"], strict=True)  # type: ignore[call-overload]
    )
    console.print(f"features ({shapes}) -> {out}")
    if pca:
        console.print(f"PCA picture {w}x{h} -> {pca}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def stats(
    files: Sequence[str],
    *,
    bands: Sequence[int | str] | None,
    backbone: str | None,
    fmt: str,
    out: str,
) -> int:
    """``densekit stats``: per-band statistics of rasters as YAML (a config fragment or all of
    them), written all or nothing."""
    import yaml
    from rich.console import Console

    from densekit.backbones.registry import NORMALIZATIONS, get_spec
    from densekit.data.stats import band_statistics
    from densekit.io import atomic_outputs

    console = Console(stderr=True)
    path = Path(out)
    _check_writable(path, "--out")
    stats = band_statistics(list(files), bands)
    names = stats["bands"]
    if backbone:
        expected = NORMALIZATIONS[get_spec(backbone).normalization].bands
        if len(names) != len(expected):
            console.print(
                f"[yellow]note:[/] {len(names)} band(s) but {backbone} takes "
                f"{len(expected)} ({', '.join(expected)}): training needs in_channels="
                f"{len(names)} (the explicit adapter) or a band selection of {len(expected)}"
            )
        else:
            pairs = ", ".join(f"{b} -> {e}" for b, e in zip(names, expected, strict=True))
            console.print(f"bands for {backbone}: {pairs}")
    if fmt == "config":
        doc: dict = {
            "model": {
                "init_args": {"bands": list(names), "mean": stats["mean"], "std": stats["std"]}
            },
            "data": {"init_args": {"bands": list(names)}},
        }
        lines = [
            "# Per-band statistics written by `densekit stats` (file units, nodata excluded).",
            "# Include in training: densekit fit --config CONFIG.yaml --config THIS.yaml",
            f"# files: {stats['files']}",
            f"# pixels per band: {stats['count']}",
            *(f"# {k}: {v}" for k, v in stats["percentiles"].items()),
        ]
        text = "\n".join(lines) + "\n" + yaml.safe_dump(doc, sort_keys=False)
    else:
        text = yaml.safe_dump(stats, sort_keys=False)
    atomic_outputs({path: lambda tmp: tmp.write_text(text)})
    for b, m, sd in zip(names, stats["mean"], stats["std"], strict=True):
        console.print(f"band {b}: mean {m:.6g}, std {sd:.6g}")
    console.print(f"statistics of {len(files)} file(s) -> {path}")
    return 0
