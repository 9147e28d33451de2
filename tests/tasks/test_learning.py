"""Each task learns on small generated chips (tests/data/chips) with a tiny backbone: the loss
falls and the validation metric beats the best trivial predictor."""

import warnings

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from helpers import FIXTURES, TEST_DATA, TINY_DIMS

from densekit.errors import DensekitError
from densekit.tasks import ChangeDetectionTask, DepthTask, SegmentationTask

CHIPS = TEST_DATA / "chips"
TINY = {
    "weights": str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
    "backbone_overrides": {**TINY_DIMS, "mlp_ratio": 4},
    "scale": 1 / 255,
}


def train_and_validate(fit, task, data, epochs):
    """The loss on one training batch before and after ``epochs`` epochs, and the validation
    metrics at the end."""
    batch = next(iter(_loader(data)))
    with torch.no_grad():
        before = float(task.loss_fn(task(*task.inputs(batch)), task.target(batch)))
    trainer = fit(task, data, max_epochs=epochs, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


@pytest.mark.parametrize(
    ("head", "layers", "extra"),
    [
        ("linear", "last4", {"lr": 1e-2}),
        ("dpt", "dpt", {"lr": 3e-3, "dpt_features": 32}),
        pytest.param(
            "unet",
            "last",
            {
                "lr": 3e-3,
                "unet_encoder": "resnet18",
                "mean": [110.0] * 3,
                "std": [60.0] * 3,
                "scale": None,
            },
            marks=pytest.mark.slow,  # a U-Net from scratch: 12 s
        ),
    ],
)
def test_segmentation_learns(head, layers, extra, chips, fit):
    task = SegmentationTask(num_classes=3, head=head, layers=layers, **{**TINY, **extra})
    before, after, metrics = train_and_validate(
        fit, task, chips("segmentation", batch_size=8), epochs=40
    )
    assert after < 0.7 * before
    trivial = trivial_miou(read_all(CHIPS / "seg/labels_val"))
    assert metrics["val/miou"] > trivial + 0.1, (metrics["val/miou"], trivial)


@pytest.mark.parametrize("mode", ["regression", "bins"])
def test_depth_learns(mode, chips, fit):
    data = chips("depth", batch_size=8)
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
    # regression sits on a plateau (val RMSE ~1.04) for a while: after 60 epochs half the
    # shuffling seeds were past it, after 150 all of seeds 0-3 (RMSE 0.122-0.127)
    epochs = 150 if mode == "regression" else 60
    before, after, metrics = train_and_validate(fit, task, data, epochs=epochs)
    assert after < 0.7 * before
    train = np.concatenate([d.ravel() for d in read_all(CHIPS / "depth/depths")])
    val = [d for d in read_all(CHIPS / "depth/depths_val")]
    constant = np.median(train[np.isfinite(train) & (train > 0)])
    rmse_trivial = np.mean(
        [np.sqrt(np.mean((d[np.isfinite(d) & (d > 0)] - constant) ** 2)) for d in val]
    )
    assert metrics["val/rmse"] < 0.6 * rmse_trivial, (metrics["val/rmse"], rmse_trivial)
    assert metrics["val/delta1"] > 0.8


def test_change_learns(chips, fit):
    data = chips("change", batch_size=8)
    task = ChangeDetectionTask(layers="last4", fusion="absdiff", lr=1e-2, **TINY)
    before, after, metrics = train_and_validate(fit, task, data, epochs=40)
    assert after < 0.7 * before
    y = np.concatenate([lab.ravel() for lab in read_all(CHIPS / "change/labels_val")])
    p = y.mean()
    trivial_f1 = 2 * p / (1 + p)  # "everything changed"; "nothing changed" scores 0
    assert metrics["val/f1"] > trivial_f1 + 0.2, (metrics["val/f1"], trivial_f1)


class StopAfter(L.Callback):
    """Ends training after ``steps`` optimizer steps, whatever the clock says."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_time_limited_run_without_step_count(schedule, chips, trainer):
    """A run limited only by ``trainer.max_time`` (``max_epochs: -1``) has no step count: a
    decaying schedule is refused with the keys to set, a constant one trains (here stopped
    after 3 steps by a callback, so the test does not depend on the machine's speed)."""
    task = SegmentationTask(num_classes=3, head="linear", schedule=schedule, warmup_steps=2, **TINY)
    run = trainer(
        max_epochs=-1, max_time={"hours": 1}, limit_val_batches=0, callbacks=[StopAfter(3)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if schedule == "cosine":
            with pytest.raises(DensekitError, match=r"trainer\.max_steps.*schedule: constant"):
                run.fit(task, chips("segmentation", batch_size=8))
        else:
            run.fit(task, chips("segmentation", batch_size=8))
            assert run.global_step == 3
            assert run.lr_scheduler_configs[0].scheduler.get_last_lr() == [task.hp.lr]
