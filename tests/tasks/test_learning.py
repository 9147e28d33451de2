"""Each task learns on small generated chips (tests/data/chips) with a tiny backbone: the loss
falls and the validation metric beats the best trivial predictor."""

import warnings

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from helpers import FIXTURES, TEST_DATA, TINY_DIMS

from densekit.data import ChangeDataModule, DepthDataModule, SegmentationDataModule
from densekit.errors import DensekitError
from densekit.tasks import ChangeDetectionTask, DepthTask, SegmentationTask

CHIPS = TEST_DATA / "chips"
TINY = {
    "weights": str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
    "backbone_overrides": {**TINY_DIMS, "mlp_ratio": 4},
    "scale": 1 / 255,
}


def fit(task, data, epochs):
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    batch = next(iter(_loader(data)))
    with torch.no_grad():
        before = float(task.loss_fn(task(*task.inputs(batch)), task.target(batch)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, data)
        metrics = trainer.validate(task, data, verbose=False)[0]
    task.eval()
    with torch.no_grad():
        after = float(task.loss_fn(task(*task.inputs(batch)), task.target(batch)))
    return before, after, metrics


def _loader(data):
    data.setup("fit")
    return data.train_dataloader()


def read_all(folder):
    return [rasterio.open(p).read(1) for p in sorted(folder.glob("*.tif"))]


def trivial_miou(labels, ignore=255):
    """mIoU of predicting the majority class everywhere (classes present in the targets)."""
    y = np.concatenate([lab.ravel() for lab in labels])
    y = y[y != ignore]
    classes, counts = np.unique(y, return_counts=True)
    return counts.max() / y.size / len(classes)


def seg_data():
    return SegmentationDataModule(
        images=str(CHIPS / "seg/images"),
        labels=str(CHIPS / "seg/labels"),
        val_images=str(CHIPS / "seg/images_val"),
        val_labels=str(CHIPS / "seg/labels_val"),
        batch_size=8,
    )


@pytest.mark.parametrize(
    ("head", "layers", "extra"),
    [
        ("linear", "last4", {"lr": 1e-2}),
        ("dpt", "dpt", {"lr": 3e-3, "dpt_features": 32}),
        (
            "unet",
            "last",
            {
                "lr": 3e-3,
                "unet_encoder": "resnet18",
                "mean": [110.0] * 3,
                "std": [60.0] * 3,
                "scale": None,
            },
        ),
    ],
)
def test_segmentation_learns(head, layers, extra):
    task = SegmentationTask(num_classes=3, head=head, layers=layers, **{**TINY, **extra})
    before, after, metrics = fit(task, seg_data(), epochs=40)
    assert after < 0.7 * before
    trivial = trivial_miou(read_all(CHIPS / "seg/labels_val"))
    assert metrics["val/miou"] > trivial + 0.1, (metrics["val/miou"], trivial)


@pytest.mark.parametrize("mode", ["regression", "bins"])
def test_depth_learns(mode):
    data = DepthDataModule(
        images=str(CHIPS / "depth/images"),
        depths=str(CHIPS / "depth/depths"),
        val_images=str(CHIPS / "depth/images_val"),
        val_depths=str(CHIPS / "depth/depths_val"),
        batch_size=8,
    )
    task = DepthTask(
        layers="last4",
        depth_mode=mode,
        num_bins=64,
        min_depth=0.5,
        max_depth=6,
        loss="silog+grad",
        lr=1e-2,
        **TINY,
    )
    before, after, metrics = fit(task, data, epochs=60)
    assert after < 0.7 * before
    train = np.concatenate([d.ravel() for d in read_all(CHIPS / "depth/depths")])
    val = [d for d in read_all(CHIPS / "depth/depths_val")]
    constant = np.median(train[np.isfinite(train) & (train > 0)])
    rmse_trivial = np.mean(
        [np.sqrt(np.mean((d[np.isfinite(d) & (d > 0)] - constant) ** 2)) for d in val]
    )
    assert metrics["val/rmse"] < 0.6 * rmse_trivial, (metrics["val/rmse"], rmse_trivial)
    assert metrics["val/delta1"] > 0.8


def test_change_learns():
    data = ChangeDataModule(
        images1=str(CHIPS / "change/a"),
        images2=str(CHIPS / "change/b"),
        labels=str(CHIPS / "change/labels"),
        val_images1=str(CHIPS / "change/a_val"),
        val_images2=str(CHIPS / "change/b_val"),
        val_labels=str(CHIPS / "change/labels_val"),
        batch_size=8,
    )
    task = ChangeDetectionTask(layers="last4", fusion="absdiff", lr=1e-2, **TINY)
    before, after, metrics = fit(task, data, epochs=40)
    assert after < 0.7 * before
    y = np.concatenate([lab.ravel() for lab in read_all(CHIPS / "change/labels_val")])
    p = y.mean()
    trivial_f1 = 2 * p / (1 + p)  # "everything changed"; "nothing changed" scores 0
    assert metrics["val/f1"] > trivial_f1 + 0.2, (metrics["val/f1"], trivial_f1)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_time_limited_run_without_step_count(schedule):
    """A run limited only by ``trainer.max_time`` (``max_epochs: -1``) has no step count: a
    decaying schedule is refused with the keys to set, a constant one trains."""
    task = SegmentationTask(num_classes=3, head="linear", schedule=schedule, warmup_steps=2, **TINY)
    trainer = L.Trainer(
        max_epochs=-1,
        max_time={"seconds": 3},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if schedule == "cosine":
            with pytest.raises(DensekitError, match=r"trainer\.max_steps.*schedule: constant"):
                trainer.fit(task, seg_data())
        else:
            trainer.fit(task, seg_data())
            assert trainer.global_step > 2
