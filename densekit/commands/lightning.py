"""``densekit fit|validate|test|predict|pretrain --config FILE.yaml``: LightningCLI on densekit's
tasks and data modules (or the DINO pretraining module).

Before any model is built, :class:`DensekitCLI` checks what the user gave: a ``--ckpt_path``
is read like any densekit checkpoint (no code runs from it; a damaged file, a file that is not a
checkpoint or a checkpoint of another task is named), and the data module is made first, so its
settings (batch size, windows larger than the images, ...) are refused before the model's
backbone is loaded. The model's own option values are checked at the start of its ``__init__``.
A configuration error (an unknown key, a value of the wrong type) is one line naming the key.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningCLI

from densekit.errors import DensekitError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict", "pretrain")
# ckpt_path values Lightning resolves itself (not files)
CKPT_KEYWORDS = ("best", "last", "hpc")


class DensekitCLI(LightningCLI):
    """LightningCLI with densekit's checks made before any class is instantiated."""

    _ckpt_checked = False

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters here, before any other hook
        self._check_ckpt_path()
        super()._parse_ckpt_path()

    def _check_ckpt_path(self) -> None:
        if self._ckpt_checked:
            return
        self._ckpt_checked = True
        name = self.config.get("subcommand")
        config = self.config[name] if name else self.config
        ckpt = config.get("ckpt_path")
        if ckpt is not None and str(ckpt) not in CKPT_KEYWORDS:
            check_ckpt_path(str(ckpt), config.get("model"))

    def before_instantiate_classes(self) -> None:
        self._check_ckpt_path()
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("data") is None:
            return
        # the data module first: its settings are refused before the model is built
        parser = self._parser(self.subcommand)
        data = parser.instantiate_classes(type(config)(data=config.data.clone())).data
        check_same_task(config.get("model"), data)
        check = getattr(data, "check_settings", None)
        if callable(check):
            check()


def check_same_task(model: Any, data: Any) -> None:
    """The configured model's task is the data module's (e.g. not a SegmentationTask on a
    DepthDataModule), checked before the model is built."""
    import importlib

    class_path = model.get("class_path") if hasattr(model, "get") else None
    kind = getattr(data, "kind", None)
    if not class_path or kind is None or "." not in str(class_path):
        return
    module, name = str(class_path).rsplit(".", 1)
    try:
        task = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return  # jsonargparse names a class path it cannot import
    if getattr(task, "kind", kind) != kind:
        raise DensekitError(
            f"a {name} (from the config or the checkpoint) cannot use a {type(data).__name__}: "
            "the model and the data must be of the same task"
        )


def check_ckpt_path(path: str, model: Any) -> None:
    """A ``--ckpt_path`` is a readable checkpoint of the configured task (or, for
    ``pretrain``, a readable PyTorch file), read without running code from it."""
    from densekit.models.checkpoint import check_backbone_file, load_file, read_checkpoint

    class_path = model.get("class_path") if hasattr(model, "get") else None
    if class_path is None:  # pretrain: a Lightning checkpoint of the DINO module
        load_file(path)
        return
    ckpt = read_checkpoint(path)
    task = ckpt.task
    name = str(class_path).rsplit(".", 1)[-1]
    if name != "DenseTask" and task != name:
        raise DensekitError(
            f"--ckpt_path {path}: a checkpoint of a {task}, but the config's model is a {name}"
        )
    check_backbone_file(ckpt)  # Lightning builds the model with the checkpoint's weights


def config_error(text: str) -> str:
    """jsonargparse's multi-line report of a bad config value as one line naming the key."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    skip = (
        "Parser key",
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
        "Problem with given class_path",
    )
    lines = [line.strip().lstrip("-").strip() for line in text.splitlines()]
    kept = [line for line in lines if line and not line.startswith(skip)]
    detail = " ".join(kept)
    given = re.search(r"^\s*Given value: (.*)$", text, re.MULTILINE)
    if given and "Got value" not in detail:
        detail += f"; got {given.group(1)[:80]}"
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail)
    return f"{'.'.join(keys)}: {detail}" if keys else detail


def run_lightning(argv: Sequence[str]) -> int:
    """Run one Lightning command (``argv[0]``) with its arguments; errors are raised."""
    from densekit.data.base import DenseDataModule
    from densekit.tasks import DenseTask

    argv = list(argv)
    if len(argv) > 1 and not any(a.startswith("--weights_only") for a in argv):
        # Checkpoints given with --ckpt_path are read without running code from them.
        argv.append("--weights_only=true")
    parser_kwargs = {"prog": "densekit", "exit_on_error": False}
    try:
        if argv and argv[0] == "pretrain":  # LightningCLI's fit on the DINO module
            from densekit.pretrain import DinoPretrainTask, PretrainDataModule

            DensekitCLI(
                DinoPretrainTask,
                PretrainDataModule,
                args=["fit", *argv[1:]],
                save_config_kwargs={"overwrite": True},
                parser_kwargs={**parser_kwargs, "prog": "densekit pretrain"},
            )
            return 0
        trainer_defaults: dict[str, Any] = {}
        if argv and argv[0] == "predict":
            from densekit.tasks.writer import PredictionWriter

            trainer_defaults["callbacks"] = [PredictionWriter()]
        DensekitCLI(
            DenseTask,
            DenseDataModule,
            trainer_defaults=trainer_defaults,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
        )
    except argparse.ArgumentError as e:
        command = "pretrain" if argv[0] == "pretrain" else argv[0]
        raise DensekitError(
            f"{config_error(str(e))} (densekit {command} --help lists the options)"
        ) from None
    return 0
