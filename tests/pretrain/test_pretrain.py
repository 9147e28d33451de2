"""DINO pretraining: export round trip, the training loop, monitoring, data and bad input."""

from __future__ import annotations

import itertools
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
from densekit.pretrain.objective import DINOHead, ibot_loss, koleo_loss

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


def _step(task, monkeypatch, seed=0):
    """One training_step without a trainer: the loss and the names it logged."""
    monkeypatch.setattr(DinoPretrainTask, "total_steps", property(lambda self: 10))
    logged = []
    task.log = lambda name, *a, **k: logged.append(name)
    task.log_dict = lambda d, *a, **k: logged.extend(d)
    torch.manual_seed(seed)
    views = [torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28), torch.randn(4, 3, 14, 14)]
    return task.training_step(views, 0), logged


def _watch(task, value):
    """``value()`` recorded before every training_step (micro-batch)."""
    seen = []
    step = task.training_step

    def spy(*args):
        seen.append(value())
        return step(*args)

    task.training_step = spy
    return seen


def _changes(seen):
    return [not torch.equal(a, b) for a, b in itertools.pairwise(seen)]


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
        "dino_vits8",
        "dino_resnet50",
    ],
)
def test_export_round_trip_is_exact(tmp_path, name):
    """official layout -> file -> load_backbone gives the very same features."""
    arch = {
        "dinov3_convnext_tiny": {"dims": [8, 16, 32, 64], "depths": [1] * 4},
        "dino_resnet50": {},  # no overrides: the full ResNet-50
    }.get(name, dict(TINY))
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
    task = _task(tmp_path)
    with torch.no_grad():
        task.mask_token.normal_()
    sd = torch.load(task.export(tmp_path / "b.pth"), weights_only=True)
    assert torch.equal(sd["mask_token"], task.mask_token.detach())


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
    assert koleo_loss(torch.randn(1, 8)) == 0  # a per-rank batch of one has no neighbour


def test_ibot_loss_weighs_each_masked_image_equally():
    masks = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    torch.manual_seed(0)
    t, s = torch.softmax(torch.randn(4, 5), -1), torch.log_softmax(torch.randn(4, 5), -1)
    ce = -(t * s).sum(-1)  # masked patches in order: image 0's one, image 1's three
    assert torch.allclose(ibot_loss(t, s, masks), (ce[0] + ce[1:].mean()) / 2)


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
    ds.reseed(0)
    for _ in range(20):
        s, window, _ = ds.draw()
        _, invalid = s.read(window)
        if invalid.mean() > 0.25:
            break
    else:
        pytest.fail("the test needs a draw that is mostly nodata")
    seen = []
    original = source.read

    def spy(window, z=0):
        x, inv = original(window, z)
        seen.append(inv.mean())
        return x, inv

    source.read = spy  # type: ignore[method-assign]
    for i in range(10):
        ds[i]
    assert any(f > 0.25 for f in seen), "no mostly-nodata window was drawn"
    kept = [f for f in seen if f <= 0.25]
    assert len(kept) == 10  # one accepted window per item; the others were redrawn


