"""`densekit benchmark`: a card runs end to end (CSV, Markdown, PNG, one config per run), is
reproducible, resumes without rerunning finished rows, and bad cards are named. The real cards in
tasks/ load and their data is where they say."""

import csv
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES, REPO, TEST_DATA, TINY_DIMS, needs_shared_data

from densekit.benchmark import Overrides, load_card, run_benchmark
from densekit.benchmark.run import read_results
from densekit.cli import main
from densekit.data.files import pair_files
from densekit.errors import DensekitError

CHIPS = TEST_DATA / "chips" / "seg"
PNG = b"\x89PNG\r\n\x1a\n"


def card(tmp_path, **changes):
    spec = {
        "name": "chips",
        "task": "segmentation",
        "metric": "miou",
        "data": {
            "images": str(CHIPS / "images"),
            "labels": str(CHIPS / "labels"),
            "val_images": str(CHIPS / "images_val"),
            "val_labels": str(CHIPS / "labels_val"),
            "test_images": str(CHIPS / "images_val"),
            "test_labels": str(CHIPS / "labels_val"),
            "window": 28,
            "batch_size": 4,
            "samples_per_epoch": 8,
        },
        "model": {"num_classes": 3, "scale": 1 / 255},
        "trainer": {"max_epochs": 1},
        "label_fractions": [0.1, 1.0],
        "stratify": True,
        "seeds": [0, 1],
        "backbones": [
            {
                "name": "tiny",
                "backbone": "dinov2_vits14",
                "weights": str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
                "backbone_overrides": {**TINY_DIMS, "mlp_ratio": 4},
            }
        ],
        "heads": [
            {
                "name": "linear",
                "model": {"head": "linear", "head_grid": {"lr": [0.001, 0.01]}},
            }
        ],
        "baselines": [
            {
                "name": "unet",
                "model": {
                    "head": "unet",
                    "unet_encoder": "resnet18",
                    "mean": [128.0] * 3,
                    "std": [64.0] * 3,
                },
            }
        ],
    }
    spec.update(changes)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_a_card_runs_end_to_end_and_is_reproducible(tmp_path):
    path = card(tmp_path)
    out = tmp_path / "out"
    lines = []
    rows = run_benchmark(path, out, log=lines.append)
    assert len(rows) == 8  # 2 fractions x 2 seeds x (1 head + 1 baseline)
    assert len(lines) == 16 and sum(line.endswith(": training") for line in lines) == 8
    assert {(r["backbone"], r["head"]) for r in rows} == {("tiny", "linear"), ("none", "unet")}
    assert {r["train_windows"] for r in rows if r["amount"] == 0.1} == {7}  # of 72
    assert {r["labelled_windows"] for r in rows} == {72}
    assert all(
        r["selected_head"] in ("last_lr0.001", "last_lr0.01") for r in rows if r["head"] == "linear"
    )
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run_id"] for r in table] == [r["run_id"] for r in rows]
    assert {"miou", "iou_class2", "fit_s", "config"} <= set(table[0])
    md = (out / "results.md").read_text()
    assert "| tiny | linear |" in md and "| none | unet |" in md and "(n=2)" in md
    assert (out / "results.png").read_bytes()[:8] == PNG
    assert len({r["trivial"] for r in rows}) == 1 and 0 < rows[0]["trivial"] < 1  # same pixels
    assert (
        f"Trivial predictor (one class everywhere, the best one) on the same test pixels: miou {rows[0]['trivial']:.4f}"
        in md
    )
    # each run's config is a plain `densekit fit` config that records its subset and seed
    config = yaml.safe_load(Path(rows[-1]["config"]).read_text())
    assert config["seed_everything"] == rows[-1]["seed"]
    assert config["data"]["init_args"]["subset_seed"] == rows[-1]["seed"]
    assert config["data"]["init_args"]["label_fraction"] == rows[-1]["amount"]
    # the frozen features were cached once and reused
    assert any((out / "feature_cache").rglob("*.pt"))

    # the same seed gives the same subset and the same metrics, whatever else the card runs
    path = card(tmp_path, seeds=[1], label_fractions=[0.1])
    again = run_benchmark(path, tmp_path / "again", log=lambda _: None)
    before = {r["run_id"]: r for r in rows}
    assert len(again) == 2
    for row in again:
        assert row["metrics"] == before[row["run_id"]]["metrics"], row["run_id"]


