"""Heights above ground: DSM minus DTM targets where 0 (ground) is valid, trained by DepthTask."""

import warnings

import lightning as L
import numpy as np
import pytest
import torch
from helpers import FIXTURES, TINY_DIMS, write_raster
from rasterio.transform import from_origin

from densekit.data import DepthDataModule
from densekit.errors import DensekitError
from densekit.tasks import DepthTask
from densekit.tasks.metrics import DepthMetrics


def write(path, data, **kw):
    write_raster(path, data, crs="EPSG:32633", transform=from_origin(500000, 4600000, 1, 1), **kw)


def make_scene(tmp_path, n=2):
    rng = np.random.default_rng(0)
    for i in range(n):
        dtm = (100 + rng.normal(0, 0.1, (56, 56))).astype(np.float32)
        height = np.zeros((56, 56), np.float32)
        height[10:30, 10:30] = 8.0  # a building; the rest is ground (height 0)
        r, c = rng.integers(0, 40, 2)
        height[r : r + 14, 30 + c // 4 : 44 + c // 4] = 5.0  # and one in the right half
        image = np.where(height > 0, 200, 60).astype(np.uint8) + rng.integers(
            0, 10, (56, 56), dtype=np.uint8
        )
        dtm_file = dtm.copy()
        dtm_file[0, 0] = -9999
        write(tmp_path / f"img_{i}.tif", np.stack([image] * 3))
        write(tmp_path / f"dsm_{i}.tif", dtm + height)
        write(tmp_path / f"dtm_{i}.tif", dtm_file, nodata=-9999)


def test_dsm_minus_dtm_with_ground_as_valid_zero(tmp_path):
    make_scene(tmp_path)
    dm = DepthDataModule(
        images=str(tmp_path / "img_*.tif"),
        depths=str(tmp_path / "dsm_*.tif"),
        subtract=str(tmp_path / "dtm_*.tif"),
        height=True,
    )
    dm.setup("fit")
    h = dm.datasets["train"][0]["depth"][0]
    assert torch.isnan(h[0, 0])  # DTM nodata
    torch.testing.assert_close(h[15, 15], torch.tensor(8.0), atol=1e-3, rtol=0)
    assert torch.isfinite(h[40, 40]) and abs(float(h[40, 40])) < 1e-3  # ground: 0 is valid
    with pytest.raises(DensekitError, match=r"subtract gives heights above ground: set height"):
        DepthDataModule(images="a", depths="b", subtract="c")


def test_height_task_trains_and_refuses_log_losses(tmp_path):
    make_scene(tmp_path, n=4)
    tiny = {
        "weights": str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
        "backbone_overrides": {**TINY_DIMS, "mlp_ratio": 4},
        "scale": 1 / 255,
    }
    with pytest.raises(DensekitError, match=r"heights above ground .* need 'l1'"):
        DepthTask(height=True, loss="silog", **tiny)
    task = DepthTask(
        height=True, loss="l1+grad", depth_mode="regression", min_depth=0.0, layers="last4", **tiny
    )
    dm = DepthDataModule(
        images=str(tmp_path / "img_*.tif"),
        depths=str(tmp_path / "dsm_*.tif"),
        subtract=str(tmp_path / "dtm_*.tif"),
        height=True,
        split=[0.5, 0.5],
        batch_size=4,
    )
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, dm)
        metrics = trainer.validate(task, dm, verbose=False)[0]
    assert all(np.isfinite(v) for v in metrics.values()), metrics


def test_height_metrics_keep_ground_pixels():
    m = DepthMetrics(height=True)
    target = torch.tensor([[[[0.0, 0.0, 4.0, float("nan")]]]])
    pred = torch.tensor([[[[1.0, 0.0, 4.0, 9.0]]]])
    m.update(pred, target)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["mae"] == pytest.approx(1 / 3) and out["absrel"] == pytest.approx(0.0)


