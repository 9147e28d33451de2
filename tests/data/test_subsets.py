"""Labelled subsets: nested across fractions, reproducible by seed, stratified on request."""

import json

import pytest
from helpers import TEST_DATA

from densekit.data import DepthDataModule, SegmentationDataModule
from densekit.data.subsets import nested_order, subset_size
from densekit.errors import DensekitError

CHIPS = TEST_DATA / "chips"


def windows(fraction=None, count=None, seed=0, stratify=False, **kwargs):
    dm = SegmentationDataModule(
        images=str(CHIPS / "seg/images"),
        labels=str(CHIPS / "seg/labels"),
        window=20,
        label_fraction=fraction,
        label_count=count,
        subset_seed=seed,
        stratify=stratify,
        **kwargs,
    )
    dm.setup("fit")
    dataset = dm.datasets["train"]
    return dm, [(s.images, s.window) for s in dataset.samples]


def test_fractions_are_nested_and_reproducible_by_seed():
    _, everything = windows()
    n = len(everything)
    assert n == 72  # 8 chips of 60 x 60 in windows of 20
    for seed in (0, 1):
        dm, small = windows(0.05, seed=seed)
        _, medium = windows(0.25, seed=seed)
        _, full = windows(1.0, seed=seed)
        assert len(small) == round(0.05 * n) and len(medium) == round(0.25 * n)
        assert set(small) < set(medium) < set(full) == set(everything)
        assert dm.train_subset == {"labelled": n, "kept": len(small)}
        assert windows(0.25, seed=seed)[1] == medium  # the same seed, the same windows
    assert set(windows(0.25, seed=0)[1]) != set(windows(0.25, seed=1)[1])


def test_counts_are_nested_and_at_least_one_window():
    _, one = windows(count=1, seed=3)
    _, five = windows(count=5, seed=3)
    assert len(one) == 1 and len(five) == 5 and set(one) < set(five)
    assert len(windows(0.001)[1]) == 1  # a fraction rounds to at least one window


def test_stratified_order_takes_the_rarest_class_first():
    classes = [{0}] * 9 + [{0, 2}] + [{0, 1}] * 5
    for seed in range(5):
        order = nested_order(len(classes), seed, classes)
        assert order[0] == 9  # the only item with class 2
        assert 1 in classes[order[1]]  # then the next rarest class
        assert sorted(order) == list(range(len(classes)))
    assert nested_order(15, 0) == nested_order(15, 0) != nested_order(15, 1)


def classes_of(dm):
    dataset = dm.datasets["train"]
    found = set()
    for i in range(len(dataset)):
        found |= set(dataset[i]["mask"].unique().tolist())
    return found - {255}


def test_stratified_subsets_of_real_windows_hold_every_class():
    dm, _ = windows()
    assert classes_of(dm) == {0, 1, 2}
    plain = [classes_of(windows(count=3, seed=seed)[0]) for seed in range(6)]
    assert any(found != {0, 1, 2} for found in plain)  # without stratify a class goes missing
    for seed in range(6):
        assert classes_of(windows(count=3, seed=seed, stratify=True)[0]) == {0, 1, 2}


def epoch_windows(dm):
    """(file, column, row) of every training item of one epoch, through the loader."""
    seen = []
    for batch in dm.train_dataloader():
        for key in batch["cache_keys"][0]:
            record = json.loads(key)
            seen.append((record["files"][0][0], *record["window"][:2]))
    return seen


def test_grid_windows_fill_samples_per_epoch_from_every_window():
    dm, few = windows(count=3, samples_per_epoch=10, batch_size=5)
    assert len(dm.datasets["train"]) == 3 and len(few) == 3
    seen = epoch_windows(dm)
    assert len(seen) == 10 and len(set(seen)) == 3  # the 3 windows, repeated to 10 items
    dm, all_windows = windows(samples_per_epoch=16, batch_size=8)
    assert len(all_windows) == 72
    epochs = [epoch_windows(dm) for _ in range(6)]
    assert all(len(e) == len(set(e)) == 16 for e in epochs)  # 16 distinct windows per epoch
    union = {w for e in epochs for w in e}
    assert len(union) > 32 and max(row for _, _, row in union) == 40  # not only the first 16


def test_random_windows_stay_inside_the_kept_windows():
    dm, kept = windows(count=2, seed=5, train_windows="random", samples_per_epoch=40)
    dataset = dm.datasets["train"]
    assert {(s.images, s.region) for s in dataset.samples} == set(kept)
    for _ in range(40):
        drawn = dataset._draw()
        assert (drawn.images, drawn.window) in set(kept) and drawn.region == drawn.window
    assert all((dataset[i]["mask"] != 255).any() for i in range(len(dataset)))


def test_bad_subset_arguments_are_named():
    with pytest.raises(DensekitError, match="label_fraction must be in"):
        windows(1.5)
    with pytest.raises(DensekitError, match="label_count must be >= 1"):
        windows(count=0)
    with pytest.raises(DensekitError, match="label_count 100 is more than the 72 labelled"):
        windows(count=100)
    with pytest.raises(DensekitError, match="depth targets have none"):
        DepthDataModule(images="a.tif", depths="b.tif", label_fraction=0.5, stratify=True)
    with pytest.raises(DensekitError, match="exactly one of label_fraction and label_count"):
        subset_size(10, 0.5, 3)
