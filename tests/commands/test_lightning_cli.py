"""The Lightning commands as part of one ``densekit`` program: help that names the real
command, class help and ``--print_config``, one-line config errors, a fit run without
Lightning's warnings that keeps ``last.ckpt``, the best checkpoint and TensorBoard logs, shows
progress as plain lines outside a terminal, and says how to resume after Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TEST_DATA

from densekit.cli import main

_spec = importlib.util.spec_from_file_location(
    "legacy_generate", TEST_DATA / "checkpoints_v0" / "generate.py"
)
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["densekit", *args], capture_output=True, text=True, timeout=300)


def fit_config(tmp_path: Path, epochs: int = 2, **trainer) -> str:
    """The tiny segmentation fit of the legacy fixtures with Lightning's defaults (logger,
    checkpoints, progress bar, model summary) left to densekit."""
    doc = generate.config("seg_linear", tmp_path / "run")
    for key in ("logger", "enable_progress_bar", "enable_model_summary", "max_steps"):
        doc["trainer"].pop(key)
    doc["trainer"].update({"max_epochs": epochs, **trainer})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# -- help -----------------------------------------------------------------------------------
def test_class_help_prints_the_tasks_options(capfd):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--model.help", "SegmentationTask"])
    out, err = capfd.readouterr()
    assert e.value.code == 0, err
    for option in ("--model.num_classes", "--model.head", "--model.head_grid", "--model.lr"):
        assert option in out
    assert "weights_only" not in out + err
    assert "Warning" not in err and "args parameter" not in err


@pytest.mark.slow
def test_class_help_in_a_fresh_process():
    res = run("fit", "--model.help", "SegmentationTask")
    assert res.returncode == 0, res.stderr
    assert "--model.num_classes" in res.stdout and not res.stderr.strip(), res.stderr


def test_help_names_the_real_commands(capsys):
    for command, usage in (("fit", "densekit fit"), ("pretrain", "densekit pretrain")):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        captured = capsys.readouterr()
        assert captured.out.startswith(f"usage: {usage} [-c CONFIG]"), captured.out[:200]
        assert " fit fit" not in captured.out and "[options]" not in captured.out
        assert "--weights_only" not in captured.out  # checkpoints are always read safely
        assert "args parameter" not in captured.err


def test_the_evaluation_commands_help_names_bands(capsys):
    for command in ("validate", "test", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--bands 4,3,2: the bands of the images the model reads" in out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--bands 4,3,2" not in capsys.readouterr().out


def test_data_help_and_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", "SegmentationDataModule"])
    assert "--data.val_images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config", fit_config(tmp_path), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "densekit.tasks.SegmentationTask"
    assert printed["trainer"]["max_epochs"] == 2
    assert "weights_only" not in printed


# -- config errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.head", "lineer"], "model.head 'lineer': not a valid choice; valid: linear, "
         "dpt, unet, official"),
        (["--model.lr", "fast"], "model.lr 'fast': expected float"),
        (["--trainer.max_epochs", "x"], "trainer.max_epochs 'x': expected int"),
        (["--model.hed", "linear"], "model.hed: unknown option (did you mean head?); valid: "
         "num_classes, "),
    ],
    ids=["choice", "float", "int", "unknown key"],
)  # fmt: skip
def test_a_config_error_is_one_line_with_the_key_value_and_choices(tmp_path, capfd, args, message):
    code = main(["fit", "--config", fit_config(tmp_path), *args])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, err
    assert lines[0].startswith(f"densekit fit: error: {message}"), lines[0]
    assert not (tmp_path / "run").exists()


CONFIG_MISTAKES = [
    ("fit", {"ckpt_pth": "x.ckpt"}, "ckpt_pth: unknown option (did you mean ckpt_path?); "
     "valid top-level keys: seed_everything, trainer, model, data, ckpt_path"),
    ("fit", {"trainer": {"max_epoch": 3}},
     "trainer.max_epoch: unknown option (did you mean max_epochs?); valid: accelerator, "),
    ("fit", {"model": {"class_path": "densekit.tasks.SegmentationTsk"}},
     "model.class_path densekit.tasks.SegmentationTsk: no such class (did you mean "
     "densekit.tasks.SegmentationTask?); valid: densekit.tasks.ChangeDetectionTask, "),
    ("fit", {"model": {"init_args": {"backbone": "x"}}},
     "model: no class_path; name the class of its init_args (class_path: ...); valid: "),
    ("fit", {"model": {"backbone": "x"}}, "model: no class_path; "),
    ("pretrain", {"model": {"backbnoe": "x"}},
     "model.backbnoe: unknown option (did you mean backbone?); valid: backbone, weights, "),
    ("pretrain", {"model": {"init_args": {"backbone": "x"}}},
     "model.init_args.backbone: model takes its options directly under 'model:' (no "
     "class_path or init_args); valid: backbone, "),
]  # fmt: skip


@pytest.mark.parametrize(("command", "doc", "message"), CONFIG_MISTAKES)
def test_config_mistakes_name_the_key_and_what_is_valid(tmp_path, capfd, command, doc, message):
    """Unknown trainer and pretrain keys, a misspelt class path and a missing class_path: one
    line naming the key, the closest valid value and the valid ones, exit 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main([command, "--config", str(path)])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"densekit {command}: error: {message}"), lines[0]
    assert "Subcommand" not in lines[0]


