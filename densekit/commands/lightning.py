"""``densekit fit|validate|test|predict|pretrain --config FILE.yaml``: LightningCLI on densekit's
tasks and data modules (or the DINO pretraining module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from densekit.errors import DensekitError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict", "pretrain")


def densekit_cause(exc: BaseException | None) -> DensekitError | None:
    """The DensekitError behind ``exc`` (jsonargparse wraps errors raised while it instantiates
    the model and data classes)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DensekitError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_lightning(argv: Sequence[str]) -> int:
    """Run one Lightning command (``argv[0]``) with its arguments."""
    from lightning.pytorch.cli import LightningCLI

    from densekit.data.base import DenseDataModule
    from densekit.tasks import DenseTask

    argv = list(argv)
    if len(argv) > 1 and not any(a.startswith("--weights_only") for a in argv):
        # Checkpoints given with --ckpt_path are read without running code from them.
        argv.append("--weights_only=true")
    if argv and argv[0] == "pretrain":  # LightningCLI's fit on the DINO module
        from densekit.pretrain import DinoPretrainTask, PretrainDataModule

        LightningCLI(
            DinoPretrainTask,
            PretrainDataModule,
            args=["fit", *argv[1:]],
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "densekit pretrain"},
        )
        return 0
    trainer_defaults: dict[str, Any] = {}
    if argv and argv[0] == "predict":
        from densekit.tasks.writer import PredictionWriter

        trainer_defaults["callbacks"] = [PredictionWriter()]
    LightningCLI(
        DenseTask,
        DenseDataModule,
        trainer_defaults=trainer_defaults,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": f"densekit {argv[0]}" if argv else "densekit"},
    )
    return 0


def lightning_command(argv: Sequence[str]) -> int:
    """:func:`run_lightning`, with a densekit error printed as one line (exit status 2)."""
    import sys

    try:
        return run_lightning(argv)
    except Exception as e:
        cause = densekit_cause(e)
        if cause is None:
            raise
        print(f"densekit {argv[0]}: error: {cause}", file=sys.stderr)
        return 2
