"""``densekit quickstart``: the main job, offline, on real data bundled with the package.

Remote sensing (default): the SpaceNet Atlanta building tile (900 x 900 WorldView panchromatic
at 0.5 m, CC BY-SA 4.0, see ``densekit/samples/ATTRIBUTION.md``) and the bundled backbone
``densekit_vitt16``. What a user would do, each step with its own output in ``--out``:

1. ``stats.yaml``: the band statistics of the image (``densekit stats``);
2. ``quickstart.yaml``: the training config (a ``densekit fit`` config; rerun it by hand);
3. training a linear head on the left 60 % of the columns (a grid of four learning rates on
   one backbone pass, the best chosen on the next 20 %; feature cache on), testing on the right
   20 %: ``model.ckpt`` and ``test_metrics.json``;
4. ``prediction.tif``: ``densekit tile`` over the whole tile (a tiled COG with the input's CRS
   and transform);
5. ``overview.png``: image | prediction | label, the test columns marked;
   ``features_pca.png``: the first three principal components of the backbone's last layer;
6. ``metrics.json``: the test metrics, the IoU of the tiled prediction on the test columns,
   the timings, and the output paths.

Medical (``--domain medical``): three CT slices with a DICOM SEG of the liver (dcmqi test data,
BSD-3-Clause); a linear head trained on one slice, validated on one, tested on one (one
patient: this checks the pipeline, it is not a benchmark); ``densekit volume`` writes
``liver.nii.gz`` and ``liver_seg.dcm`` (with Dice/HD95 against the reference SEG) and
``overview.png`` (CT | prediction | reference on the test slice).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from densekit.errors import DensekitError
from densekit.io import atomic_outputs
from densekit.pictures import panels, stretch

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
GEO_IMAGE = SAMPLES / "spacenet_atlanta" / "image.tif"
GEO_LABELS = SAMPLES / "spacenet_atlanta" / "buildings.tif"
CT_SERIES = SAMPLES / "dcmqi_liver" / "ct"
CT_SEG = SAMPLES / "dcmqi_liver" / "liver_seg.dcm"
SPLIT = [0.6, 0.2, 0.2]


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.n = 0
        self.t0 = self.tic = time.perf_counter()
        self.times: dict[str, float] = {}

    def start(self, what: str) -> None:
        self.n += 1
        self.what = what
        self.tic = time.perf_counter()
        self.console.print(f"[bold]\\[{self.n}/{self.total}][/] {what}")

    def done(self, result: str = "") -> None:
        dt = time.perf_counter() - self.tic
        self.times[self.what] = round(dt, 2)
        self.console.print(f"      {result}{' ' if result else ''}[dim]({dt:.1f} s)[/]")


def _lightning(argv: list[str]) -> None:
    from densekit.commands.lightning import lightning_command

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = lightning_command(argv)
    if code != 0:
        raise DensekitError(f"densekit {argv[0]} failed (exit status {code})")


def _write_yaml(path: Path, doc: dict[str, Any], header: str) -> None:
    text = header + yaml.safe_dump(doc, sort_keys=False, width=100)
    atomic_outputs({path: lambda tmp: tmp.write_text(text)})


def _copy(src: Path, dest: Path) -> None:
    atomic_outputs({dest: lambda tmp: shutil.copyfile(src, tmp)})


def _checkpoint(run: Path) -> Path:
    found = sorted(run.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DensekitError(f"training wrote no checkpoint under {run}")
    return found[-1]


def _test_metrics(run: Path) -> dict[str, Any]:
    found = sorted(run.rglob("test_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DensekitError(f"testing wrote no test_metrics.json under {run}")
    return dict(json.loads(found[-1].read_text()))


def _trainer(out: Path, epochs: int, log_every: int) -> dict[str, Any]:
    return {
        "max_epochs": epochs,
        "log_every_n_steps": log_every,
        "default_root_dir": str(out / "run"),
        "logger": False,
    }


def _geo_config(out: Path, stats: dict[str, Any], backbone: str, weights: str, epochs: int) -> dict:
    bands = [1, 1, 1]  # the panchromatic band repeated for an RGB backbone
    mean, std = stats["mean"][0], stats["std"][0]
    return {
        "seed_everything": 0,
        "trainer": _trainer(out, epochs, 5),
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


def _benchmark_card(out: Path, config: dict, backbone: str, weights: str) -> Path:
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
    _write_yaml(path, card, "# densekit benchmark on the quickstart's data (written by it)\n")
    load_card(path)  # a card that does not load is a bug here, not the user's
    return path


def run_geo(out: Path, backbone: str, weights: str, epochs: int, console: Console) -> dict:
    import rasterio
    import torch

    from densekit.data.stats import band_statistics
    from densekit.inference import TileOptions, load_trained, tile_raster

    steps = Steps(console, 6)
    steps.start(f"band statistics of {GEO_IMAGE.name} (SpaceNet Atlanta, 900 x 900, 0.5 m)")
    stats = band_statistics([str(GEO_IMAGE)], [1])
    _write_yaml(
        out / "stats.yaml",
        {"model": {"init_args": {"bands": [1], "mean": stats["mean"], "std": stats["std"]}}},
        "# densekit stats over the quickstart image (file units, nodata excluded)\n",
    )
    steps.done(f"mean {stats['mean'][0]:.1f}, std {stats['std'][0]:.1f} -> {out / 'stats.yaml'}")

    steps.start(f"training linear heads on {backbone} (left 60 % of the columns; feature cache)")
    config = out / "quickstart.yaml"
    settings = _geo_config(out, stats, backbone, weights, epochs)
    _write_yaml(
        config,
        settings,
        "# The config densekit quickstart trained with; rerun: densekit fit --config THIS\n",
    )
    _benchmark_card(out, settings, backbone, weights)
    shutil.rmtree(out / "run", ignore_errors=True)
    _lightning(["fit", "--config", str(config)])
    ckpt = out / "model.ckpt"
    _copy(_checkpoint(out / "run"), ckpt)
    steps.done(f"-> {ckpt}")

    steps.start("testing on the right 20 % of the columns (never seen in training)")
    _lightning(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    test = _test_metrics(out / "run")
    _copy(sorted((out / "run").rglob("test_metrics.json"))[-1], out / "test_metrics.json")
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
    _pca_picture(out / "features_pca.png", model.model, image)
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
        "outputs": {k: str(out / k) for k in OUTPUTS["geo"]},
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_outputs({out / "metrics.json": lambda tmp: tmp.write_text(text)})
    steps.done(f"-> {out / 'metrics.json'}")
    record["total_seconds"] = round(time.perf_counter() - steps.t0, 1)
    return record


def _pca_picture(path: Path, model: Any, image: np.ndarray) -> None:
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


def _medical_config(out: Path, backbone: str, weights: str, epochs: int) -> dict:
    return {
        "seed_everything": 0,
        "trainer": _trainer(out, epochs, 1),
        "model": {
            "class_path": "densekit.tasks.SegmentationTask",
            "init_args": {
                "num_classes": 2,
                "class_names": ["background", "liver"],
                "backbone": backbone,
                "weights": weights,
                "layers": "last4",
                "head": "linear",
                "loss": "ce",
                "lr": 0.01,
                "scale": 1.0,
                "upsampler": "guided",
            },
        },
        "data": {
            "class_path": "densekit.medical.MedicalSegmentationDataModule",
            "init_args": {
                "cases": [{"image": str(CT_SERIES), "mask": str(CT_SEG)}],
                "segments": {"Liver": 1},
                "plane": "axial",
                "context": 0,
                "intensity": {"ct_window": "soft_tissue"},
                "split": [0.34, 0.33, 0.33],
                "split_by": "slice",
                "batch_size": 1,
            },
        },
    }


def run_medical(out: Path, backbone: str, weights: str, epochs: int, console: Console) -> dict:
    from densekit.data.masks import read_seg
    from densekit.inference import segment_volume
    from densekit.medical import read_volume
    from densekit.medical.slices import Intensity, display_order

    steps = Steps(console, 4)
    steps.start(f"training a linear head on {backbone}: CT slice 1 train, 2 validation, 3 test")
    config = out / "quickstart.yaml"
    _write_yaml(
        config,
        _medical_config(out, backbone, weights, epochs),
        "# The config densekit quickstart --domain medical trained with; rerun: densekit fit "
        "--config THIS\n",
    )
    shutil.rmtree(out / "run", ignore_errors=True)
    _lightning(["fit", "--config", str(config)])
    ckpt = out / "model.ckpt"
    _copy(_checkpoint(out / "run"), ckpt)
    _lightning(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    test = _test_metrics(out / "run")
    _copy(sorted((out / "run").rglob("test_metrics.json"))[-1], out / "test_metrics.json")
    steps.done(f"-> {ckpt}; test slice liver IoU {test['metrics']['iou_liver']:.3f}")

    steps.start("densekit volume: NIfTI labels and a DICOM SEG, scored against the reference SEG")
    nifti = segment_volume(ckpt, CT_SERIES, out / "liver.nii.gz", reference=CT_SEG, progress=False)
    seg = segment_volume(ckpt, CT_SERIES, out / "liver_seg.dcm", reference=CT_SEG, progress=False)
    dice = nifti["record"]["metrics"]
    steps.done(f"-> {out / 'liver.nii.gz'}, {out / 'liver_seg.dcm'}; metrics {dice}")

    steps.start("picture: CT | prediction | reference on the test slice")
    ct = read_volume(CT_SERIES)
    masks, _ = read_seg(CT_SEG, ct)
    display = display_order(ct, "axial")  # the order and orientation training used
    k = ct.shape[0] - 1  # split_by: slice puts the last slice in display order in the test part
    window = display.apply(Intensity(ct_window="soft_tissue").apply(ct.array))[k]
    predicted = display.apply(read_volume(out / "liver.nii.gz").array)[k]
    reference = display.apply(masks[0])[k]
    panels(
        out / "overview.png",
        [
            ("CT (soft-tissue window)", window, "gray"),
            ("prediction (densekit volume)", predicted.astype(float), "gray"),
            ("reference (DICOM SEG, liver)", reference.astype(float), "gray"),
        ],
        f"{backbone}, linear head + guided upsampler; test slice ({k + 1} of 3 in display order)",
        None,
    )
    steps.done(f"-> {out / 'overview.png'}")

    steps.start("metrics")
    record = {
        "domain": "medical",
        "data": str(CT_SERIES),
        "backbone": test.get("backbone"),
        "test_metrics": test["metrics"],
        "volume_metrics": dice,
        "seconds": steps.times,
        "outputs": {k: str(out / k) for k in OUTPUTS["medical"]},
        "sidecars": [*nifti["outputs"][1:], *seg["outputs"][1:]],
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_outputs({out / "metrics.json": lambda tmp: tmp.write_text(text)})
    steps.done(f"-> {out / 'metrics.json'}")
    record["total_seconds"] = round(time.perf_counter() - steps.t0, 1)
    return record


OUTPUTS = {
    "geo": [
        "stats.yaml",
        "quickstart.yaml",
        "model.ckpt",
        "test_metrics.json",
        "prediction.tif",
        "overview.png",
        "features_pca.png",
        "metrics.json",
    ],
    "medical": [
        "quickstart.yaml",
        "model.ckpt",
        "test_metrics.json",
        "liver.nii.gz",
        "liver_seg.dcm",
        "overview.png",
        "metrics.json",
    ],
}
# written too (sidecars, the benchmark card); not listed in the summary
EXTRA_OUTPUTS = {
    "geo": ["prediction.json", "benchmark_card.yaml"],
    "medical": ["liver.nii.gz.metrics.json", "liver_seg.dcm.metrics.json"],
}
RUNNERS: dict[str, Callable[..., dict]] = {"geo": run_geo, "medical": run_medical}


def quickstart(
    out: str | Path | None = None,
    domain: str = "geo",
    backbone: str = "densekit_vitt16",
    weights: str = "bundled",
    epochs: int | None = None,
) -> dict[str, Any]:
    """Run the quickstart of ``domain`` (``"geo"`` or ``"medical"``) into ``out`` (default
    ``densekit-quickstart`` / ``densekit-quickstart-medical``)."""
    if domain not in RUNNERS:
        raise DensekitError(f"--domain {domain!r}: valid values are 'geo' and 'medical'")
    for f in (GEO_IMAGE, GEO_LABELS) if domain == "geo" else (CT_SERIES, CT_SEG):
        if not f.exists():
            raise DensekitError(f"the bundled sample {f} is missing: reinstall densekit")
    if weights not in ("bundled", "official", "random") and not Path(weights).expanduser().exists():
        raise DensekitError(
            f"--weights {weights}: no such file or folder; give a weights file, 'bundled' "
            "(densekit_vitt16), 'official' (downloads when online) or 'random'"
        )
    if out is None:
        out = "densekit-quickstart" + ("-medical" if domain == "medical" else "")
    folder = Path(out).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise DensekitError(f"--out {out}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for d in RUNNERS:  # no stale outputs of an earlier run (of either domain) left beside
        for name in [*OUTPUTS[d], *EXTRA_OUTPUTS[d]]:
            (folder / name).unlink(missing_ok=True)
    console = Console(stderr=True, soft_wrap=True)  # commands stay on one line for copying
    console.print(
        f"densekit quickstart ({domain}): offline, bundled data and backbone {backbone} "
        f"({weights}); outputs in {folder}"
    )
    default_epochs = 15 if domain == "geo" else 30
    record = RUNNERS[domain](folder, backbone, weights, epochs or default_epochs, console)
    _summary(console, folder, domain, record)
    return record


def _summary(console: Console, out: Path, domain: str, record: dict[str, Any]) -> None:
    console.print(f"\n[bold green]done[/] in {record['total_seconds']:.0f} s. Outputs:")
    for name in OUTPUTS[domain]:
        console.print(f"  {out / name}")
    console.print("\nNext:")
    console.print(
        f"  train it again or change it:   densekit fit --config {out / 'quickstart.yaml'}"
    )
    if domain == "geo":
        console.print(
            "  tile your own raster:          densekit tile --checkpoint "
            f"{out / 'model.ckpt'} --input YOUR.tif --output pred.tif"
        )
        console.print(
            f"  label fractions vs a U-Net:    densekit benchmark {out / 'benchmark_card.yaml'} "
            f"--out {out / 'benchmark'}"
        )
        console.print("  the same on CT:                densekit quickstart --domain medical")
    else:
        console.print(
            "  segment your own series:       densekit volume --checkpoint "
            f"{out / 'model.ckpt'} --input DICOM_FOLDER --output labels.nii.gz"
        )
    console.print(
        "  a downloaded DINOv2 backbone:  densekit quickstart --backbone dinov2_vits14 "
        "--weights dinov2_vits14_pretrain.pth"
    )
