"""Fixtures shared by the test folders: data modules on the generated chips
(``tests/data/chips``), quiet short trainers, and a seeded fit."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
from helpers import TEST_DATA

from densekit.data import ChangeDataModule, DepthDataModule, SegmentationDataModule

CHIPS = TEST_DATA / "chips"


def chips_data(kind: str, val: bool = True, test: bool = False, **kwargs: Any) -> Any:
    """A data module of ``kind`` (``segmentation``, ``depth``, ``change``) on the chips: the
    training chips, the validation chips as ``val`` (and as ``test`` too, if asked)."""
    if kind == "segmentation":
        cls, names = SegmentationDataModule, {"images": "seg/images", "labels": "seg/labels"}
    elif kind == "depth":
        cls, names = DepthDataModule, {"images": "depth/images", "depths": "depth/depths"}
    elif kind == "change":
        cls = ChangeDataModule
        names = {"images1": "change/a", "images2": "change/b", "labels": "change/labels"}
    else:
        raise ValueError(f"no chips of kind {kind!r}")
    files = {key: str(CHIPS / folder) for key, folder in names.items()}
    # the validation chips: images_val, labels_val, a_val, ... beside each training folder
    held = {key: str(CHIPS / f"{folder}_val") for key, folder in names.items()}
    if val:
        files.update({f"val_{key}": path for key, path in held.items()})
    if test:
        files.update({f"test_{key}": path for key, path in held.items()})
    return cls(**{**files, **kwargs})


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A Lightning trainer without logger, checkpoints, progress bar or model summary (any of
    them back with ``kwargs``)."""
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def fit_briefly(task: Any, data: Any, seed: int | None = 0, **kwargs: Any) -> L.Trainer:
    """Seed, then fit ``task`` on ``data`` with a :func:`quiet_trainer` (``kwargs``: its
    settings, e.g. ``max_steps``); Lightning's warnings about the tiny setups are silenced."""
    if seed is not None:
        L.seed_everything(seed, verbose=False)
    trainer = quiet_trainer(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, data)
    return trainer


@pytest.fixture(scope="session")
def chips() -> Callable[..., Any]:
    """:func:`chips_data`."""
    return chips_data


@pytest.fixture(scope="session")
def trainer() -> Callable[..., L.Trainer]:
    """:func:`quiet_trainer`."""
    return quiet_trainer


@pytest.fixture(scope="session")
def fit() -> Callable[..., L.Trainer]:
    """:func:`fit_briefly`."""
    return fit_briefly