def test_untagged_fill_of_dsm_and_dtm_is_nodata_with_target_nodata(tmp_path):
    write(tmp_path / "img.tif", np.full((3, 32, 32), 100, np.uint8))
    dsm = np.full((32, 32), 105, np.float32)
    dsm[:4] = -9999  # voids the files do not tag as nodata
    dtm = np.full((32, 32), 100, np.float32)
    dtm[:, :3] = -9999
    write(tmp_path / "dsm.tif", dsm)
    write(tmp_path / "dtm.tif", dtm)
    files = {
        "images": [str(tmp_path / "img.tif")],
        "depths": [str(tmp_path / "dsm.tif")],
        "subtract": [str(tmp_path / "dtm.tif")],
    }
    dm = DepthDataModule(**files, height=True, target_nodata=-9999)
    dm.setup("fit")
    h = dm.datasets["train"][0]["depth"][0]
    assert torch.isnan(h[:4]).all() and torch.isnan(h[:, :3]).all()
    assert (h[4:, 3:] == 5.0).all()
    # an nDSM with the same fill
    dm = DepthDataModule(images=files["images"], depths=files["depths"], height=True)
    dm.setup("fit")
    assert (dm.datasets["train"][0]["depth"][0, :4] == -9999).all()  # untagged: a height
    dm = DepthDataModule(
        images=files["images"], depths=files["depths"], height=True, target_nodata=-9999
    )
    dm.setup("fit")
    h = dm.datasets["train"][0]["depth"][0]
    assert torch.isnan(h[:4]).all() and (h[4:] == 105.0).all()


def test_height_ratios_average_over_images_above_ground():
    """AbsRel and delta come from the images with pixels above 0 only."""
    target = torch.zeros(2, 1, 2, 2)
    target[0] = 8.0  # a building; image 2 is all ground
    m = DepthMetrics(height=True)
    m.update(target.clone(), target)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["delta1"] == 1.0 and out["delta3"] == 1.0 and out["absrel"] == 0.0
    pred = target.clone()
    pred[0] = 16.0  # twice too high
    m = DepthMetrics(height=True)
    m.update(pred, target)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["absrel"] == pytest.approx(1.0) and out["mae"] == pytest.approx(4.0)
    m = DepthMetrics(height=True)
    m.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["mae"] == 0.0 and np.isnan(out["delta1"]) and np.isnan(out["absrel"])


def tiny_task(**kwargs):
    return DepthTask(
        weights=str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
        backbone_overrides={**TINY_DIMS, "mlp_ratio": 4},
        scale=1 / 255,
        **kwargs,
    )


@pytest.mark.parametrize("task_height", [True, False])
def test_task_and_data_must_agree_on_height(tmp_path, task_height):
    make_scene(tmp_path)
    loss = "l1" if task_height else "silog"
    task = tiny_task(height=task_height, loss=loss, depth_mode="regression", min_depth=0.0)
    kw = {"subtract": str(tmp_path / "dtm_*.tif")} if not task_height else {}
    dm = DepthDataModule(
        images=str(tmp_path / "img_*.tif"),
        depths=str(tmp_path / "dsm_*.tif"),
        height=not task_height,
        split=[0.5, 0.5],
        **kw,
    )
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
    with pytest.raises(
        DensekitError,
        match=rf"model has height={task_height} \(model.init_args.height\) but the data has "
        rf"height={not task_height} \(data.init_args.height\)",
    ):
        trainer.fit(task, dm)


def test_log_bins_need_a_positive_min_depth():
    with pytest.raises(
        DensekitError, match=r"log-spaced bins need min_depth > 0, got model.init_args.min_depth=0"
    ):
        tiny_task(height=True, loss="l1", bin_spacing="log", min_depth=0.0, max_depth=40.0)
    with pytest.raises(DensekitError, match=r"max_depth \(1.0\) must be above .*min_depth \(2.0\)"):
        tiny_task(min_depth=2.0, max_depth=1.0)
    task = tiny_task(height=True, loss="l1", min_depth=0.0, max_depth=40.0)  # linear bins
    assert float(task.model.depth_output.centres.min()) == 0.0
