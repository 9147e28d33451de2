"""DINO pretraining: export round trip, the training loop, monitoring, data and bad input."""

from __future__ import annotations

import json
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from helpers import needs_shared_data, write_raster

from densekit.backbones import load_backbone
from densekit.backbones.export import official_state_dict, save_official
from densekit.cli import main
from densekit.errors import DensekitError, InputImageError
from densekit.pretrain import DinoPretrainTask, PretrainDataModule
from densekit.pretrain.data import MultiCrop, Source, UnlabelledWindows
from densekit.pretrain.dino import DINOHead, koleo_loss

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


def _images(tmp_path, n=2, size=80, bands=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        base = ((xx // 10 + yy // 10 + i) % 2) * 150 + 50
        data = np.stack([base + rng.integers(0, 30, (size, size)) for _ in range(bands)])
        path = tmp_path / f"img{i}.tif"
        write_raster(path, data.astype(np.uint8), crs="EPSG:32633")
        paths.append(str(path))
    return paths


def _task(tmp_path, **kwargs):
    args = dict(
        backbone="dinov2_vits14",
        weights="random",
        arch=TINY,
        warmup_steps=1,
        warmup_teacher_temp_steps=1,
        freeze_last_layer_steps=1,
        export_path=str(tmp_path / "export" / "b.pth"),
        **HEAD,
    )
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DinoPretrainTask(**args)


def _data(paths, **kwargs):
    args = dict(
        images=paths,
        window=56,
        global_size=28,
        local_size=14,
        local_crops=2,
        batch_size=4,
        samples_per_epoch=8,
    )
    args.update(kwargs)
    return PretrainDataModule(**args)


def _fit(task, dm, steps=3, ckpt_path=None, **kwargs):
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, dm, ckpt_path=ckpt_path, weights_only=True)
    return trainer


# -- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "dinov2_vits14",
        "dinov2_vits14_reg4",
        "dinov2_vitg14",
        "dinov3_vits16",
        "dinov3_vits16plus",
        "dinov3_convnext_tiny",
        "densekit_vitt16",
    ],
)
def test_export_round_trip_is_exact(tmp_path, name):
    """official layout -> file -> load_backbone gives the very same features."""
    arch = dict(TINY) if "convnext" not in name else {"dims": [8, 16, 32, 64], "depths": [1] * 4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone(name, "random", layers="last4", **arch)
    torch.manual_seed(0)
    with (
        torch.no_grad()
    ):  # move every weight away from its init (LayerScale 1e-5 would hide errors)
        for p in b.model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = save_official(
        official_state_dict(b.arch, b.model, rope_periods=getattr(b, "_rope_periods", None)),
        tmp_path / "w.pth",
    )
    loaded = load_backbone(name, str(path), layers="last4", **arch)
    x = torch.randn(2, 3, 64, 48)
    for a, c in zip(b(x), loaded(x), strict=True):
        assert torch.equal(a, c)


def test_export_keeps_the_mask_token(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone("dinov2_vits14", "random", **TINY)
    token = torch.randn(1, 32)
    sd = official_state_dict(b.arch, b.model, mask_token=token)
    assert torch.equal(sd["mask_token"], token)


# -- pieces ------------------------------------------------------------------------------------
def test_dino_head_prototype_norms_are_fixed():
    head = DINOHead(8, 16, 12, 4)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=1e-5)


def test_koleo_prefers_spread_features():
    torch.manual_seed(0)
    spread = torch.randn(32, 8)
    clustered = torch.randn(1, 8) + 0.01 * torch.randn(32, 8)
    assert koleo_loss(spread) < koleo_loss(clustered)


def test_multicrop_shapes_and_one_band_repeat(tmp_path):
    pan = tmp_path / "pan.tif"
    write_raster(
        pan, (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint16), crs="EPSG:32633"
    )
    source = Source(str(pan), None, None, 3)
    crops = MultiCrop(32, 16, 3)
    ds = UnlabelledWindows([source], 64, 4, 3, crops)
    views = ds[0]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    x, _ = source.read((0, 0, 64, 64))
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2  # standardised


def test_nodata_windows_are_redrawn(tmp_path):
    data = np.full((1, 100, 100), 7, np.uint8)
    data[:, :, :70] = 0  # left 70 % nodata
    data[:, :, 70:] = np.random.default_rng(0).integers(10, 200, (1, 100, 30))
    path = tmp_path / "half.tif"
    write_raster(path, data, crs="EPSG:32633", nodata=0)
    source = Source(str(path), None, None, 1)
    ds = UnlabelledWindows([source], 32, 4, 1, MultiCrop(32, 16, 1), max_invalid=0.25)
    torch.manual_seed(0)
    for _ in range(20):
        s, window = ds.draw()
        _, invalid = s.read(window)
        if invalid.mean() > 0.25:
            break
    else:
        pytest.fail("the test needs a draw that is mostly nodata")
    seen = []
    original = source.read

    def spy(window):
        x, inv = original(window)
        seen.append(inv.mean())
        return x, inv

    source.read = spy  # type: ignore[method-assign]
    for i in range(10):
        ds[i]
    assert any(f > 0.25 for f in seen), "no mostly-nodata window was drawn"
    kept = [f for f in seen if f <= 0.25]
    assert len(kept) == 10  # one accepted window per item; the others were redrawn


# -- training ----------------------------------------------------------------------------------
def test_pretraining_updates_student_and_teacher_and_exports(tmp_path):
    paths = _images(tmp_path)
    task = _task(tmp_path)
    teacher0 = {k: v.clone() for k, v in task.teacher.model.state_dict().items()}
    student0 = {k: v.clone() for k, v in task.student.model.state_dict().items()}
    _fit(task, _data(paths), steps=4)
    moved_s = [
        k for k, v in task.student.model.state_dict().items() if not torch.equal(v, student0[k])
    ]
    moved_t = [
        k for k, v in task.teacher.model.state_dict().items() if not torch.equal(v, teacher0[k])
    ]
    assert "blocks.0.attn.qkv.weight" in moved_s and "blocks.0.attn.qkv.weight" in moved_t
    # the teacher is an EMA: it moves less than the student
    k = "blocks.0.attn.qkv.weight"
    d_s = (task.student.model.state_dict()[k] - student0[k]).abs().sum()
    d_t = (task.teacher.model.state_dict()[k] - teacher0[k]).abs().sum()
    assert 0 < d_t < d_s
    assert task.center.abs().sum() > 0 and task.patch_center.abs().sum() > 0
    export = tmp_path / "export" / "b.pth"
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert card["steps"] == 4 and card["backbone"] == "dinov2_vits14" and len(card["data"]) == 2
    loaded = load_backbone("dinov2_vits14", str(export), layers="last", **TINY)
    x = torch.randn(1, 3, 28, 28)
    assert torch.equal(loaded(x)[0], task.teacher(x)[0])


def test_backbone_warmup_protects_pretrained_weights(tmp_path):
    """Continued pretraining: the backbone's learning rate is 0 while the fresh heads warm up."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone("dinov2_vits14", "random", **TINY)
    start = save_official(official_state_dict(b.arch, b.model), tmp_path / "start.pth")
    task = _task(tmp_path, weights=str(start), backbone_warmup_steps=10)
    before = {k: v.clone() for k, v in task.student.model.state_dict().items()}
    head0 = task.student_head.mlp[0].weight.clone()
    _fit(task, _data(_images(tmp_path)), steps=3)
    after = task.student.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head0, task.student_head.mlp[0].weight)
    assert task.weights_sha256 is not None


def test_collapse_is_detected(tmp_path):
    task = _task(tmp_path)
    task._monitor["batch_entropy"] += [0.01] * 4
    task._monitor["feature_std"] += [0.5] * 4

    class _Trainer:  # the hook reads only these
        global_step = 1000
        current_epoch = 0

    task.trainer = _Trainer()  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="collapse.*batch_entropy"):
        task.on_train_epoch_end()
    assert task.collapsed


def test_knn_probe_separates_classes_that_differ_in_colour(tmp_path):
    yy, xx = np.mgrid[0:128, 0:128]
    label = (((xx // 16) + (yy // 16)) % 3 == 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    image = np.stack([label * 150 + 40 + rng.integers(0, 20, label.shape) for _ in range(3)])
    write_raster(tmp_path / "img.tif", image.astype(np.uint8), crs="EPSG:32633")
    write_raster(tmp_path / "lab.tif", label * 255, crs="EPSG:32633")
    task = _task(
        tmp_path,
        backbone="densekit_vitt16",
        probe_image=str(tmp_path / "img.tif"),
        probe_label=str(tmp_path / "lab.tif"),
        probe_label_map={"0": 0, "255": 1},  # YAML keys may come as strings
        probe_window=32,
        probe_k=5,
    )
    assert task.knn_probe() > 0.9
    swapped = _task(
        tmp_path,
        backbone="densekit_vitt16",
        probe_image=str(tmp_path / "img.tif"),
        probe_label=str(tmp_path / "lab.tif"),
        probe_label_map={0: 1, 255: 0},
        probe_window=32,
        probe_k=5,
    )
    assert swapped.knn_probe() > 0.9  # the labels' names do not matter, only their consistency


# -- bad input ---------------------------------------------------------------------------------
def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_text("not a tiff")
    dm = _data([str(bad)])
    with pytest.raises(InputImageError, match=r"broken.tif"):
        dm.setup()


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DensekitError, match="empty"):
        _data([str(tmp_path / "empty")]).setup()


def test_crops_larger_than_window_or_image(tmp_path):
    with pytest.raises(DensekitError, match=r"global_size 96 is larger than data.window 64"):
        _data(["x.tif"], window=64, global_size=96)
    paths = _images(tmp_path, n=1, size=40)
    with pytest.raises(DensekitError, match=r"img0.tif: 40x40 is smaller than data.global_size 48"):
        _data(paths, window=64, global_size=48).setup()


def test_band_count_mismatch_is_named(tmp_path):
    paths = _images(tmp_path, n=1, bands=4)
    with pytest.raises(DensekitError, match=r"img0.tif: 4 bands chosen, the model takes 3"):
        _data(paths).setup()


def test_resume_from_another_architecture_fails_clearly(tmp_path):
    paths = _images(tmp_path)
    task = _task(tmp_path)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, _data(paths))
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    other = _task(tmp_path, arch={"embed_dim": 48, "depth": 2, "num_heads": 2})
    with pytest.raises(DensekitError, match="another architecture"):
        _fit(other, _data(paths), steps=2, ckpt_path=str(ckpt))
    renamed = _task(tmp_path, backbone="densekit_vitt16", arch=TINY)
    with pytest.raises(DensekitError, match=r"pretrains dinov2_vits14.*densekit_vitt16"):
        _fit(renamed, _data(paths), steps=2, ckpt_path=str(ckpt))


def test_cli_pretrain_writes_export_and_card(tmp_path):
    paths = _images(tmp_path)
    config = tmp_path / "pt.yaml"
    config.write_text(
        f"""
trainer: {{max_steps: 2, accelerator: cpu, logger: false, enable_checkpointing: false,
          enable_progress_bar: false, default_root_dir: {tmp_path}}}
model:
  backbone: dinov2_vits14
  weights: random
  arch: {{embed_dim: 32, depth: 2, num_heads: 2}}
  out_dim: 64
  hidden_dim: 32
  bottleneck_dim: 16
  export_path: {tmp_path / "out" / "b.pth"}
data:
  images: {paths}
  window: 56
  global_size: 28
  local_size: 14
  local_crops: 2
  batch_size: 4
  samples_per_epoch: 8
"""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["pretrain", "--config", str(config)]) == 0
    assert (tmp_path / "out" / "b.pth").is_file() and (tmp_path / "out" / "card.json").is_file()
    bad = config.read_text().replace("out_dim: 64", "out_dims: 64")
    config.write_text(bad)
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", str(config)])
    assert e.value.code == 2


def test_pretraining_reads_real_imagery_and_dicom():
    data = needs_shared_data()
    paths = [
        str(data / "rasterio-test-rasters" / "RGB.byte.tif"),
        str(data / "spacenet-solaris-samples" / "multisensor_unlabeled" / "pan1.tif"),
        str(data / "pydicom-testfiles" / "pydicom_data_store" / "693_UNCR.dcm"),
    ]
    dm = _data(paths, window=96, global_size=32, local_size=16)
    dm.setup()
    assert [s.num_bands for s in dm.sources] == [3, 1, 1]
    batch = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape) for v in batch] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert all(torch.isfinite(v).all() for v in batch)
