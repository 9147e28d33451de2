"""Every config in configs/ trains through `densekit fit` (fast_dev_run) on generated chips with
a tiny backbone; config mistakes fail with a message that names the key; multi-process training
is Lightning's job (2 CPU processes, gloo)."""

import json
import subprocess
import warnings

import pytest
import yaml
from helpers import REPO, TEST_DATA, TINY_CLI, needs_shared_data

from densekit.cli import main

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# configs on a dataset's own bands (13 Sentinel-2 bands, 5 Landsat bands): run on their real data
REAL_DATA = {"oscd_change_linear", "sen1floods11_water_linear", "nc_landsat_sparse_linear"}
CHIPS = TEST_DATA / "chips"


def chip_overrides(config) -> list[str]:
    if config.stem in REAL_DATA:
        needs_shared_data()
        return []
    kind = yaml.safe_load(config.read_text())["model"]["class_path"].rsplit(".", 1)[1]
    d = "--data.init_args."
    if kind == "SegmentationTask":
        return [
            d + "images",
            str(CHIPS / "seg/images"),
            d + "labels",
            str(CHIPS / "seg/labels"),
            d + "label_map",
            "null",
            "--model.init_args.num_classes",
            "3",
            "--model.init_args.class_names",
            "null",
        ]
    if kind == "DepthTask":
        return [
            d + "images",
            str(CHIPS / "depth/images"),
            d + "depths",
            str(CHIPS / "depth/depths"),
            d + "depth_scale",
            "1.0",
        ]
    c = CHIPS / "change"
    return [
        d + "images1",
        str(c / "a"),
        d + "images2",
        str(c / "b"),
        d + "labels",
        str(c / "labels"),
        d + "val_images1",
        str(c / "a_val"),
        d + "val_images2",
        str(c / "b_val"),
        d + "val_labels",
        str(c / "labels_val"),
        d + "test_images1",
        str(c / "a_val"),
        d + "test_images2",
        str(c / "b_val"),
        d + "test_labels",
        str(c / "labels_val"),
        d + "label_map",
        "null",
    ]


def test_there_is_a_config_for_each_task_and_head():
    names = {c.stem for c in CONFIGS}
    assert {
        "segmentation_linear",
        "segmentation_dpt",
        "segmentation_unet",
        "depth_linear",
        "depth_dpt",
        "change_linear",
        "change_dpt",
    } <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_with_fast_dev_run(config, tmp_path):
    argv = [
        "fit",
        "--config",
        str(config),
        *TINY_CLI,
        *chip_overrides(config),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0


BUNDLED_CONFIGS = sorted((REPO / "configs" / "bundled").glob("*.yaml"))


@pytest.mark.parametrize("config", BUNDLED_CONFIGS, ids=lambda p: p.stem)
def test_bundled_backbone_configs_run_on_their_real_data(config, tmp_path):
    """The configs of the bundled backbone (its own weights, shipped in the package)."""
    needs_shared_data()
    argv = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.init_args.batch_size",
        "2",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0


def test_pretraining_config_runs_on_its_real_data(tmp_path):
    """The recipe of the bundled backbone, one step on its real images (small batch)."""
    needs_shared_data()
    config = REPO / "configs" / "pretrain" / "bundled_vitt16.yaml"
    argv = [
        "pretrain",
        "--config",
        str(config),
        "--trainer.max_steps",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--model.export_path",
        str(tmp_path / "export" / "b.pth"),
        "--model.probe_every_n_epochs",
        "1",
        "--model.probe_window",
        "448",
        "--data.batch_size",
        "2",
        "--data.local_crops",
        "1",
        "--data.samples_per_epoch",
        "2",
        "--data.num_workers",
        "0",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    card = json.loads((tmp_path / "export" / "card.json").read_text())
    assert len(card["data"]) == 11 and card["history"][0]["probe_miou"] >= 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["densekit", *args], capture_output=True, text=True, timeout=600)


def run_in_process(capsys, *args: str) -> tuple[int, str]:
    """``densekit ARGS`` in this process: its exit status and what it printed on stderr."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse (jsonargparse) exits on a bad argument
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def test_unknown_key_and_wrong_type_name_the_key(tmp_path, capsys):
    cfg = str(REPO / "configs" / "segmentation_linear.yaml")
    code, err = run_in_process(capsys, "fit", "--config", cfg, "--model.init_args.num_clases", "3")
    assert code == 2 and "num_clases" in err
    code, err = run_in_process(capsys, "fit", "--config", cfg, "--model.init_args.lr", "fast")
    assert code == 2 and "lr" in err and "fast" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "configs" / "segmentation_linear.yaml")
        .read_text()
        .replace("head: linear", "head: mlp")
    )
    code, err = run_in_process(capsys, "fit", "--config", str(bad))
    assert code == 2 and "head" in err and "mlp" in err


def test_config_naming_weights_not_on_disk(tmp_path, capsys):
    code, err = run_in_process(
        capsys,
        "fit",
        "--config",
        str(REPO / "configs" / "segmentation_linear.yaml"),
        "--model.init_args.weights",
        str(tmp_path / "dinov2_vits14_pretrain.pth"),
        "--trainer.default_root_dir",
        str(tmp_path),
        *chip_overrides(REPO / "configs" / "segmentation_linear.yaml"),  # data that exists
    )
    assert code == 2, err
    assert "dinov2_vits14_pretrain.pth" in err and "no such file" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_fit_on_two_cpu_processes(tmp_path):
    config = REPO / "configs" / "segmentation_linear.yaml"
    res = run_cli(
        "fit",
        "--config",
        str(config),
        *TINY_CLI,
        *chip_overrides(config),
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MEMBER: 2/2" in res.stderr + res.stdout
    assert list(tmp_path.rglob("*.ckpt"))


def test_predict_writes_georeferenced_windows(tmp_path):
    import rasterio

    config = REPO / "configs" / "segmentation_linear.yaml"
    argv = [
        "predict",
        "--config",
        str(config),
        *TINY_CLI,
        *chip_overrides(config),
        "--data.init_args.images",
        str(CHIPS / "seg/images_val"),
        "--data.init_args.labels",
        str(CHIPS / "seg/labels_val"),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    files = sorted(tmp_path.rglob("predictions/*.tif"))
    assert files, list(tmp_path.rglob("*"))
    with rasterio.open(files[0]) as src, rasterio.open(CHIPS / "seg/images_val/chip08.tif") as ref:
        assert src.crs == ref.crs and src.dtypes[0] == "uint8"
        assert src.transform.c >= ref.transform.c and src.read(1).max() < 3


def test_model_and_data_of_different_tasks(tmp_path, capsys):
    argv = [
        "validate",
        "--config",
        str(REPO / "configs" / "segmentation_linear.yaml"),
        *TINY_CLI,
        "--data",
        "densekit.data.DepthDataModule",
        "--data.init_args.images",
        str(CHIPS / "depth/images"),
        "--data.init_args.depths",
        str(CHIPS / "depth/depths"),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert (
        "a SegmentationTask (from the config or the checkpoint) cannot use a DepthDataModule" in err
    )
