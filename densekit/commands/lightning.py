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
import os
import signal
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from densekit.commands.config_errors import ROOTS, config_error
from densekit.commands.stage_bands import (
    STAGES,
    check_stage_rasters,
    set_stage_bands,
    take_bands,
)
from densekit.errors import DensekitError, Terminated

# ckpt_path values Lightning resolves itself (not files)
CKPT_KEYWORDS = ("best", "last", "hpc")


class DensekitCLI(LightningCLI):
    """LightningCLI as part of the ``densekit`` command.

    * usage and help name the command the user typed (``densekit fit``, ``densekit pretrain``);
    * checkpoints are always read without running code from them (``weights_only=True`` is
      passed to every Trainer method, not an option);
    * the run keeps ``last.ckpt``, the best checkpoint on the task's main validation metric,
      TensorBoard and CSV logs (:mod:`densekit.tasks.checkpointing`) and shows progress as a
      bar in a terminal, else as plain lines (:mod:`densekit.tasks.progress`), unless the config
      names its own;
    * densekit's checks are made before any class is instantiated, and ``fit`` ends with a
      table of the validation metrics and where the checkpoints and logs are.
    """

    _ckpt_checked = False
    _checkpoint: Any = None  # the --ckpt_path's CheckpointFile, once read

    def __init__(
        self, *args: Any, command: str, bands: tuple[Any, ...] | None = None, **kwargs: Any
    ) -> None:
        self.command = command
        self.bands = bands  # --bands of validate, test and predict
        given = list(kwargs.get("args") or [])
        self.args_given = given[1:]  # after the subcommand
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: {*skip, "weights_only"} for name, skip in LightningCLI.subcommands().items()}

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in self._subcommand_parsers.items():
            subparser.prog = f"densekit {'pretrain' if self.command == 'pretrain' else name}"
            if name in STAGES and self.command != "pretrain":
                first = (subparser.description or "").split(". ")[0].rstrip(".")
                subparser.description = f"{first}. {BANDS_HELP}"

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # LightningCLI warns when it is given ``args`` and sys.argv has arguments too: here
        # ``args`` are sys.argv's own, so there is nothing to warn about
        self.config = parser.parse_args(args)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        return {**super()._prepare_subcommand_kwargs(subcommand), "weights_only": True}

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from densekit.tasks.checkpointing import BestAndLast, default_loggers, has_checkpoint
        from densekit.tasks.progress import has_progress_bar, progress_callback

        root = str(config.get("default_root_dir") or os.getcwd())
        if config.get("logger") in (None, True) and self.subcommand != "predict":
            config["logger"] = default_loggers(root)
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not has_progress_bar(given):
            callbacks.append(progress_callback(f"densekit {self.command}: "))
        if (
            self.subcommand == "fit"
            and config.get("enable_checkpointing") is not False
            and not has_checkpoint(given)
        ):
            callbacks.append(BestAndLast(getattr(self.model, "main_metric", None)))
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Terminated:
            raise Terminated(self.what_was_kept()) from None
        except SystemExit:
            if self.trainer.interrupted:  # Lightning's exit after Ctrl-C
                signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignored it
                raise KeyboardInterrupt(self.what_was_kept()) from None
            raise

    def what_was_kept(self) -> str:
        """After Ctrl-C or SIGTERM: the checkpoint kept and the command that resumes from it."""
        callback = self.trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") if self.subcommand == "fit" else ""
        if not last:
            if self.subcommand == "fit":
                return "no epoch had finished, no checkpoint kept: run the same command again"
            return "run the same command again"
        given = list(self.args_given)  # a resumed run resumed again: the newer checkpoint
        while "--ckpt_path" in given:
            i = given.index("--ckpt_path")
            del given[i : i + 2]
        given = [a for a in given if not a.startswith("--ckpt_path=")]
        resume = " ".join(["densekit", self.command, *given, "--ckpt_path", last])
        return f"kept {last}; resume with: {resume}"

    def after_fit(self) -> None:
        from densekit.tasks.summary import print_fit_summary

        print_fit_summary(self.trainer)

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
            self._checkpoint = check_ckpt_path(str(ckpt), config.get("model"))

    def before_instantiate_classes(self) -> None:
        self._check_ckpt_path()
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("data") is None:
            return
        # the data module first: its settings are refused before the model is built
        if self.bands is not None:  # --bands replaces the config's data bands
            ckpt = config.get("ckpt_path")
            set_stage_bands(config.data, self.bands, self._checkpoint, ckpt)
        parser = self._parser(self.subcommand)
        data = parser.instantiate_classes(type(config)(data=config.data.clone())).data
        check_same_task(config.get("model"), data)
        check = getattr(data, "check_settings", None)
        if callable(check):
            check()
        if self.subcommand in STAGES and self._checkpoint is not None:
            ckpt = self._checkpoint
            given = self.bands is not None
            check_stage_rasters(data, ckpt.rasters, ckpt.path, self.subcommand, given)


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


