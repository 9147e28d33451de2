"""Task cards: what ``densekit benchmark`` runs, and the training config of each run.

A card (YAML, in ``tasks/``) names one dataset and task and the grid to run over it::

    name: spacenet_buildings
    task: segmentation              # segmentation | change | depth
    data_class: ...                 # optional: another data module of the task, e.g.
                                    # densekit.medical.MedicalSegmentationDataModule
    metric: iou_building            # the test metric of the table and the plot
    data: {...}                     # the data module's init_args (as in configs/)
    model: {...}                    # task init_args shared by every run (classes, loss, bands)
    trainer: {max_epochs: 10}       # the training budget, the same for every run
    label_fractions: [0.01, 0.1, 1.0]   # or label_counts: [1, 4, 16] (labelled windows)
    stratify: true                  # the smallest subsets keep every class
    seeds: [0, 1, 2]
    feature_cache: true             # frozen features computed once for all runs (default)
    backbones:
      - {name: vitt16, backbone: densekit_vitt16, weights: bundled}
    heads:                          # run on every backbone
      - {name: linear, model: {head: linear, layers: last}}
      - {name: dpt, model: {head: dpt, layers: dpt}}
    baselines:                      # no backbone: run once per fraction and seed
      - {name: unet, model: {head: unet, in_channels: 1}, data: {bands: [1]}}

Each head or baseline may override ``model``, ``data`` and ``trainer`` keys. Every run is one
ordinary LightningCLI config (``densekit fit --config <run>/config.yaml`` repeats it): the card's
sections merged with the run's backbone, head, seed (``seed_everything`` and the subset's
``subset_seed``) and label fraction.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from densekit.errors import DensekitError

TASKS = {
    "segmentation": ("densekit.tasks.SegmentationTask", "densekit.data.SegmentationDataModule"),
    "change": ("densekit.tasks.ChangeDetectionTask", "densekit.data.ChangeDataModule"),
    "depth": ("densekit.tasks.DepthTask", "densekit.data.DepthDataModule"),
}
CARD_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "task": str,
    "data_class": str,
    "metric": str,
    "data": dict,
    "model": dict,
    "trainer": dict,
    "label_fractions": list,
    "label_counts": list,
    "stratify": bool,
    "seeds": list,
    "feature_cache": bool,
    "feature_cache_gb": (int, float),
    "backbones": list,
    "heads": list,
    "baselines": list,
}
REQUIRED = ("name", "task", "metric", "data", "model", "trainer", "seeds", "heads")
ENTRY_KEYS = {"name", "model", "data", "trainer"}
BACKBONE_KEYS = {"name", "backbone", "weights", "backbone_overrides"}
# Set by the benchmark for every run, so a card may not set them itself.
RESERVED_MODEL = {"backbone", "weights", "backbone_overrides", "feature_cache"}
RESERVED_DATA = {"label_fraction", "label_count", "subset_seed", "stratify"}
FIXED_TRAINER = {"enable_progress_bar": False, "enable_model_summary": False}
DEFAULT_TRAINER = {"enable_checkpointing": False}  # a card may set it true to keep checkpoints


@dataclass(frozen=True)
class Run:
    """One row of the benchmark: a backbone (None for baselines), head, label amount and seed."""

    backbone: str | None
    head: str
    amount: float | int  # label fraction or count
    seed: int
    config: dict[str, Any]

    @property
    def run_id(self) -> str:
        amount = f"n{self.amount}" if isinstance(self.amount, int) else f"f{self.amount:g}"
        return f"{self.backbone or 'none'}__{self.head}__{amount}__seed{self.seed}"

    @property
    def config_sha(self) -> str:
        """A hash of the run's config (where the cache folder lies does not count)."""
        config = copy.deepcopy(self.config)
        config["model"]["init_args"].pop("feature_cache", None)
        text = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Card:
    """A parsed, checked task card."""

    path: Path
    spec: dict[str, Any]
    overridden: bool = False  # by the command line: the spec differs from the file

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def metric(self) -> str:
        return str(self.spec["metric"])

    @property
    def by_count(self) -> bool:
        return "label_counts" in self.spec

    @property
    def amounts(self) -> list[float | int]:
        if self.by_count:
            return [int(n) for n in self.spec["label_counts"]]
        return [float(f) for f in self.spec.get("label_fractions") or [1.0]]

    def runs(self, out: Path) -> list[Run]:
        """Every run of the card, baselines first within each amount and seed."""
        spec = self.spec
        entries: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [
            (None, b) for b in spec.get("baselines", [])
        ]
        entries += [(bb, h) for bb in spec.get("backbones", []) for h in spec["heads"]]
        runs = []
        for amount in self.amounts:
            for seed in spec["seeds"]:
                for backbone, entry in entries:
                    config = self._config(backbone, entry, amount, int(seed), out)
                    name = backbone["name"] if backbone else None
                    runs.append(Run(name, entry["name"], amount, int(seed), config))
        return runs

    def _config(
        self,
        backbone: dict[str, Any] | None,
        entry: dict[str, Any],
        amount: float | int,
        seed: int,
        out: Path,
    ) -> dict[str, Any]:
        spec = self.spec
        task_class, data_class = TASKS[spec["task"]]
        data_class = spec.get("data_class", data_class)
        model = {**copy.deepcopy(spec["model"]), **copy.deepcopy(entry.get("model", {}))}
        if isinstance(model.get("head_grid"), dict):
            model["head_grid"].setdefault("metric", self.metric)  # the grid picks on it too
        if backbone is not None:
            model.update({k: v for k, v in backbone.items() if k != "name"})
            if spec.get("feature_cache", True):
                model["feature_cache"] = str(out / "feature_cache")
                model["feature_cache_gb"] = float(spec.get("feature_cache_gb", 20.0))
        data = {**copy.deepcopy(spec["data"]), **copy.deepcopy(entry.get("data", {}))}
        data["label_count" if self.by_count else "label_fraction"] = amount
        data["subset_seed"] = seed
        data["stratify"] = bool(spec.get("stratify", False))
        trainer = {
            **DEFAULT_TRAINER,
            **copy.deepcopy(spec["trainer"]),
            **copy.deepcopy(entry.get("trainer", {})),
            **FIXED_TRAINER,
        }
        return {
            "seed_everything": seed,
            "trainer": trainer,
            "model": {"class_path": task_class, "init_args": model},
            "data": {"class_path": data_class, "init_args": data},
        }


