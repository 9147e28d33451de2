#!/usr/bin/env python3
"""Checkpoints of densekit as it was before the model redesign, with what they gave then.

Run once on commit 5a9e606 (the last commit before ``densekit.models`` existed), from the
repository root, with one torch thread::

    OMP_NUM_THREADS=1 python tests/data/checkpoints_v0/generate.py

For every kind in :data:`KINDS` it trains a tiny model for three steps through ``densekit fit``
(seed 0; a random tiny backbone, saved in the checkpoint, or the bundled ``densekit_vitt16``)
and records what that checkpoint gives through every path that reads it:

* ``<kind>.ckpt``: the checkpoint as ``densekit fit`` wrote it, without the optimizer state
  (no inference path reads it; it would double the files);
* ``<kind>.npz``: ``tile_map`` / ``tile_probs`` (``densekit tile`` on ``inputs/a.tif``, and
  ``inputs/b.tif`` as the second date), ``predict_<name>`` (each window ``densekit predict``
  wrote), ``volume`` (``densekit volume`` on the bundled CT, medical kinds only);
* ``expected.json``: the test metrics of ``densekit test`` per kind, and the machine and torch
  version that produced every number here (floating-point results are bit-identical only on
  the same CPU family and torch build).

``tests/models/test_legacy_checkpoints.py`` loads these with the current code and compares.
The configs come from :func:`config`, which that test imports too: it only writes LightningCLI
YAML, which both versions read.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CHIPS = REPO / "tests" / "data" / "chips"
CT = REPO / "densekit" / "samples" / "dcmqi_liver" / "ct"
CT_SEG = REPO / "densekit" / "samples" / "dcmqi_liver" / "liver_seg.dcm"
INPUTS = HERE / "inputs"

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 112, "mlp_ratio": 4}
RANDOM = {"backbone": "dinov2_vits14", "weights": "random", "backbone_overrides": TINY}
BUNDLED = {"backbone": "densekit_vitt16", "weights": "bundled"}
STATS = {"mean": [110.0, 105.0, 100.0], "std": [40.0, 38.0, 36.0]}

# kind -> (task, model init_args, data kind); every tiny backbone is random (saved in the
# checkpoint) unless the kind says bundled
KINDS: dict[str, tuple[str, dict[str, Any], str]] = {
    "seg_linear": ("SegmentationTask", {"num_classes": 3, "scale": 1 / 255}, "seg"),
    "seg_class_weights": (  # the loss's weights are in the task's state dict, not the model's
        "SegmentationTask",
        {"num_classes": 3, "class_weights": [1.0, 2.0, 3.0], "loss": "ce+dice", "scale": 1 / 255},
        "seg",
    ),
    "seg_dpt": (
        "SegmentationTask",
        {"num_classes": 3, "head": "dpt", "layers": "last4", "dpt_features": 16, **STATS},
        "seg",
    ),
    "seg_unet": (
        "SegmentationTask",
        {"num_classes": 3, "head": "unet", "unet_encoder": "tu-mobilenetv3_small_050", **STATS},
        "seg",
    ),
    "seg_grid": (
        "SegmentationTask",
        {
            "num_classes": 3,
            "layers": "last4",
            "scale": 1 / 255,
            "class_names": ["bg", "square", "disc"],
            "head_grid": {"lr": [0.001, 0.01], "layers": ["last", "last4"]},
        },
        "seg",
    ),
    "seg_detail": (
        "SegmentationTask",
        {
            "num_classes": 3,
            "input_upscale": 1.5,
            "upsampler": "guided",
            "pixel_branch": 4,
            "detail_channels": 8,
            "backbone_bands": [2, 0, 1],
            **STATS,
        },
        "seg",
    ),
    "seg_bundled": (
        "SegmentationTask",
        {"num_classes": 3, "layers": "last4", "bands": [1, 2, 3], **STATS, **BUNDLED},
        "seg",
    ),
    "depth_bins": (
        "DepthTask",
        {"num_bins": 16, "max_depth": 6.0, "scale": 1 / 255, "dropout": 0.1},
        "depth",
    ),
    "depth_dpt_regression": (
        "DepthTask",
        {
            "head": "dpt",
            "layers": "last4",
            "dpt_features": 16,
            "depth_mode": "regression",
            "loss": "l1+grad",
            "scale": 1 / 255,
        },
        "depth",
    ),
    "change_linear": ("ChangeDetectionTask", {"scale": 1 / 255, "fusion": "absdiff"}, "change"),
    "change_dpt_concat": (
        "ChangeDetectionTask",
        {"head": "dpt", "layers": "last4", "dpt_features": 16, "fusion": "concat", **STATS},
        "change",
    ),
    "change_semantic": (
        "ChangeDetectionTask",
        {"num_classes": 3, "fusion": "diff", "scale": 1 / 255, "loss": "bce"},
        "change",
    ),
    "change_detail": (
        "ChangeDetectionTask",
        {"input_upscale": 2.0, "upsampler": "guided", "pixel_branch": 4, "scale": 1 / 255},
        "change",
    ),
    "medical_linear": (
        "SegmentationTask",
        {"num_classes": 2, "class_names": ["background", "liver"], "scale": 1.0, "lr": 0.01},
        "medical",
    ),
    "medical_guided_25d": (
        "SegmentationTask",
        {
            "num_classes": 2,
            "class_names": ["background", "liver"],
            "scale": 1.0,
            "upsampler": "guided",
            "layers": "last4",
        },
        "medical",
    ),
}


def data_config(data: str, kind: str) -> dict[str, Any]:
    """The data module of a data kind (chips of tests/data/chips, or the bundled CT)."""
    if data == "seg":
        return {
            "class_path": "densekit.data.SegmentationDataModule",
            "init_args": {
                "images": str(CHIPS / "seg/images"),
                "labels": str(CHIPS / "seg/labels"),
                "val_images": str(CHIPS / "seg/images_val"),
                "val_labels": str(CHIPS / "seg/labels_val"),
                "test_images": str(CHIPS / "seg/images_val"),
                "test_labels": str(CHIPS / "seg/labels_val"),
                "batch_size": 4,
            },
        }
    if data == "depth":
        return {
            "class_path": "densekit.data.DepthDataModule",
            "init_args": {
                "images": str(CHIPS / "depth/images"),
                "depths": str(CHIPS / "depth/depths"),
                "val_images": str(CHIPS / "depth/images_val"),
                "val_depths": str(CHIPS / "depth/depths_val"),
                "test_images": str(CHIPS / "depth/images_val"),
                "test_depths": str(CHIPS / "depth/depths_val"),
                "batch_size": 4,
            },
        }
    if data == "change":
        c = CHIPS / "change"
        return {
            "class_path": "densekit.data.ChangeDataModule",
            "init_args": {
                "images1": str(c / "a"),
                "images2": str(c / "b"),
                "labels": str(c / "labels"),
                "val_images1": str(c / "a_val"),
                "val_images2": str(c / "b_val"),
                "val_labels": str(c / "labels_val"),
                "test_images1": str(c / "a_val"),
                "test_images2": str(c / "b_val"),
                "test_labels": str(c / "labels_val"),
                "batch_size": 4,
                # the semantic change kind reads the binary labels as classes 0..1 of 3
            },
        }
    return {
        "class_path": "densekit.medical.MedicalSegmentationDataModule",
        "init_args": {
            "cases": [{"image": str(CT), "mask": str(CT_SEG)}],
            "segments": {"Liver": 1},
            "plane": "axial",
            "context": 1 if kind == "medical_guided_25d" else 0,
            "intensity": {"ct_window": "soft_tissue"},
            "split": [0.34, 0.33, 0.33],
            "split_by": "slice",
            "batch_size": 1,
        },
    }


def config(kind: str, root: Path) -> dict[str, Any]:
    """The ``densekit fit|test|predict`` config of ``kind``, writing under ``root``."""
    task, model, data = KINDS[kind]
    backbone = {} if "weights" in model or model.get("head") == "unet" else RANDOM
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 3,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root),
        },
        "model": {
            "class_path": f"densekit.tasks.{task}",
            "init_args": {**backbone, **model},
        },
        "data": data_config(data, kind),
    }


def write_inputs() -> None:
    """Two 3-band uint8 rasters (UTM 33N, 0 = nodata with a nodata box), 150 x 130 pixels."""
    import rasterio
    from rasterio.transform import from_origin

    INPUTS.mkdir(exist_ok=True)
    h, w = 130, 150
    yy, xx = np.mgrid[0:h, 0:w]
    for name, seed, shift in (("a", 0, 0), ("b", 1, 3)):
        rng = np.random.default_rng(seed)
        data = np.stack(
            [
                ((xx // 9 + (yy + shift) // 7 + b) % 5) * 40 + rng.integers(1, 30, (h, w))
                for b in range(3)
            ]
        ).astype(np.uint8)
        data[:, :20, :30] = 0
        with rasterio.open(
            INPUTS / f"{name}.tif",
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=3,
            dtype="uint8",
            nodata=0,
            crs="EPSG:32633",
            transform=from_origin(500000, 4600000, 10, 10),
        ) as dst:
            dst.write(data)


def run_cli(argv: list[str]) -> None:
    from densekit.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    if code != 0:
        raise SystemExit(f"densekit {' '.join(argv)} failed with {code}")


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def predictions(folder: Path) -> dict[str, np.ndarray]:
    import rasterio

    out = {}
    for f in sorted(folder.rglob("*.tif")):
        with rasterio.open(f) as src:
            out[f"predict_{f.stem}"] = src.read(1)
    return out


def tiled(ckpt: Path, kind: str, out: Path) -> dict[str, np.ndarray]:
    """``densekit tile`` of ``ckpt`` over the inputs (tile 56 / overlap 14, or 64 / 16 for the
    bundled patch-16 backbone; 64 / 16 for the U-Net)."""
    import rasterio

    patch16 = "bundled" in kind or "unet" in kind
    tile, overlap = ("64", "16") if patch16 else ("56", "14")
    argv = ["tile", "--checkpoint", str(ckpt), "--input", str(INPUTS / "a.tif")]
    if kind.startswith("change"):
        argv += ["--input2", str(INPUTS / "b.tif")]
    argv += ["--output", str(out), "--tile", tile, "--overlap", overlap, "--batch-size", "3"]
    argv += ["--probabilities", "--no-progress"]
    run_cli(argv)
    result = {}
    with rasterio.open(out) as src:
        result["tile_map"] = src.read(1)
    probs = out.with_name(out.stem + "_probs.tif")
    if probs.exists():
        with rasterio.open(probs) as src:
            result["tile_probs"] = src.read()
    return result


def main() -> None:
    import torch

    torch.set_num_threads(1)
    write_inputs()
    expected: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "commit": "5a9e606",
        "test_metrics": {},
    }
    kinds = sys.argv[1:] or list(KINDS)
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            cfg = write_yaml(root / "config.yaml", config(kind, root / "run"))
            run_cli(["fit", "--config", str(cfg)])
            found = sorted((root / "run").rglob("*.ckpt"))
            ckpt = HERE / f"{kind}.ckpt"
            stored = torch.load(found[-1], map_location="cpu", weights_only=True)
            del stored["optimizer_states"]  # not read by any inference path; keeps files small
            torch.save(stored, ckpt)
            run_cli(["test", "--config", str(cfg), "--ckpt_path", str(ckpt)])
            metrics = json.loads(next((root / "run").rglob("test_metrics.json")).read_text())
            expected["test_metrics"][kind] = metrics["metrics"]
            arrays: dict[str, np.ndarray] = {}
            if KINDS[kind][2] == "medical":
                from densekit.medical import read_volume

                out = root / "labels.nii.gz"
                run_cli(
                    [
                        "volume",
                        "--checkpoint",
                        str(ckpt),
                        "--input",
                        str(CT),
                        "--output",
                        str(out),
                        "--no-progress",
                    ]
                )
                arrays["volume"] = read_volume(out).array
            else:
                run_cli(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt)])
                arrays.update(predictions(root / "run"))
                arrays.update(tiled(ckpt, kind, root / "tiled.tif"))
            np.savez_compressed(HERE / f"{kind}.npz", **arrays)
            print(kind, {k: v.shape for k, v in arrays.items()}, metrics["metrics"])
    path = HERE / "expected.json"
    if path.exists() and sys.argv[1:]:
        old = json.loads(path.read_text())
        old["test_metrics"].update(expected["test_metrics"])
        expected["test_metrics"] = old["test_metrics"]
    path.write_text(json.dumps(expected, indent=1) + "\n")


def cpu_model() -> str:
    """The CPU's model name, family, model number and a digest of its instruction-set flags:
    what decides which floating-point kernels torch runs."""
    import hashlib

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:12]
    return (
        f"{fields.get('model name')} family {fields.get('cpu family')} model "
        f"{fields.get('model')} flags {flags}"
    )


if __name__ == "__main__":
    main()
