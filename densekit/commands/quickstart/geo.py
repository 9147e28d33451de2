"""The remote-sensing quickstart: the SpaceNet Atlanta building tile (900 x 900 WorldView
panchromatic at 0.5 m, CC BY-SA 4.0, see ``densekit/samples/ATTRIBUTION.md``), band statistics,
linear heads on the left 60 % of the columns (the best on the next 20 %), a test on the right
20 %, ``densekit tile`` over the whole tile, pictures and metrics."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from densekit.commands.quickstart.steps import (
    SAMPLES,
    Steps,
    copy_file,
    last_checkpoint,
    lightning,
    test_metrics,
    trainer_settings,
    write_yaml,
)
from densekit.io import atomic_outputs
from densekit.pictures import panels, stretch

GEO_IMAGE = SAMPLES / "spacenet_atlanta" / "image.tif"
GEO_LABELS = SAMPLES / "spacenet_atlanta" / "buildings.tif"
SPLIT = [0.6, 0.2, 0.2]
OUTPUTS = [
    "stats.yaml",
    "quickstart.yaml",
    "model.ckpt",
    "test_metrics.json",
    "prediction.tif",
    "overview.png",
    "features_pca.png",
    "metrics.json",
]
# written too (the sidecar, the benchmark card); not listed in the summary
EXTRA_OUTPUTS = ["prediction.json", "benchmark_card.yaml"]


def geo_config(out: Path, stats: dict[str, Any], backbone: str, weights: str, epochs: int) -> dict:
    bands = [1, 1, 1]  # the panchromatic band repeated for an RGB backbone
    mean, std = stats["mean"][0], stats["std"][0]
    return {
        "seed_everything": 0,
        "trainer": trainer_settings(out, epochs, 5),
        "model": {
            "class_path": "densekit.tasks.SegmentationTask",
            "init_args": {
                "num_classes": 2,
                "class_names": ["background", "building"],
                "backbone": backbone,
                "weights": weights,
                "layers": "last4",
                "head": "linear",
                "loss": "ce",
                "class_weights": [1.0, 8.0],  # buildings are about 5 % of the pixels
                "warmup_steps": 5,
                "bands": bands,
                "mean": [mean] * 3,
                "std": [std] * 3,
                "feature_cache": str(out / "feature_cache"),
                "head_grid": {"lr": [0.001, 0.003, 0.01, 0.03], "layers": ["last4"]},
            },
        },
        "data": {
            "class_path": "densekit.data.SegmentationDataModule",
            "init_args": {
                "images": str(GEO_IMAGE),
                "labels": str(GEO_LABELS),
                "bands": bands,
                "label_map": {0: 0, 255: 1},
                "split": SPLIT,
                "window": 112,
                "batch_size": 8,
            },
        },
    }


def benchmark_card(out: Path, config: dict, backbone: str, weights: str) -> Path:
    """A ``densekit benchmark`` card on the bundled tile: the quickstart's head against a
    U-Net from scratch at 10 % and 100 % of the labelled windows, two seeds."""
    from densekit.benchmark.card import load_card

    model = dict(config["model"]["init_args"])
    data = dict(config["data"]["init_args"])
    stats = {k: model[k] for k in ("bands", "mean", "std")}
    card = {
        "name": "quickstart_buildings",
        "description": "SpaceNet Atlanta buildings (bundled tile), label-fraction benchmark",
        "task": "segmentation",
        "metric": "iou_building",
        "data": {**data, "samples_per_epoch": 32},
        "model": {
            "num_classes": 2,
            "class_names": ["background", "building"],
            "loss": "ce",
            "class_weights": model["class_weights"],
            "warmup_steps": 5,
            **stats,
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
                "model": {"head": "linear", "layers": "last4", "head_grid": model["head_grid"]},
            }
        ],
        "baselines": [
            {
                "name": "unet",
                "model": {
                    "head": "unet",
                    "unet_encoder": "resnet18",
                    "in_channels": 1,
                    "bands": [1],
                    "mean": stats["mean"][:1],
                    "std": stats["std"][:1],
                },
                "data": {
                    "bands": [1],
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


def run(out: Path, backbone: str, weights: str, epochs: int, console: Console) -> dict:
    import rasterio
    import torch

    from densekit.data.stats import band_statistics
    from densekit.inference import TileOptions, load_trained, tile_raster

    steps = Steps(console, 6)
    steps.start(f"band statistics of {GEO_IMAGE.name} (SpaceNet Atlanta, 900 x 900, 0.5 m)")
    stats = band_statistics([str(GEO_IMAGE)], [1])
    write_yaml(
        out / "stats.yaml",
        {"model": {"init_args": {"bands": [1], "mean": stats["mean"], "std": stats["std"]}}},
        "# densekit stats over the quickstart image (file units, nodata excluded)\n",
    )
    steps.done(f"mean {stats['mean'][0]:.1f}, std {stats['std'][0]:.1f} -> {out / 'stats.yaml'}")

    steps.start(f"training linear heads on {backbone} (left 60 % of the columns; feature cache)")
    config = out / "quickstart.yaml"
    settings = geo_config(out, stats, backbone, weights, epochs)
    write_yaml(
        config,
        settings,
        "# The config densekit quickstart trained with; rerun: densekit fit --config THIS\n",
    )
    benchmark_card(out, settings, backbone, weights)
    shutil.rmtree(out / "run", ignore_errors=True)
    lightning(["fit", "--config", str(config)])
    ckpt = out / "model.ckpt"
    copy_file(last_checkpoint(out / "run"), ckpt)
    steps.done(f"-> {ckpt}")

    steps.start("testing on the right 20 % of the columns (never seen in training)")
    lightning(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    test = test_metrics(out / "run")
    copy_file(sorted((out / "run").rglob("test_metrics.json"))[-1], out / "test_metrics.json")
    scores = test["metrics"]
    steps.done(f"building IoU {scores['iou_building']:.3f}, mIoU {scores['miou']:.3f}")

    steps.start("densekit tile over the whole image")
    model = load_trained(ckpt)
    prediction = out / "prediction.tif"
    tile_raster(model, GEO_IMAGE, prediction, options=TileOptions(tile=224, overlap=32))
    with rasterio.open(prediction) as src, rasterio.open(GEO_IMAGE) as ref:
        pred = src.read(1)
        same = src.crs == ref.crs and src.transform == ref.transform
        image = ref.read(1)
    with rasterio.open(GEO_LABELS) as src:
        label = (src.read(1) == 255).astype(np.uint8)
    first_test = round(SPLIT[0] * 900) + round(SPLIT[1] * 900)
    p = pred[:, first_test:] == 1
    t = label[:, first_test:] == 1
    tiled_iou = float((p & t).sum() / max((p | t).sum(), 1))
    steps.done(
        f"-> {prediction} (CRS and transform of the input: {same}); "
        f"building IoU on the test columns {tiled_iou:.3f}"
    )

    steps.start("pictures: image | prediction | label, and the PCA of the features")
    panels(
        out / "overview.png",
        [
            ("image (panchromatic)", stretch(image, image > 0), "gray"),
            ("prediction (densekit tile)", pred.astype(float), "gray"),
            ("label (SpaceNet footprints)", label.astype(float), "gray"),
        ],
        f"{backbone}, linear head; test columns right of the dashed line (IoU {tiled_iou:.2f})",
        first_test,
    )
    pca_picture(out / "features_pca.png", model.model, image)
    steps.done(f"-> {out / 'overview.png'}, {out / 'features_pca.png'}")

    steps.start("metrics")
    record = {
        "domain": "geo",
        "data": str(GEO_IMAGE),
        "backbone": test.get("backbone"),
        "test_metrics": scores,
        "tiled_iou_building_test_columns": tiled_iou,
        "selected_head": (test.get("head_grid") or {}).get("selected"),
        "seconds": steps.times,
        "outputs": {k: str(out / k) for k in OUTPUTS},
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_outputs({out / "metrics.json": lambda tmp: tmp.write_text(text)})
    steps.done(f"-> {out / 'metrics.json'}")
    record["total_seconds"] = round(time.perf_counter() - steps.t0, 1)
    return record


def pca_picture(path: Path, model: Any, image: np.ndarray) -> None:
    """The first three principal components of the backbone's last layer on the whole image."""
    import torch
    import torchvision.io

    from densekit.features import pca_picture

    x = torch.from_numpy(image.astype(np.float32))[None, None].repeat(1, 3, 1, 1)
    with torch.inference_mode():
        maps = model.backbone(model.normalize(x))
    stride = model.backbone.patch_size
    rgb = pca_picture(maps[-1], image.shape, stride, image == 0)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    atomic_outputs({path: lambda tmp: torchvision.io.write_png(tensor, str(tmp))})
