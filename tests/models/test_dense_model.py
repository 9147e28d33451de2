"""DenseModel: a plain module from any checkpoint, the same prediction as ``densekit tile``,
saved and read back, and clear errors for inputs it cannot take."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from helpers import TEST_DATA, write_raster

from densekit.errors import DensekitError, InputImageError
from densekit.inference import TileOptions, tile
from densekit.models import DenseModel, OutputSpec
from densekit.models.checkpoint import read_checkpoint
from densekit.tasks import ChangeDetectionTask, DepthTask, SegmentationTask

LEGACY = TEST_DATA / "checkpoints_v0"
SIDE = 224  # one tile: a multiple of the patches 14 and 16 and of the U-Net's 32


def raster(path, seed: int, bands: int = 3) -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    data = np.stack(
        [
            ((xx // 9 + yy // 7 + b) % 5) * 40 + rng.integers(1, 30, (SIDE, SIDE))
            for b in range(bands)
        ]
    ).astype(np.uint8)
    data[:, :20, :30] = 0  # nodata
    write_raster(path, data, crs="EPSG:32633", nodata=0)
    return str(path)


def read_nan(path) -> torch.Tensor:
    with rasterio.open(path) as src:
        x = src.read().astype(np.float32)
        x[:, (x == src.nodata).any(0)] = np.nan
    return torch.from_numpy(x)[None]


@pytest.mark.parametrize(
    "kind", ["seg_linear", "seg_detail", "seg_unet", "seg_grid", "depth_bins", "change_detail"]
)
def test_from_checkpoint_predicts_what_tile_writes(kind, tmp_path):
    """``model = DenseModel.from_checkpoint(path); model(x)``: the map ``densekit tile`` writes
    for a raster of one tile (its blending weights divide out)."""
    a = raster(tmp_path / "a.tif", 0)
    b = raster(tmp_path / "b.tif", 1)
    change = kind.startswith("change")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbones warn
        model = DenseModel.from_checkpoint(LEGACY / f"{kind}.ckpt")
        tile(
            LEGACY / f"{kind}.ckpt",
            a,
            tmp_path / "tiled.tif",
            b if change else None,
            TileOptions(tile=SIDE, overlap=0, progress=False),
        )
    assert not model.training and isinstance(model, torch.nn.Module)
    images = [read_nan(a), read_nan(b)] if change else [read_nan(a)]
    with torch.no_grad():
        raw = model(*images)
    assert raw.shape[-2:] == (SIDE, SIDE) and raw.shape[1] == model.output.channels
    predicted = model.predict(*images)[0]
    with rasterio.open(tmp_path / "tiled.tif") as src:
        tiled = src.read(1)
    assert predicted.dtype == tiled.dtype
    if model.output.is_map_of_classes:
        np.testing.assert_array_equal(predicted, tiled)
        assert (tiled[:20, :30] == model.output.nodata).all()
    else:  # values: (v * w) / w may differ from v by a rounding
        np.testing.assert_allclose(predicted, tiled, rtol=1e-6, equal_nan=True)
        assert np.isnan(tiled[:20, :30]).all()


def test_save_and_from_checkpoint_round_trip_without_lightning(tmp_path):
    torch.manual_seed(0)
    task = ChangeDetectionTask(
        weights="random",
        backbone_overrides={"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 112},
        scale=1 / 255,
        pixel_branch=4,
        upsampler="guided",
    )
    path = task.model.save(tmp_path / "model.ckpt", task="ChangeDetectionTask")
    loaded = DenseModel.from_checkpoint(path)
    x1, x2 = torch.rand(2, 3, 40, 50) * 255, torch.rand(2, 3, 40, 50) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x1, x2), task.model.eval()(x1, x2), rtol=0, atol=0)
    ckpt = read_checkpoint(path)
    assert ckpt.task == "ChangeDetectionTask" and ckpt.output == task.model.output
    assert ckpt.config == task.model.config and ckpt.backbone["source"] == "random"
    assert ckpt.output.probability_names == ["change"]


def test_a_named_backbone_is_not_saved_and_is_checked(tmp_path):
    from helpers import random_tiny_weights

    weights = random_tiny_weights(tmp_path / "w.pth", embed_dim=32, depth=2, num_heads=2)
    task = DepthTask(
        weights=weights,
        backbone_overrides={"embed_dim": 32, "depth": 2, "num_heads": 2},
        scale=1 / 255,
        num_bins=8,
    )
    path = task.model.save(tmp_path / "depth.ckpt", task="DepthTask")
    stored = torch.load(path, weights_only=True)
    assert not [k for k in stored["state_dict"] if k.startswith("model.backbone.")]
    assert stored["densekit"]["output"]["depth"]["num_bins"] == 8
    loaded = DenseModel.from_checkpoint(path)
    x = torch.rand(1, 3, 28, 42) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task.model.eval()(x), rtol=0, atol=0)
    random_tiny_weights(tmp_path / "w.pth", embed_dim=32, depth=2, num_heads=2)  # new weights
    with pytest.raises(DensekitError, match=r"depth.ckpt: the checkpoint was trained on backbone"):
        DenseModel.from_checkpoint(path)


def test_legacy_checkpoints_load_as_the_task_does(tmp_path):
    """The record rebuilt from an old checkpoint's hyper-parameters gives the model the task
    loads through Lightning."""
    path = LEGACY / "seg_grid.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DenseModel.from_checkpoint(path)
        task = SegmentationTask.load_from_checkpoint(path).eval()
    ckpt = read_checkpoint(path)
    assert ckpt.version == "0.1.0" and ckpt.output == OutputSpec.segmentation(
        3, ["bg", "square", "disc"]
    )
    assert model.head_grid is not None and model.head_grid.metric == "miou"
    x = torch.rand(2, 3, 56, 70) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(x), task(x), rtol=0, atol=0)


def test_inputs_it_cannot_take_are_named():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DenseModel.from_checkpoint(LEGACY / "change_linear.ckpt")
        small = DenseModel.from_checkpoint(LEGACY / "seg_detail.ckpt")
    x = torch.rand(1, 3, 30, 30)
    with pytest.raises(InputImageError, match=r"takes 2 image\(s\) per sample \(two dates\)"):
        model(x)
    with pytest.raises(InputImageError, match=r"image 1: expected \(B, 3, H, W\) raw bands"):
        model(x, torch.rand(1, 4, 30, 30))
    with pytest.raises(InputImageError, match="the dates must be on one grid"):
        model(x, torch.rand(1, 3, 30, 31))
    # input_upscale 1.5: 8 px become 12, less than one 14-pixel patch; 10 px are enough
    with pytest.raises(
        InputImageError, match=r"8x40 pixels.*after input_upscale 1.5: pad it to 10x40"
    ):
        small(torch.rand(1, 3, 8, 40))
    assert small(torch.rand(1, 3, 10, 40)).shape == (1, 3, 10, 40)


def test_the_record_says_what_the_model_outputs(tmp_path):
    torch.manual_seed(0)
    task = SegmentationTask(
        num_classes=3,
        class_names=["a", "b", "c"],
        weights="random",
        backbone_overrides={"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 112},
        scale=1 / 255,
    )
    record = task.model.record("SegmentationTask")
    assert record["format"] == 1 and record["task"] == "SegmentationTask"
    assert record["output"]["class_names"] == ["a", "b", "c"]
    assert record["output"]["activation"] == "softmax"
    assert record["inputs"]["channels"] == 3 and record["model"]["head"] == "linear"
    json.dumps(record)  # plain data: readable without densekit


def test_a_saved_slice_model_runs_in_volume_with_its_data_settings(tmp_path):
    """``save(path, data=...)`` records how slices were made, so ``densekit volume`` needs no
    flags; without them it names what to give."""
    from densekit.inference import segment_volume
    from densekit.medical import read_volume

    ct = TEST_DATA.parents[1] / "densekit" / "samples" / "dcmqi_liver" / "ct"
    source = LEGACY / "medical_linear.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DenseModel.from_checkpoint(source)
    bare = model.save(tmp_path / "bare.ckpt", task="SegmentationTask")
    with pytest.raises(DensekitError, match=r"has no plane .*give plane \(--plane\)"):
        segment_volume(bare, ct, tmp_path / "no.nii.gz", progress=False)
    saved = model.save(
        tmp_path / "m.ckpt", task="SegmentationTask", data=read_checkpoint(source).data
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment_volume(saved, ct, tmp_path / "a.nii.gz", progress=False)
        segment_volume(source, ct, tmp_path / "b.nii.gz", progress=False)
    a, b = read_volume(tmp_path / "a.nii.gz").array, read_volume(tmp_path / "b.nii.gz").array
    np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "no.nii.gz").exists()