@pytest.mark.parametrize("workers", [0, 1])
def test_each_rank_draws_its_own_reproducible_batches(tmp_path, monkeypatch, workers):
    paths = _images(tmp_path, n=1)

    def first_batch(rank):
        monkeypatch.setenv("RANK", str(rank))
        torch.manual_seed(0)  # seed_everything: the same seed on every rank
        dm = _data(paths, num_workers=workers)
        dm.setup()
        return next(iter(dm.train_dataloader()))

    rank0, rank1, again = first_batch(0), first_batch(1), first_batch(0)
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(rank0, again, strict=True))


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ibot_weight", [0.0, 1.0])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, monkeypatch, ibot_weight):
    """DDP needs a gradient for every parameter that requires one; the mask token learns."""
    task = _task(tmp_path, ibot_weight=ibot_weight)
    loss, _ = _step(task, monkeypatch)
    loss.backward()
    assert not [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert task.mask_token.requires_grad == (ibot_weight > 0)
    if ibot_weight:
        assert task.mask_token.grad.abs().sum() > 0
    else:
        assert task.student_patch_head is None


def test_a_fixed_number_of_crops_is_masked(tmp_path, monkeypatch):
    """Every batch masks int(B * mask_probability) crops (at least one), so every rank runs
    the patch centre's all_reduce and logs the iBOT loss."""
    task = _task(tmp_path, mask_probability=0.01, mask_ratio=(0.1, 0.5))
    for seed in range(4):
        _, logged = _step(task, monkeypatch, seed=seed)
        assert "train/ibot_loss" in logged
        masks = task._masks(8, 4, torch.device("cpu"))
        assert (masks.sum(1) > 0).sum() == 1 and masks.sum(1).max() <= 2
    assert task.patch_center.abs().sum() > 0
    task.hparams.mask_probability = 0.5
    assert (task._masks(8, 4, torch.device("cpu")).sum(1) > 0).sum() == 4


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


def test_teacher_follows_optimizer_steps_not_micro_batches(tmp_path):
    task = _task(tmp_path)
    seen = _watch(task, lambda: task.teacher.model.blocks[0].attn.qkv.weight.clone())
    _fit(task, _data(_images(tmp_path)), steps=2, accumulate_grad_batches=2)
    assert task.global_step == 2 and len(seen) == 4
    # one EMA update between micro-batches 2 and 3 (after step 1), none inside a step
    assert _changes(seen) == [False, True, False]


def test_prototypes_stay_fixed_for_freeze_last_layer_steps(tmp_path):
    task = _task(tmp_path, freeze_last_layer_steps=2)
    heads = (task.student_head, task.student_patch_head)

    def prototypes():
        return torch.cat([h.last_layer.parametrizations.weight.original1.flatten() for h in heads])

    seen = _watch(task, lambda: prototypes().clone())
    _fit(task, _data(_images(tmp_path)), steps=3)
    seen.append(prototypes())
    assert _changes(seen) == [False, False, True]


def test_every_rank_waits_for_the_export(tmp_path):
    task = _task(tmp_path)
    calls = []

    class _Strategy:
        def barrier(self, name=None):
            calls.append(name)

    class _Trainer:  # rank 1: does not export, waits for rank 0
        is_global_zero = False
        strategy = _Strategy()

    task.trainer = _Trainer()  # type: ignore[assignment]
    task.on_train_end()
    assert calls and not (tmp_path / "export").exists()


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


def _probe_pair(tmp_path):
    yy, xx = np.mgrid[0:128, 0:128]
    label = (((xx // 16) + (yy // 16)) % 3 == 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    image = np.stack([label * 150 + 40 + rng.integers(0, 20, label.shape) for _ in range(3)])
    write_raster(tmp_path / "img.tif", image.astype(np.uint8), crs="EPSG:32633")
    write_raster(tmp_path / "lab.tif", label * 255, crs="EPSG:32633")


def test_knn_probe_separates_classes_that_differ_in_colour(tmp_path):
    _probe_pair(tmp_path)
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

    class _Rank1:  # on_train_epoch_end reads only these
        global_step = 0
        current_epoch = 0
        is_global_zero = False

    swapped.trainer = _Rank1()  # type: ignore[assignment]
    swapped.knn_probe = lambda: pytest.fail("the probe ran on rank 1")
    swapped.on_train_epoch_end()
    assert "probe_miou" not in swapped.history[-1]


def test_probe_files_are_checked_when_the_task_is_built(tmp_path):
    _probe_pair(tmp_path)
    image, label = str(tmp_path / "img.tif"), str(tmp_path / "lab.tif")
    with pytest.raises(DensekitError, match=r"model.init_args.probe_label is missing"):
        _task(tmp_path, probe_image=image)
    with pytest.raises(DensekitError, match=r"probe_label: .*nothing.tif is not a readable"):
        _task(tmp_path, probe_image=image, probe_label=str(tmp_path / "nothing.tif"))
    with pytest.raises(DensekitError, match=r"probe_label_map: class 2 for value 255"):
        _task(tmp_path, probe_image=image, probe_label=label, probe_label_map={0: 0, 255: 2})


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


def test_crops_not_a_multiple_of_the_patch_are_named(tmp_path):
    paths = _images(tmp_path, n=1, size=112)
    dm = _data(paths, window=112, global_size=96, local_size=48)
    with pytest.raises(
        DensekitError,
        match=r"data.global_size 96, data.local_size 48: not a multiple of the patch 14 of "
        r"dinov2_vits14 \(e.g. 84 or 98, 42 or 56\)",
    ):
        _fit(_task(tmp_path), dm, steps=1)


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
        _fit(renamed, _data(paths, global_size=32, local_size=16), steps=2, ckpt_path=str(ckpt))


def test_cli_pretrain_writes_export_and_card(tmp_path, capsys):
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
    assert main(["pretrain", "--config", str(config)]) == 2  # one line, no SystemExit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) and "model.out_dims" in err[-1]


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


def test_nifti_volumes_give_axial_slices(tmp_path):
    import nibabel as nib

    vol = np.zeros((40, 50, 6), np.float32)  # x, y, z (RAS)
    vol[:, :, 3] = np.arange(40)[:, None]  # slice 3: values grow along x (patient's right)
    vol[5, 45, 3] = 1000  # near anterior (large y) and right (small x): top row, right side
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    folder = tmp_path / "vols"
    folder.mkdir()
    (tmp_path / "ct.nii.gz").rename(folder / "ct.nii.gz")
    dm = _data([str(folder)], window=32, global_size=16, local_size=16)
    dm.setup()
    [source] = dm.sources
    assert (source.slices, source.height, source.width) == (6, 50, 40)
    raw = source.volume[3]
    # the display orientation of every slice input: anterior up, the patient's left on the right
    assert raw[50 - 1 - 45, 40 - 1 - 5] == 1000 and np.all(np.diff(raw[0, :5]) == -1)
    x, invalid = source.read((0, 0, 40, 50), z=3)
    assert x.shape == (1, 50, 40) and not invalid.any()
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch[0].shape) == (4, 3, 16, 16)


def test_real_ct_nifti_reads():
    data = needs_shared_data("ct-mr-organ-seg-totalsegmentator")
    source = Source(str(data / "ct_nifti" / "example_ct_sm.nii.gz"), None, None, 3)
    assert source.slices > 1 and source.num_bands == 1 and np.isfinite(source.std).all()