@dataclass(frozen=True)
class Overrides:
    """What ``densekit benchmark`` options change in a card (None: the card's own).

    Attributes:
        budget: training epochs of every run (``trainer.max_epochs``, also over a head's own).
        seeds: the seeds.
        fractions: label fractions (replacing the card's label_fractions or label_counts).
        heads: the heads and baselines to run, by name (the others are left out).
    """

    budget: int | None = None
    seeds: list[int] | None = None
    fractions: list[float] | None = None
    heads: list[str] | None = None

    def apply(self, spec: dict[str, Any], fail: Any) -> dict[str, Any]:
        """``spec`` with these overrides (a copy); unknown head names are refused."""
        spec = copy.deepcopy(spec)
        if self.budget is not None:
            if self.budget < 1:
                raise fail(f"--budget {self.budget}: give 1 or more epochs")
            spec["trainer"] = {**(spec.get("trainer") or {}), "max_epochs": self.budget}
            for group in ("heads", "baselines"):
                for entry in spec.get(group) or []:
                    if isinstance(entry, dict) and "max_epochs" in (entry.get("trainer") or {}):
                        entry["trainer"]["max_epochs"] = self.budget
        if self.seeds is not None:
            spec["seeds"] = list(self.seeds)
        if self.fractions is not None:
            spec.pop("label_counts", None)
            spec["label_fractions"] = list(self.fractions)
        if self.heads is not None:
            names = [e.get("name") for g in ("heads", "baselines") for e in spec.get(g) or []]
            unknown = [h for h in self.heads if h not in names]
            if unknown:
                raise fail(f"--heads {','.join(unknown)}: not in the card; valid: {names}")
            for group in ("heads", "baselines"):
                spec[group] = [e for e in spec.get(group) or [] if e.get("name") in self.heads]
        return spec

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.budget, self.seeds, self.fractions, self.heads))