@pytest.mark.slow
def test_an_interrupted_benchmark_resumes_without_rerunning_finished_rows(tmp_path):
    path = card(tmp_path, seeds=[0], baselines=[])
    out = tmp_path / "out"
    first = run_benchmark(path, out, log=lambda _: None, stop_after=1)
    assert len(first) == 1
    with open(out / "results.jsonl", "a") as f:
        f.write('{"run_id": "torn')  # a kill while writing the last line
    (out / "runs" / "tiny__linear__f1__seed0").mkdir(parents=True)  # an interrupted run
    lines = []
    rows = run_benchmark(path, out, log=lines.append)
    assert len(rows) == 2 and rows[0] == first[0]  # same row, same timings: not rerun
    assert "done before, skipped" in lines[0] and lines[1].endswith(": training")
    assert "miou" in lines[2]
    assert (out / "runs" / "tiny__linear__f1__seed0" / "config.yaml").exists()
    # a changed card: new rows run, finished ones are skipped, the report is rewritten
    path = card(tmp_path, seeds=[0], baselines=[], label_fractions=[0.1, 1.0, 0.5])
    lines = []
    run_benchmark(path, out, log=lines.append)
    assert sum("skipped" in line for line in lines) == 2 and len(lines) == 4
    path = card(tmp_path, seeds=[0], baselines=[], metric="acc_micro")
    run_benchmark(path, out, log=lines.append)
    assert (out / "results.md").read_text().startswith("# chips: test acc_micro")
    with pytest.raises(DensekitError, match=r"metric 'iou_x' is not a test metric"):
        run_benchmark(card(tmp_path, seeds=[0], baselines=[], metric="iou_x"), out)


def test_one_benchmark_per_output_folder(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(DensekitError, match="another densekit benchmark is writing there"):
            run_benchmark(card(tmp_path), out)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": "x"}, "unknown keys \\['tasks'\\]"),
        ({"metric": None}, "metric must be a str"),
        ({"task": "detection"}, "task 'detection' is not one of"),
        ({"label_fractions": [0.1, 2]}, "label_fractions: 2 is not in \\(0, 1\\]"),
        ({"label_counts": [3]}, "give label_fractions or label_counts, not both"),
        ({"seeds": []}, "seeds must be a list of integers"),
        ({"model": {"weights": "x"}}, "model sets \\['weights'\\]"),
        ({"data": {"subset_seed": 1}}, "data sets \\['subset_seed'\\]"),
        ({"baselines": [{"name": "u", "model": {"head": "linear"}}]}, "set model.head: unet"),
        ({"heads": [{"name": "a"}, {"name": "a"}]}, "name 'a' must be unique"),
        ({"backbones": [{"name": "b", "backbone": "x"}]}, "missing \\['weights'\\]"),
        ({"heads": [{"name": "lin", "model": {"haed_grid": 1}}]}, "heads 'lin'.*haed_grid"),
        ({"trainer": {"max_epoch": 1}}, "baselines 'unet'.*max_epoch"),
    ],
)
def test_bad_cards_are_named_and_nothing_is_written(tmp_path, changes, message, capsys):
    path = card(tmp_path, **changes)
    out = tmp_path / "out"
    with pytest.raises(DensekitError, match=message) as e:
        run_benchmark(path, out)
    assert str(path) in str(e.value)
    assert main(["benchmark", str(path), "--out", str(out)]) == 2
    assert str(path) in capsys.readouterr().err
    assert not out.exists()


def test_a_metric_the_task_does_not_have_is_named(tmp_path):
    path = card(tmp_path, metric="f1", seeds=[0], label_fractions=[1.0], baselines=[])
    with pytest.raises(DensekitError, match=r"metric.*'f1' is not a .*metric.*miou"):
        run_benchmark(path, tmp_path / "out", log=lambda _: None)


