"""The remote-sensing quickstart on a bundled task (:mod:`~densekit.commands.quickstart.geo_tasks`:
``water``, the default, or ``buildings``): band statistics, a head trained on the left 60 % of
the columns (validated on the next 20 %), a test on the right 20 %, ``densekit tile`` over the
whole image, the trivial predictor and a per-pixel baseline scored on the same test columns,
pictures and metrics."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from densekit.commands.quickstart.geo_tasks import WATER, GeoTask
from densekit.commands.quickstart.steps import (
    Steps,
    copy_file,
    last_checkpoint,
    lightning,
    test_metrics,
    trainer_settings,
    write_yaml,
)
from densekit.io import atomic_outputs
from densekit.pictures import ERROR_COLOURS, error_map, overlay, panels, stretch

GEO_IMAGE = WATER.image
GEO_LABELS = WATER.labels
SPLIT = [0.6, 0.2, 0.2]
OUTPUTS = [
    "stats.yaml",
    "quickstart.yaml",
    "benchmark_card.yaml",
    "model.ckpt",
    "test_metrics.json",
    "prediction.tif",
    "prediction.json",
    "overview.png",
    "features_pca.png",
    "metrics.json",
]
# folders it writes (the training run, the feature cache)
OUTPUT_FOLDERS = ["run", "feature_cache"]
EXTRA_OUTPUTS: list[str] = []


def distinct_bands(task: GeoTask) -> list[int | str]:
    """The image bands the task reads, each once, in the order they first appear."""
    return list(dict.fromkeys(task.bands))


def geo_config(
    out: Path, stats: dict[str, Any], backbone: str, weights: str, epochs: int, task: GeoTask
) -> dict:
    by_band = dict(
        zip(distinct_bands(task), zip(stats["mean"], stats["std"], strict=True), strict=True)
    )
    return {
        "seed_everything": 0,
        "trainer": trainer_settings(out, epochs, 5),
        "model": {
            "class_path": "densekit.tasks.SegmentationTask",
            "init_args": {
                "num_classes": len(task.class_names),
                "class_names": list(task.class_names),
                "backbone": backbone,
                "weights": weights,
                **task.model,
                "in_channels": len(task.bands),
                "bands": list(task.bands),
                "mean": [round(by_band[b][0], 3) for b in task.bands],
                "std": [round(by_band[b][1], 3) for b in task.bands],
                "feature_cache": str(out / "feature_cache"),
            },
        },
        "data": {
            "class_path": "densekit.data.SegmentationDataModule",
            "init_args": {
                "images": str(task.image),
                "labels": str(task.labels),
                "bands": list(task.bands),
                "label_map": dict(task.label_map),
                "split": SPLIT,
                "window": task.window,
                "batch_size": task.batch_size,
            },
        },
    }


HEAD_OPTIONS = ("head", "layers", "head_grid", "pixel_branch", "backbone_bands", "upsampler", "lr")


def benchmark_card(out: Path, config: dict, backbone: str, weights: str, task: GeoTask) -> Path:
    """A ``densekit benchmark`` card on the bundled image: the quickstart's head against a
    U-Net from scratch (on every band the task reads) at 10 % and 100 % of the labelled
    windows, two seeds."""
    from densekit.benchmark.card import load_card

    model = dict(config["model"]["init_args"])
    data = dict(config["data"]["init_args"])
    bands = distinct_bands(task)
    by_band = dict(zip(model["bands"], zip(model["mean"], model["std"], strict=True), strict=True))
    common = {k: model[k] for k in ("loss", "class_weights", "warmup_steps") if k in model}
    card = {
        "name": f"quickstart_{task.name}",
        "description": f"{task.what}; label-fraction benchmark (written by densekit quickstart)",
        "task": "segmentation",
        "metric": f"iou_{task.positive}",
        "data": {**data, "samples_per_epoch": 32},
        "model": {
            "num_classes": len(task.class_names),
            "class_names": list(task.class_names),
            **common,
            "in_channels": model["in_channels"],
            "bands": model["bands"],
            "mean": model["mean"],
            "std": model["std"],
        },
        "trainer": {"max_epochs": 10, "log_every_n_steps": 5},
        "label_fractions": [0.1, 1.0],
        "stratify": True,
        "seeds": [0, 1],
        "feature_cache": True,
        "backbones": [{"name": "quickstart", "backbone": backbone, "weights": weights}],
        "heads": [
            {
                "name": "linear",
                "model": {k: model[k] for k in HEAD_OPTIONS if k in model},
            }
        ],
        "baselines": [
            {
                "name": "unet",
                "model": {
                    "head": "unet",
                    "unet_encoder": "resnet18",
                    "in_channels": len(bands),
                    "bands": bands,
                    "mean": [by_band[b][0] for b in bands],
                    "std": [by_band[b][1] for b in bands],
                },
                "data": {
                    "bands": bands,
                    "train_windows": "random",
                    "augment": {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5},
                },
            }
        ],
    }
    path = out / "benchmark_card.yaml"
    write_yaml(path, card, "# densekit benchmark on the quickstart's data (written by it)\n")
    load_card(path)  # a card that does not load is a bug here, not the user's
    return path


def run(
    out: Path, backbone: str, weights: str, epochs: int, console: Console, task: GeoTask = WATER
) -> dict:
    import rasterio
    import torch

    from densekit.benchmark.baselines import iou, pixel_logistic_regression, trivial_iou
    from densekit.data.stats import band_statistics
    from densekit.inference import TileOptions, load_trained, tile_raster

    steps = Steps(console, 7)
    console.print(f"task {task.name}: {task.what}; {task.expect}")
    bands = distinct_bands(task)
    steps.start(f"band statistics of {task.image.name} ({len(bands)} band(s))")
    stats = band_statistics([str(task.image)], bands)
    write_yaml(
        out / "stats.yaml",
        {"model": {"init_args": {"bands": bands, "mean": stats["mean"], "std": stats["std"]}}},
        "# densekit stats over the quickstart image (file units, nodata excluded)\n",
    )
    steps.done(f"-> {out / 'stats.yaml'}")

    head = "linear head" + (" + pixel branch" if task.model.get("pixel_branch") else "s")
    steps.start(f"training a {head} on {backbone} (left 60 % of the columns; feature cache)")
    config = out / "quickstart.yaml"
    settings = geo_config(out, stats, backbone, weights, epochs, task)
    write_yaml(
        config,
        settings,
        "# The config densekit quickstart trained with; rerun: densekit fit --config THIS\n",
    )
    benchmark_card(out, settings, backbone, weights, task)
    shutil.rmtree(out / "run", ignore_errors=True)
    lightning(["fit", "--config", str(config)])
    ckpt = out / "model.ckpt"
    copy_file(last_checkpoint(out / "run"), ckpt)
    steps.done(f"-> {ckpt}")

    metric = f"iou_{task.positive}"
    steps.start("testing on the right 20 % of the columns (never seen in training)")
    lightning(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    test = test_metrics(out / "run")
    copy_file(sorted((out / "run").rglob("test_metrics.json"))[-1], out / "test_metrics.json")
    scores = test["metrics"]
    steps.done(f"{task.positive} IoU {scores[metric]:.3f}, mIoU {scores['miou']:.3f}")

    steps.start("densekit tile over the whole image")
    model = load_trained(ckpt)
    prediction = out / "prediction.tif"
    tile_raster(model, task.image, prediction, options=TileOptions(tile=224, overlap=32))
    with rasterio.open(prediction) as src, rasterio.open(task.image) as ref:
        pred = src.read(1)
        colours = src.colormap(1)
        same = src.crs == ref.crs and src.transform == ref.transform
        image = ref.read().astype(np.float32)
        valid_image = ref.read_masks(1) > 0
    with rasterio.open(task.labels) as src:
        raw = src.read(1)
    label = np.full(raw.shape, 255, np.uint8)
    for value, cls in task.label_map.items():
        label[raw == value] = cls
    width = raw.shape[1]
    first_test = round(SPLIT[0] * width) + round(SPLIT[1] * width)
    positive = len(task.class_names) - 1
    truth, valid = label == positive, label != 255
    test_cols = np.zeros_like(valid)
    test_cols[:, first_test:] = True
    model_iou = iou(pred == positive, truth, valid & test_cols)
    steps.done(
        f"-> {prediction} (CRS and transform of the input: {same}); "
        f"{task.positive} IoU on the test columns {model_iou:.3f}"
    )

    steps.start("baselines on the same test columns: trivial predictor, per-pixel model")
    trivial = trivial_iou(truth, valid & test_cols)
    pixels = image[[b - 1 for b in band_positions(task.image, bands)]]
    train = np.zeros_like(valid)
    train[:, : round(SPLIT[0] * width)] = True
    train &= valid & valid_image
    flat = pixels.reshape(pixels.shape[0], -1).T
    tic = time.perf_counter()
    guess = pixel_logistic_regression(flat[train.ravel()], truth.ravel()[train.ravel()], flat)
    baseline_seconds = time.perf_counter() - tic
    baseline_pred = guess.reshape(truth.shape)
    baseline_iou = iou(baseline_pred, truth, valid & test_cols)
    steps.done(
        f"trivial ('{task.positive}' everywhere) {trivial:.3f}, per-pixel logistic regression "
        f"on {len(bands)} band(s) {baseline_iou:.3f}"
    )

    steps.start("pictures: image, prediction, label, errors; the PCA of the features")
    picture = _display(image, task, valid_image)
    shown = {k: v for k, v in colours.items() if k < len(task.class_names)}
    legend = [(task.class_names[k], tuple(shown[k][:3])) for k in sorted(shown) if k != 0]
    errors = [(name, colour) for name, colour in ERROR_COLOURS.items()]
    panels(
        out / "overview.png",
        [
            ("image", picture, None),
            ("prediction (densekit tile)", overlay(picture, pred, shown), None),
            ("label", overlay(picture, label, shown), None),
            (f"errors ({task.positive})", error_map(pred == positive, truth, valid), None),
        ],
        f"{task.name}: {backbone}, {head}; test columns right of the dashed line\n"
        f"{task.positive} IoU {model_iou:.3f} | trivial ('{task.positive}' everywhere) "
        f"{trivial:.3f} | per-pixel logistic regression {baseline_iou:.3f}",
        first_test,
        [None, legend, legend, errors],
    )
    x = image[[b - 1 for b in band_positions(task.image, task.bands)]]
    pca = pca_picture(out / "features_pca.png", model.model, x, valid_image, backbone)
    steps.done(f"-> {out / 'overview.png'}, {out / 'features_pca.png'}")

    steps.start("metrics")
    record = {
        "domain": "geo",
        "task": task.name,
        "data": str(task.image),
        "backbone": test.get("backbone"),
        "test_metrics": scores,
        "metric": metric,
        "test_columns": {
            "model": model_iou,
            "trivial": trivial,
            "per_pixel_logistic_regression": baseline_iou,
        },
        "per_pixel_seconds": round(baseline_seconds, 2),
        "features_pca": pca,
        "selected_head": (test.get("head_grid") or {}).get("selected"),
        "seconds": steps.times,
        "outputs": {k: str(out / k) for k in [*OUTPUTS, *OUTPUT_FOLDERS]},
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_outputs({out / "metrics.json": lambda tmp: tmp.write_text(text)})
    steps.done(f"-> {out / 'metrics.json'}")
    record["total_seconds"] = round(time.perf_counter() - steps.t0, 1)
    return record


def band_positions(path: Path, bands: list[int | str] | tuple[int | str, ...]) -> list[int]:
    """The 1-based positions of ``bands`` (indices or names) in the raster at ``path``."""
    from densekit.data.band_layout import BandLayout
    from densekit.data.bands import resolve_band_indices

    names = BandLayout.of(str(path)).names
    return [i + 1 for i in resolve_band_indices(list(bands), names, str(path))]


def _display(image: np.ndarray, task: GeoTask, valid: np.ndarray) -> np.ndarray:
    """The task's display bands stretched to [0, 1]: ``(H, W, 3)`` colour or ``(H, W)`` grey."""
    layers = [stretch(image[b - 1], valid) for b in task.display]
    return np.stack(layers, axis=-1) if len(layers) == 3 else layers[0]


def pca_picture(
    path: Path, model: Any, x: np.ndarray, valid: np.ndarray, backbone: str
) -> dict[str, Any]:
    """The first three principal components of the backbone's last layer on the whole image
    (``x``: the model's input bands, ``(C, H, W)``), titled with the backbone, the layer and the
    variance each component explains."""
    import torch

    from densekit.features import pca_explained
    from densekit.features import pca_picture as principal_components

    with torch.inference_mode():
        maps, _ = model.encode([torch.from_numpy(np.ascontiguousarray(x))[None]])
    stride = model.backbone.patch_size / model.config.backbone.upscale
    rgb = principal_components(maps[-1], x.shape[-2:], round(stride), ~valid)
    explained = pca_explained(maps[-1])
    layer = model.backbone.layers[-1]
    shares = ", ".join(f"{100 * v:.0f} %" for v in explained)
    panels(
        path,
        [("principal components 1, 2, 3 as red, green, blue", rgb / 255.0, None)],
        f"{backbone}, layer {layer} (the last of those the head reads)\n"
        f"variance explained: {shares} ({100 * sum(explained):.0f} % together)",
        None,
    )
    return {"layer": layer, "explained_variance": explained}
