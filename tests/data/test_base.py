"""The data-module base: its option groups, the checks of the shared and split arguments, and
that every module still takes the shared arguments as flat keys."""

from __future__ import annotations

import pytest
from helpers import TEST_DATA

from densekit.data import DepthDataModule, SegmentationDataModule
from densekit.data.base import Loaders
from densekit.data.subsets import LabelledSubset
from densekit.data.windows import check_split
from densekit.errors import DensekitError
from densekit.medical import Medical2DDataModule

CHIPS = TEST_DATA / "chips"
SEG = {"images": str(CHIPS / "seg/images"), "labels": str(CHIPS / "seg/labels")}


def test_shared_arguments_land_in_their_option_groups():
    dm = SegmentationDataModule(
        **SEG,
        batch_size=3,
        num_workers=0,
        samples_per_epoch=5,
        label_count=2,
        subset_seed=7,
        stratify=True,
    )
    assert dm.loaders == Loaders(batch_size=3, num_workers=0, samples_per_epoch=5)
    assert dm.subset == LabelledSubset(fraction=None, count=2, seed=7, stratify=True)
    with pytest.raises(AttributeError):
        dm.loaders.batch_size = 4  # type: ignore[misc]


def test_labelled_subset_checks_and_indices():
    with pytest.raises(DensekitError, match="give exactly one of label_fraction and label_count"):
        LabelledSubset(fraction=0.5, count=3)
    with pytest.raises(DensekitError, match=r"label_fraction must be in \(0, 1\], got 1.5"):
        SegmentationDataModule(**SEG, label_fraction=1.5)
    with pytest.raises(DensekitError, match="stratify keeps classes in subsets"):
        DepthDataModule(images=SEG["images"], depths=SEG["labels"], stratify=True)
    assert not LabelledSubset().selects
    small = LabelledSubset(count=2, seed=3).indices(10)
    large = LabelledSubset(count=5, seed=3).indices(10)
    assert len(small) == 2 and set(small) <= set(large) and small == sorted(small)


def test_split_fractions_and_split_files():
    check_split(None, True, True)
    check_split([0.8, 0.2], False, True)  # two fractions may go with test files
    with pytest.raises(DensekitError, match=r"split needs 2 or 3 fractions .* got \[1.0\]"):
        check_split([1.0], False, False)
    with pytest.raises(DensekitError, match="give either split fractions or separate val/test"):
        SegmentationDataModule(**SEG, split=[0.5, 0.5], val_images="a", val_labels="b")
    with pytest.raises(DensekitError, match="give either split fractions or separate val/test"):
        Medical2DDataModule("i", "m", test_images="a", test_masks="b", split=[0.6, 0.2, 0.2])
    with pytest.raises(DensekitError, match=r"split needs 2 or 3 fractions"):
        Medical2DDataModule("i", "m", split=[0.1, 0.2, 0.3, 0.4])