def test_a_failing_run_is_named_and_finished_rows_stay(tmp_path, capsys):
    path = card(tmp_path, seeds=[0], label_fractions=[1.0], model={"num_classes": 2})
    assert main(["benchmark", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "run none__unet__f1__seed0" in err and "label value 2 is outside the classes" in err


def test_a_value_that_cannot_be_built_is_named_without_a_traceback(tmp_path, capsys):
    backbone = {"name": "b", "backbone": "densekit_vitt61", "weights": "bundled"}
    path = card(tmp_path, seeds=[0], label_fractions=[1.0], baselines=[], backbones=[backbone])
    assert main(["benchmark", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "run b__linear__f1__seed0" in err and "unknown backbone 'densekit_vitt61'" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_the_cli_lists_the_runs(tmp_path, capsys):
    assert main(["benchmark", str(card(tmp_path)), "--out", str(tmp_path / "o"), "--list"]) == 0
    ids = capsys.readouterr().out.split()
    assert len(ids) == 8 and ids[0] == "none__unet__f0.1__seed0"


@pytest.mark.parametrize("path", sorted((REPO / "tasks").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_real_cards_load_and_their_files_pair(path, monkeypatch):
    needs_shared_data()
    monkeypatch.chdir(REPO)  # card paths are relative to the repository, as in configs/
    spec = load_card(path)
    runs = spec.runs(REPO / "runs" / "benchmark" / path.stem)
    entries = len(spec.spec.get("backbones", [])) * len(spec.spec["heads"])
    entries += len(spec.spec.get("baselines", []))
    assert len(runs) == len(spec.amounts) * len(spec.spec["seeds"]) * entries
    data = runs[0].config["data"]["init_args"]
    for prefix in ("", "val_", "test_"):
        keys = [prefix + k for k in ("images", "images1", "images2", "labels", "depths")]
        pairs = [(k, data[k]) for k in keys if k in data]
        if pairs:
            assert pair_files(pairs), (path, prefix)
    for case in data.get("cases", []):  # the medical data module lists its cases
        assert Path(case["image"]).exists() and Path(case["mask"]).exists(), case


def test_command_line_overrides_change_the_runs(tmp_path, capsys):
    path = card(tmp_path)
    argv = ["benchmark", str(path), "--out", str(tmp_path / "o"), "--list"]
    assert main([*argv, "--seeds", "3", "--fractions", "0.5", "--heads", "unet"]) == 0
    assert capsys.readouterr().out.split() == ["none__unet__f0.5__seed3"]
    runs = load_card(path, Overrides(budget=2, heads=["linear"])).runs(tmp_path)
    assert {r.config["trainer"]["max_epochs"] for r in runs} == {2} and len(runs) == 4
    assert main([*argv, "--heads", "linear,dpt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--heads dpt: not in the card; valid: ['linear', 'unet']"), err
    assert main([*argv, "--seeds", "a"]) == 2
    assert "--seeds 'a': give comma-separated int values" in capsys.readouterr().err


def test_progress_per_run_and_ctrl_c_says_how_to_resume(tmp_path, capfd, monkeypatch):
    """Ctrl-C during the second run: exit 130, one line naming what was kept and the command
    that resumes; the first run's row is kept; a line per run and lines within a run."""
    monkeypatch.setenv("DENSEKIT_PROGRESS_SECONDS", "0.000001")
    interrupt = {
        "callbacks": [{"class_path": "helpers.InterruptAtEpoch", "init_args": {"epoch": 0}}]
    }
    heads = [
        {"name": "linear", "model": {"head": "linear"}},
        {"name": "stopped", "model": {"head": "linear"}, "trainer": interrupt},
    ]
    path = card(tmp_path, seeds=[0], label_fractions=[1.0], baselines=[], heads=heads)
    out = tmp_path / "out"
    argv = ["benchmark", str(path), "--out", str(out), "--budget", "1"]
    assert main(argv) == 130
    stdout, err = capfd.readouterr()
    assert err.strip().splitlines()[-1] == (
        f"densekit benchmark: interrupted; the finished runs are kept in {out}/results.jsonl; "
        f"resume with: densekit {' '.join(argv)}"
    )
    assert "[1/2] tiny__linear__f1__seed0: training" in stdout
    assert "[2/2] tiny__stopped__f1__seed0: training" in stdout
    assert "[1/2] tiny__linear__f1__seed0: epoch 1/1, step 1/" in err  # within the run
    assert list(read_results(out / "results.jsonl")) == ["tiny__linear__f1__seed0"]


def test_the_plot_draws_the_trivial_predictor(tmp_path, monkeypatch):
    from densekit.benchmark.report import plot

    path = card(tmp_path)
    rows = [
        {"backbone": "tiny", "head": "linear", "amount": a, "seed": 0, "trivial": 0.25,
         "metrics": {"miou": 0.5 + a / 4}}
        for a in (0.1, 1.0)
    ]  # fmt: skip
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *args, **kwargs):
        drawn.append((y, kwargs.get("label")))
        return real(self, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    assert plot(load_card(path), rows)[:8] == PNG
    assert drawn == [(0.25, "trivial predictor (0.250)")]