def load_card(path: str | Path, overrides: Overrides | None = None) -> Card:
    """Read and check a task card (with the command line's ``overrides``); errors name the
    card and the key."""
    path = Path(path)
    if not path.is_file():
        raise DensekitError(f"{path}: no such task card (see tasks/README.md)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DensekitError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise DensekitError(f"{path}: a task card is a YAML mapping of {sorted(CARD_KEYS)}")
    if overrides:
        spec = overrides.apply(spec, lambda message: DensekitError(message))

    def fail(message: str) -> DensekitError:
        return DensekitError(f"{path}: {message}")

    unknown = set(spec) - set(CARD_KEYS)
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}; valid: {sorted(CARD_KEYS)}")
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise fail(f"missing keys {missing}")
    for key, kind in CARD_KEYS.items():
        if key in spec and not isinstance(spec[key], kind):
            raise fail(f"{key} must be a {getattr(kind, '__name__', kind)}, got {spec[key]!r}")
    if spec["task"] not in TASKS:
        raise fail(f"task {spec['task']!r} is not one of {sorted(TASKS)}")
    if "label_fractions" in spec and "label_counts" in spec:
        raise fail("give label_fractions or label_counts, not both")
    for f in spec.get("label_fractions", []):
        if not isinstance(f, int | float) or isinstance(f, bool) or not 0 < f <= 1:
            raise fail(f"label_fractions: {f!r} is not in (0, 1]")
    for n in spec.get("label_counts", []):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise fail(f"label_counts: {n!r} is not a positive integer")
    seeds = spec["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise fail(f"seeds must be a list of integers, got {spec['seeds']!r}")
    if spec.get("feature_cache", True) is not True and spec.get("feature_cache") is not False:
        raise fail("feature_cache must be true or false")
    reserved = RESERVED_MODEL & set(spec["model"])
    if reserved:
        raise fail(f"model sets {sorted(reserved)}: these come from backbones and the cache")
    reserved = RESERVED_DATA & set(spec["data"])
    if reserved:
        raise fail(
            f"data sets {sorted(reserved)}: use label_fractions/label_counts, seeds, stratify"
        )
    backbones = spec.get("backbones", [])
    if not backbones and spec["heads"]:
        raise fail("heads need backbones: add a backbones list (name, backbone, weights)")
    _check_entries(fail, "backbones", backbones, BACKBONE_KEYS, ("name", "backbone", "weights"))
    _check_entries(fail, "heads", spec["heads"], ENTRY_KEYS, ("name",))
    _check_entries(fail, "baselines", spec.get("baselines", []), ENTRY_KEYS, ("name",))
    for group in ("heads", "baselines"):
        for entry in spec.get(group, []):
            for section in ("model", "data", "trainer"):
                if not isinstance(entry.get(section, {}), dict):
                    raise fail(f"{group} {entry['name']!r}: {section} must be a mapping")
            bad = (RESERVED_MODEL & set(entry.get("model", {}))) | (
                RESERVED_DATA & set(entry.get("data", {}))
            )
            if bad:
                raise fail(f"{group} {entry['name']!r} sets {sorted(bad)}, which the card sets")
    names = [e["name"] for g in ("heads", "baselines") for e in spec.get(g, [])]
    if len(set(names)) != len(names):
        raise fail(f"head and baseline names must differ, got {names}")
    for entry in spec.get("baselines", []):
        if entry.get("model", {}).get("head") != "unet":
            raise fail(f"baselines {entry['name']!r}: set model.head: unet (no backbone)")
    return Card(path, spec, bool(overrides))


def _check_entries(
    fail: Any, group: str, entries: list[Any], keys: set[str], required: tuple[str, ...]
) -> None:
    names = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise fail(f"{group}: each entry is a mapping with {sorted(keys)}, got {entry!r}")
        unknown = set(entry) - keys
        if unknown:
            raise fail(
                f"{group} entry {entry!r}: unknown keys {sorted(unknown)}; valid: {sorted(keys)}"
            )
        missing = [k for k in required if k not in entry]
        if missing:
            raise fail(f"{group} entry {entry!r}: missing {missing}")
        name = str(entry["name"])
        if not name or any(c in name for c in "/\\ ") or "__" in name or name in names:
            raise fail(f"{group}: name {name!r} must be unique, without spaces, slashes or '__'")
        names.add(name)
