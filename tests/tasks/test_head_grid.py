"""A grid of linear heads on one backbone pass: each head trains as it would alone, the best on
validation is selected and kept in the checkpoint, and bad grids are named."""

import json
import warnings

import lightning as L
import pytest
import torch
from helpers import FIXTURES, TINY_DIMS

from densekit.errors import DensekitError
from densekit.tasks import SegmentationTask

TINY = {
    "weights": str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
    "backbone_overrides": {**TINY_DIMS, "mlp_ratio": 4},
    "scale": 1 / 255,
    "num_classes": 3,
}


def grid_data(chips, **kwargs):
    """Windows of 28 pixels; the validation chips also as test chips."""
    return chips("segmentation", test=True, window=28, batch_size=4, **kwargs)


def test_a_grid_of_one_head_trains_exactly_as_the_plain_head(tmp_path, chips, fit):
    L.seed_everything(1)
    plain = SegmentationTask(**TINY, head="linear", layers="last", lr=0.01)
    L.seed_everything(1)
    grid = SegmentationTask(
        **TINY, head="linear", layers="last", head_grid={"lr": [0.01], "layers": ["last"]}
    )
    fit(
        plain,
        grid_data(chips),
        max_epochs=2,
        default_root_dir=tmp_path / "a",
        num_sanity_val_steps=0,
    )
    fit(
        grid,
        grid_data(chips),
        max_epochs=2,
        default_root_dir=tmp_path / "b",
        num_sanity_val_steps=0,
    )
    a = plain.model.head.state_dict()
    b = grid.model.head.heads[0].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_the_best_head_on_validation_is_selected_tested_and_saved(tmp_path, chips, fit):
    L.seed_everything(0)
    task = SegmentationTask(
        **TINY,
        layers="last4",
        head_grid={"lr": [1e-7, 0.03], "layers": ["last", "last4"]},
    )
    t = fit(task, grid_data(chips), max_epochs=2, default_root_dir=tmp_path)
    lrs = [g["initial_lr"] for g in t.optimizers[0].param_groups]
    assert lrs == [1e-7, 0.03, 1e-7, 0.03]  # one group per head, its own learning rate
    scores = task.model.head_grid.scores
    assert list(scores) == ["last_lr1e-07", "last_lr0.03", "last4_lr1e-07", "last4_lr0.03"]
    best = max(scores, key=scores.get)
    assert best.endswith("lr0.03")  # a head that hardly moves does not win
    assert task.model.head_grid.selected_name == best
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = t.test(task, grid_data(chips), verbose=False)[0]
    record = json.loads((tmp_path / "test_metrics.json").read_text())
    assert record["head_grid"]["selected"] == best and record["head_grid"]["val"] == scores
    # validation = test files here: the selected head's test mIoU is its validation mIoU
    assert test["test/miou"] == pytest.approx(scores[best], abs=1e-6)
    path = tmp_path / "grid.ckpt"
    t.save_checkpoint(path)
    loaded = SegmentationTask.load_from_checkpoint(path)
    assert int(loaded.model.head.selected) == int(task.model.head.selected)
    x = torch.rand(2, 3, 28, 28) * 255
    with torch.no_grad():
        task.eval(), loaded.eval()
        torch.testing.assert_close(loaded(x), task(x))


def test_bad_grids_are_named(tmp_path, chips, fit, trainer):
    with pytest.raises(DensekitError, match="head_grid trains linear heads; head is 'dpt'"):
        SegmentationTask(**TINY, head="dpt", head_grid={"lr": [0.1]})
    with pytest.raises(DensekitError, match="has 'last4' but the backbone gives 1 map"):
        SegmentationTask(**TINY, layers="last", head_grid={"lr": [0.1], "layers": ["last4"]})
    with pytest.raises(DensekitError, match="unknown keys \\['lrs'\\]"):
        SegmentationTask(**TINY, head_grid={"lrs": [0.1]})
    with pytest.raises(DensekitError, match=r"head_grid.lr must be a list"):
        SegmentationTask(**TINY, head_grid={"lr": 0.1})
    task = SegmentationTask(**TINY, head_grid={"lr": [0.1], "metric": "iou_nothing"})
    with pytest.raises(DensekitError, match="'iou_nothing' is not a validation metric"):
        fit(task, grid_data(chips), max_epochs=1, default_root_dir=tmp_path)
    no_val = chips("segmentation", val=False, window=28)
    task = SegmentationTask(**TINY, head_grid={"lr": [0.1]})
    with pytest.raises(DensekitError, match="picks its best head on validation data"):
        trainer(max_epochs=1, default_root_dir=tmp_path).fit(task, no_val)