def check_ckpt_path(path: str, model: Any) -> Any:
    """A ``--ckpt_path`` is a readable checkpoint of the configured task (or, for
    ``pretrain``, a readable PyTorch file), read without running code from it; returns the
    :class:`~densekit.models.checkpoint.CheckpointFile` (None for ``pretrain``)."""
    from densekit.models.checkpoint import check_backbone_file, load_file, read_checkpoint

    class_path = model.get("class_path") if hasattr(model, "get") else None
    if class_path is None:  # pretrain: a Lightning checkpoint of the DINO module
        load_file(path)
        return None
    ckpt = read_checkpoint(path)
    task = ckpt.task
    name = str(class_path).rsplit(".", 1)[-1]
    if name != "DenseTask" and task != name:
        raise DensekitError(
            f"--ckpt_path {path}: a checkpoint of a {task}, but the config's model is a {name}"
        )
    check_backbone_file(ckpt)  # Lightning builds the model with the checkpoint's weights
    return ckpt


BANDS_HELP = (
    "--bands 4,3,2: the bands of the images the model reads, 1-based indices or names in the "
    "model's order (replaces data.bands). Without it, an image whose band count, data type or "
    "band names differ from the checkpoint's training rasters is refused."
)


def named_parser(prog: str) -> type[LightningArgumentParser]:
    """LightningCLI's parser class, whose parsers are named ``prog`` unless told otherwise: the
    parsers jsonargparse makes for ``--model.help CLASS`` would take ``sys.argv[0]``'s name
    (and ``sys.argv`` itself must stay as it is: multi-process launchers re-run it)."""

    class NamedParser(LightningArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("prog", prog)
            super().__init__(*args, **kwargs)

    return NamedParser


def run_lightning(argv: Sequence[str]) -> int:
    """Run one Lightning command (``argv[0]``) with its arguments; errors are raised.

    Lightning ends a run stopped with Ctrl-C with ``sys.exit(1)``; here it becomes a
    ``KeyboardInterrupt`` whose message says what was kept and how to resume (exit 130)."""
    from densekit.data.base import DenseDataModule
    from densekit.tasks import DenseTask
    from densekit.tasks.quiet import quiet_lightning

    argv, bands = take_bands(argv)
    command = argv[0] if argv else "fit"
    parser_kwargs = {"prog": "densekit", "exit_on_error": False}
    parser_class = named_parser(f"densekit {command}")
    try:
        with quiet_lightning(), warnings.catch_warnings():
            if command in ("validate", "test", "predict"):  # the training callbacks' states
                warnings.filterwarnings("ignore", message=r".*callbacks used to create the chec")
            if command == "pretrain":  # LightningCLI's fit on the DINO module
                from densekit.pretrain import DinoPretrainTask, PretrainDataModule

                DensekitCLI(
                    DinoPretrainTask,
                    PretrainDataModule,
                    command=command,
                    args=["fit", *argv[1:]],
                    save_config_kwargs={"overwrite": True},
                    parser_kwargs=parser_kwargs,
                    parser_class=parser_class,
                )
                return 0
            trainer_defaults: dict[str, Any] = {}
            if command == "predict":
                from densekit.tasks.writer import PredictionWriter

                trainer_defaults["callbacks"] = [PredictionWriter()]
            DensekitCLI(
                DenseTask,
                DenseDataModule,
                command=command,
                bands=bands,
                trainer_defaults=trainer_defaults,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=argv,
                auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True},
                parser_kwargs=parser_kwargs,
                parser_class=parser_class,
            )
    except argparse.ArgumentError as e:
        raise DensekitError(
            f"{config_error(str(e), ROOTS.get(command, ROOTS['fit']))} "
            f"(densekit {command} --help lists the options)"
        ) from None
    return 0
