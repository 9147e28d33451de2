"""``densekit benchmark CARD --out DIR``: every run of a task card, resumable.

Each run trains with Lightning from its own config (``DIR/runs/<run id>/config.yaml``, a normal
``densekit fit`` config), is tested on the card's test split, and appends one row to
``DIR/results.jsonl``; the CSV, the Markdown table and the plot are rewritten after every run.
Running the same command again skips the rows already there whose config is unchanged (a run
that was interrupted, or whose config changed, starts over), so an interrupted benchmark goes on
where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from densekit.benchmark.card import Card, Overrides, Run, load_card
from densekit.benchmark.report import write_report
from densekit.errors import DensekitError


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished rows by run id (a torn last line, from a kill while writing, is dropped)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "run_id" in row and "metrics" in row:
            rows[row["run_id"]] = row
    return rows


def _cause(exc: BaseException) -> str:
    """The densekit error behind ``exc``, else the last line of the innermost cause."""
    seen: set[int] = set()
    inner: BaseException = exc
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DensekitError):
            return str(current)
        seen.add(id(current))
        inner = current
        current = current.__cause__ or current.__context__
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return lines[-1] if lines else type(inner).__name__


def check_configs(card: Card, runs: list[Run]) -> None:
    """Parse every run's config as ``densekit fit`` would (no model is built), so a wrong key
    or type fails before anything trains, naming the card and the head."""
    from lightning import Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    from densekit.data.base import DenseDataModule
    from densekit.tasks import DenseTask

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.add_lightning_class_args(DenseTask, "model", subclass_mode=True)
    parser.add_lightning_class_args(DenseDataModule, "data", subclass_mode=True)
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    checked = set()
    for run in runs:
        if run.head in checked:  # runs of one head differ only in amount and seed
            continue
        checked.add(run.head)
        try:
            with _quiet():
                parser.parse_object(run.config)
        except Exception as e:  # jsonargparse's ArgumentError, with the key and the reason
            lines = [ln.strip() for ln in str(e).splitlines()]
            detail = [ln for ln in lines if ln.startswith(("- Problem", "Option", "Key", "Parser"))]
            group = "baselines" if run.backbone is None else "heads"
            raise DensekitError(
                f"{card.path}: the config of {group} {run.head!r} (the card's model, data and "
                f"trainer with that entry's own): {' '.join(detail) or lines[0]}"
            ) from None


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One benchmark process per output folder (rows would overwrite each other)."""
    import fcntl

    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DensekitError(
                f"--out {out}: another densekit benchmark is writing there; wait for it to end"
            ) from None
        yield


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's per-run banners, hints and information lines off (densekit prints its own
    lines per run); the data loader's worker hint too (the card sets the workers), and the
    note on ``args`` given beside a command line (they are the run's own config)."""
    from densekit.tasks.quiet import quiet_lightning

    with quiet_lightning(info=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*args parameter is intended to run.*")
        yield


@contextlib.contextmanager
def _interruptible(trainer: Any) -> Iterator[None]:
    """Lightning ends a run stopped by Ctrl-C with ``sys.exit(1)`` (and ignores SIGINT from
    then on): raise KeyboardInterrupt instead, so the benchmark says how to resume."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def execute(run: Run, folder: Path, card: Card, prefix: str = "") -> dict[str, Any]:
    """Train and test one run in ``folder``; returns its result row. Progress lines (outside
    and inside a terminal) start with ``prefix``; Ctrl-C raises KeyboardInterrupt."""
    from lightning.pytorch.cli import LightningCLI

    from densekit.data.base import DenseDataModule
    from densekit.tasks import DenseTask
    from densekit.tasks.progress import PlainProgressBar

    if folder.exists():
        shutil.rmtree(folder)  # an interrupted or changed run starts over
    folder.mkdir(parents=True)
    config = copy.deepcopy(run.config)
    config["trainer"]["default_root_dir"] = str(folder)
    config["trainer"]["enable_progress_bar"] = True  # plain lines, each run's own prefix
    config["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(folder), "name": "logs"},
    }
    config_path = folder / "config.yaml"
    config_path.write_text(
        f"# {card.name}: run {run.run_id} of `densekit benchmark {card.path}`. Repeat its\n"
        "# training from the folder the benchmark ran in (data paths are relative to it) with\n"
        f"#   densekit fit --config {config_path} --trainer.enable_checkpointing true\n"
        "# and its test metrics with densekit test --config ... --ckpt_path <that checkpoint>.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    with _quiet():
        try:
            cli = LightningCLI(
                DenseTask,
                DenseDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=["--config", str(config_path)],
                trainer_defaults={"callbacks": [PlainProgressBar(prefix)]},
                run=False,
                auto_configure_optimizers=False,
                save_config_callback=None,
                parser_kwargs={"prog": "densekit benchmark"},
            )
        except (Exception, SystemExit) as e:  # a value jsonargparse could not build
            raise DensekitError(f"building the model and data: {_cause(e)}") from None
        with _interruptible(cli.trainer):
            start = time.perf_counter()
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
            test_s = time.perf_counter() - start
    gc.collect()  # the run's objects finalised now, not inside a later run's rasterio calls
    record = json.loads((Path(cli.trainer.log_dir or folder) / "test_metrics.json").read_text())
    subset = cli.datamodule.train_subset or {}
    model_args = config["model"]["init_args"]
    return {
        "run_id": run.run_id,
        "card": card.name,
        "backbone": run.backbone or "none",
        "weights": model_args.get("weights") if run.backbone else None,
        "head": run.head,
        "amount": run.amount,
        "seed": run.seed,
        "labelled_windows": subset.get("labelled"),
        "train_windows": subset.get("kept"),
        "selected_head": (record.get("head_grid") or {}).get("selected"),
        "metrics": record["metrics"],
        "trivial": (record.get("trivial") or {}).get(card.metric),
        "fit_s": round(fit_s, 2),
        "test_s": round(test_s, 2),
        "config_sha": run.config_sha,
        "config": str(config_path),
    }


def run_benchmark(
    card_path: str | Path,
    out: str | Path,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    overrides: Overrides | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every run of a card into ``out``; returns the rows in card order.

    ``stop_after``: stop after this many new runs (tests of resuming); ``overrides``: the
    command line's changes to the card (budget, seeds, fractions, heads)."""
    card = load_card(card_path, overrides)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DensekitError(f"--out {out}: is a file, a folder is needed")
    runs = card.runs(out.resolve())
    check_configs(card, runs)
    rows = read_results(out / "results.jsonl")
    for row in rows.values():
        if card.metric not in row["metrics"]:
            raise DensekitError(
                f"{card.path}: metric {card.metric!r} is not a test metric of this task; "
                f"valid: {sorted(row['metrics'])}"
            )
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if card.overridden:  # what ran: the card with the command line's changes
            header = f"# {card.path} with the overrides of the densekit benchmark command line\n"
            _write_atomic(out / "card.yaml", header + yaml.safe_dump(card.spec, sort_keys=False))
        else:
            shutil.copyfile(card.path, out / "card.yaml")
        _run_all(card, runs, rows, out, log, stop_after)
        done = [rows[r.run_id] for r in runs if r.run_id in rows]
        if done:
            write_report(card, out, done)
    return done


def _uncached_heads(runs: list[Run]) -> set[str]:
    """Heads whose training windows are augmented or random: their features are not cached."""
    heads = set()
    for run in runs:
        data = run.config["data"]["init_args"]
        cached = run.config["model"]["init_args"].get("feature_cache")
        if cached and (data.get("augment") or data.get("train_windows") == "random"):
            heads.add(run.head)
    return heads


def _run_all(
    card: Card,
    runs: list[Run],
    rows: dict[str, dict[str, Any]],
    out: Path,
    log: Callable[[str], None],
    stop_after: int | None,
) -> None:
    results = out / "results.jsonl"
    for head in sorted(_uncached_heads(runs)):
        log(
            f"note: {head} trains on augmented or random windows: only its validation and test "
            "features come from the cache"
        )
    ran = 0
    for i, run in enumerate(runs, 1):
        previous = rows.get(run.run_id)
        tag = f"[{i}/{len(runs)}] {run.run_id}"
        if previous is not None and previous.get("config_sha") == run.config_sha:
            log(f"{tag}: done before, skipped")
            continue
        if stop_after is not None and ran >= stop_after:
            log(f"stopped after {ran} runs; the same command resumes")
            break
        if previous is not None:
            log(f"{tag}: its config changed since the last run, running it again")
        else:
            log(f"{tag}: training")
        try:
            row = execute(run, out / "runs" / run.run_id, card, prefix=f"{tag}: ")
        except DensekitError as e:
            raise DensekitError(f"run {run.run_id} ({out / 'runs' / run.run_id}): {e}") from e
        if card.metric not in row["metrics"]:
            raise DensekitError(
                f"{card.path}: metric {card.metric!r} is not a test metric of this task; "
                f"valid: {sorted(row['metrics'])}"
            )
        rows[run.run_id] = row
        ran += 1
        _write_atomic(results, "".join(json.dumps(r) + "\n" for r in rows.values()))
        write_report(card, out, [rows[r.run_id] for r in runs if r.run_id in rows])
        value = row["metrics"][card.metric]
        log(
            f"{tag}: {card.metric} {value:.4f} ({row['train_windows']} of "
            f"{row['labelled_windows']} labelled windows, {row['fit_s']:.0f} s)"
        )