def test_class_help_usage_names_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "SegmentationTask"])
    assert capsys.readouterr().out.startswith("usage: densekit fit [--model.num_classes")


# -- a fit run ------------------------------------------------------------------------------
def test_a_fit_run_keeps_checkpoints_and_logs_shows_progress_and_no_lightning_warning(
    tmp_path, capfd, monkeypatch
):
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")  # a line at every step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["fit", "--config", fit_config(tmp_path)])
    out, err = capfd.readouterr()
    assert code == 0, err
    # what Python prints: deprecations of other packages are hidden outside __main__, those
    # of Lightning shown (it turns them on)
    shown = [
        w
        for w in caught
        if not issubclass(w.category, DeprecationWarning)
        or w.category.__name__ == "LightningDeprecationWarning"
    ]
    from_lightning = [str(w.message) for w in shown if "lightning" in w.filename]
    assert not from_lightning, from_lightning
    assert "lightning" not in err.lower().replace("lightning_logs", ""), err
    assert "Tip:" not in err + out and "module(s) in eval mode" not in err + out
    # progress outside a terminal: plain lines with the step, epoch, metric and ETA
    lines = [line for line in err.splitlines() if line.startswith("densekit fit: epoch")]
    assert any("step 1/2" in line and "train/loss" in line for line in lines), err
    assert any(
        "epoch 2/2 done" in line and "val/miou" in line and "ETA" in line for line in lines
    ), err
    # checkpoints and logs
    version = tmp_path / "run" / "lightning_logs" / "version_0"
    names = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert "last.ckpt" in names
    best = [n for n in names if n.startswith("best-epoch=")]
    assert len(best) == 1 and "-miou=0." in best[0], names
    # last.ckpt is the last epoch's, also when the best epoch was an earlier one (here epoch 0)
    last = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert best[0].startswith("best-epoch=0-") and last["epoch"] == 1
    assert list(version.glob("events.out.tfevents.*")) and (version / "metrics.csv").is_file()
    # the summary: the validation metrics as a table (plain lines: stdout is not a terminal)
    assert any(line.split() == ["metric", "value"] for line in out.splitlines()), out
    assert any(line.split()[:1] == ["miou"] for line in out.splitlines()), out
    assert f"best checkpoint: {version / 'checkpoints' / best[0]}" in out
    assert f"last checkpoint: {version / 'checkpoints' / 'last.ckpt'}" in out


def test_progress_of_a_run_bounded_by_steps(tmp_path, capfd, monkeypatch):
    """``max_steps`` without epochs: Lightning counts 0 batches left after the last step."""
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")
    code = main(["fit", "--config", fit_config(tmp_path, epochs=-1, max_steps=1)])
    err = capfd.readouterr().err
    assert code == 0, err
    assert "densekit fit: epoch 1/?, step 1" in err, err


def test_ctrl_c_during_fit_says_what_was_kept_and_how_to_resume(tmp_path, capfd):
    config = fit_config(tmp_path, epochs=3, callbacks=[{"class_path": "helpers.InterruptAtEpoch"}])
    code = main(["fit", "--config", config])
    err = capfd.readouterr().err
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert code == 130
    line = err.strip().splitlines()[-1]
    assert line == (
        f"densekit fit: interrupted; kept {last}; resume with: densekit fit --config {config} "
        f"--ckpt_path {last}"
    ), err[-2000:]
    assert last.is_file()


def test_the_head_grids_scores_reach_the_logs_and_test_metrics_json(tmp_path, capfd):
    """Fit a grid, then test its best checkpoint in another command (as the quickstart does):
    every candidate's validation score is in metrics.csv and in test_metrics.json."""
    config = Path(fit_config(tmp_path, epochs=1))
    doc = yaml.safe_load(config.read_text())
    doc["model"]["init_args"].update({"layers": "last4", "head_grid": {"lr": [1e-4, 0.03]}})
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert main(["fit", "--config", str(config)]) == 0, capfd.readouterr().err
    version = tmp_path / "run" / "lightning_logs" / "version_0"
    header = (version / "metrics.csv").read_text().splitlines()[0].split(",")
    names = ["last_lr0.0001", "last_lr0.03"]
    assert {f"val_grid/{n}/miou" for n in names} <= set(header), header
    best = next((version / "checkpoints").glob("best-*.ckpt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["test", "--config", str(config), "--ckpt_path", str(best)])
    assert code == 0, capfd.readouterr().err
    assert not [w for w in caught if "callbacks used to create" in str(w.message)]
    record = json.loads(next((tmp_path / "run").rglob("test_metrics.json")).read_text())
    grid = record["head_grid"]
    assert sorted(grid["val"]) == names and grid["metric"] == "miou", grid
    assert all(0 <= v <= 1 for v in grid["val"].values())
    assert grid["val"][grid["selected"]] == max(grid["val"].values())
