"""The tool subcommands ``densekit features`` and ``densekit stats`` and the argument parsers
they share with the others (see :mod:`densekit.cli`)."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.version import __version__


def _number(text: str, item: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise DensekitError(f"--arch {item!r}: {text!r} is not a number") from None


def _parse_arch(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DensekitError(f"--arch expects KEY=VALUE, got {item!r}")
        values = [_number(v, item) for v in value.split(",")]
        out[key] = values if len(values) > 1 else values[0]
    return out


def _parse_layers(text: str) -> str | list[int]:
    if text in ("last", "last4", "dpt"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise DensekitError(
            f"--layers {text!r}: use 'last', 'last4', 'dpt' or block indices like 2,5,8,11"
        ) from None


def parse_device(text: str) -> Any:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise DensekitError(
            f"--device {text!r}: not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DensekitError(f"--device {text}: no CUDA device is available here")
    return device


def _check_writable(path: Path, flag: str) -> None:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise DensekitError(f"{flag} {path}: folder {parent} does not exist")
    if path.is_dir():
        raise DensekitError(f"{flag} {path}: is a folder, a file name is needed")


def cmd_features(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from rich.console import Console

    from densekit.backbones.load import load_backbone
    from densekit.data.bands import BandStats, parse_bands
    from densekit.data.images import read_image
    from densekit.features import extract_features, pca_picture, prepare_input
    from densekit.io import atomic_outputs

    console = Console(stderr=True)
    t0 = time.perf_counter()
    named = [(Path(args.out), "--out")] + ([(Path(args.pca), "--pca")] if args.pca else [])
    for path, flag in named:
        _check_writable(path, flag)
    outputs = [path for path, _ in named]
    resolved = [p.expanduser().resolve() for p in outputs]
    if len(set(resolved)) != len(resolved):
        raise DensekitError(f"--out and --pca name the same file {args.out}")
    if Path(args.image).expanduser().resolve() in resolved:
        raise DensekitError(f"an output path is the input image {args.image}")
    device = parse_device(args.device)
    image = read_image(args.image, frame=args.frame)
    stats = BandStats.from_yaml(args.stats) if args.stats else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = load_backbone(
            args.backbone,
            args.weights,
            layers=_parse_layers(args.layers),
            autocast_dtype=torch.bfloat16 if args.bf16 else None,
            device=device,
            **_parse_arch(args.arch),
        )
    for warning in caught:
        console.print(f"[yellow]warning:[/] {warning.message}")
    x, info = prepare_input(
        image, backbone, parse_bands(args.bands), stats, args.scale, args.fill_nonfinite
    )
    h, w = image.shape
    console.print(
        f"{args.image}: {w}x{h} px, bands {list(info.bands)} -> {backbone.name} "
        f"(normalisation: {info.normalization.source}, scale {info.normalization.scale:g})"
    )
    if info.invalid_pixels:
        console.print(
            f"{info.invalid_pixels} nodata/non-finite pixel(s) set to the normalisation mean"
        )
    feats = extract_features(backbone, x.to(device))
    feats["features"] = [f.cpu() for f in feats["features"]]  # type: ignore[attr-defined]
    feats["class_tokens"] = [c.cpu() for c in feats["class_tokens"]]  # type: ignore[attr-defined]
    record = {
        **feats,
        "backbone": backbone.name,
        "weights": {
            "source": backbone.weights.source,
            "file": Path(backbone.weights.path).name if backbone.weights.path else None,
            "sha256": backbone.weights.sha256,
        },
        "image": Path(args.image).name,
        "bands": list(info.bands),
        "mean": list(info.normalization.mean),
        "std": list(info.normalization.std),
        "scale": info.normalization.scale,
        "densekit_version": __version__,
    }
    writers: dict[Path, Callable[[Path], object]] = {
        Path(args.out): lambda tmp: torch.save(record, tmp)
    }
    if args.pca:
        import torchvision.io

        last = feats["features"][-1]  # type: ignore[index]
        stride = backbone.layer_stride(backbone.layers[-1])
        rgb = pca_picture(last, (h, w), stride, info.invalid if info.invalid_pixels else None)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
        writers[Path(args.pca)] = lambda tmp: torchvision.io.write_png(tensor, str(tmp))
    atomic_outputs(writers)
    shapes = ", ".join(
        f"layer {i}: {tuple(f.shape[1:])}"
        for i, f in zip(feats["layers"], feats["features"], strict=True)  # type: ignore[call-overload]
    )
    console.print(f"features ({shapes}) -> {args.out}")
    if args.pca:
        console.print(f"PCA picture {w}x{h} -> {args.pca}")
    console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console

    from densekit.backbones.registry import NORMALIZATIONS, get_spec
    from densekit.data.bands import parse_bands
    from densekit.data.stats import band_statistics
    from densekit.io import atomic_outputs

    console = Console(stderr=True)
    out = Path(args.out)
    _check_writable(out, "--out")
    stats = band_statistics(args.files, parse_bands(args.bands))
    bands = stats["bands"]
    if args.backbone:
        expected = NORMALIZATIONS[get_spec(args.backbone).normalization].bands
        if len(bands) != len(expected):
            console.print(
                f"[yellow]note:[/] {len(bands)} band(s) but {args.backbone} takes "
                f"{len(expected)} ({', '.join(expected)}): training needs in_channels="
                f"{len(bands)} (the explicit adapter) or a band selection of {len(expected)}"
            )
        else:
            pairs = ", ".join(f"{b} -> {e}" for b, e in zip(bands, expected, strict=True))
            console.print(f"bands for {args.backbone}: {pairs}")
    if args.format == "config":
        doc: dict = {
            "model": {
                "init_args": {"bands": list(bands), "mean": stats["mean"], "std": stats["std"]}
            },
            "data": {"init_args": {"bands": list(bands)}},
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
    atomic_outputs({out: lambda tmp: tmp.write_text(text)})
    for b, m, sd in zip(bands, stats["mean"], stats["std"], strict=True):
        console.print(f"band {b}: mean {m:.6g}, std {sd:.6g}")
    console.print(f"statistics of {len(args.files)} file(s) -> {out}")
    return 0
