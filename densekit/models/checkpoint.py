"""densekit checkpoints: what they record, reading one once, and the checks on loading.

A checkpoint (``densekit fit``'s, or :meth:`DenseModel.save`'s) is a ``torch.save`` dict with

* ``state_dict``: the model's tensors under ``model.`` (Lightning's layout: the task holds the
  model as ``task.model``), without the frozen backbone's weights (unless random: those cannot
  be recreated from a file);
* ``densekit``: the record (:func:`make_record`): ``format`` 1, the ``task``, the ``model``
  options (:class:`~densekit.models.config.ModelConfig`), the ``output`` spec, the backbone's
  provenance (name, weights source, path, sha256), densekit's version and, when known, the
  ``rasters`` the model was trained on (:class:`~densekit.data.band_layout.BandLayout`: band
  count, data type, band names; checkpoints of before this record have none);
* from ``densekit fit`` also Lightning's entries (``hyper_parameters``, ``epoch``, ...) and the
  data module's hyper-parameters (``datamodule_hyper_parameters``: a slice model's plane,
  context and intensity).

Checkpoints written before the model redesign (no ``format``) hold the task's tensors at the
top level (``head.*``, ``input_mean``: the same names as the model's, without ``model.``) and
no model record; :func:`read_checkpoint` rebuilds the record from their ``hyper_parameters``, so
they load and give the same outputs (``tests/data/checkpoints_v0``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from densekit.backbones.checkpoint import sha256_file, why_unreadable
from densekit.errors import DensekitError, WeightsError
from densekit.heads.official import OfficialDecoderHead
from densekit.models.config import ModelConfig
from densekit.models.outputs import DepthBins, OutputSpec
from densekit.version import __version__

if TYPE_CHECKING:
    from densekit.backbones import Backbone
    from densekit.models.inputs import InputSpec

FORMAT = 1
PREFIX = "model."
# the model's own entries of a checkpoint's state dict (a task also has its loss's, e.g. the
# class weights of a cross-entropy: ``loss_fn.parts.0.weight``)
MODEL_ENTRIES = (
    "input_mean",
    "input_std",
    "backbone",
    "fusion",
    "head",
    "detail",
    "unet",
    "depth_output",
)

# tasks of checkpoints without a model record: their outputs and main metric
LEGACY_TASKS = {"SegmentationTask": "miou", "ChangeDetectionTask": "f1", "DepthTask": "rmse"}


@dataclass(frozen=True)
class CheckpointFile:
    """What a checkpoint holds, read once (:func:`read_checkpoint`).

    Args:
        path: the file.
        sha256: the file's sha256.
        task: the name of the task that wrote it (``SegmentationTask``, ...).
        config: the model's options.
        output: what the model outputs.
        state: the model's tensors (DenseModel keys, without ``model.``).
        backbone: the backbone's recorded provenance (None for a U-Net).
        data: the data module's hyper-parameters (empty if none were saved).
        version: the densekit version that wrote it.
        official_head: where Meta's released head came from (kind, file, sha256, licence),
            for a model with one; else None.
        rasters: the training rasters' band layout (count, dtype, names) as recorded, or None
            (checkpoints written before densekit recorded it, and models trained on other data).
    """

    path: str
    sha256: str
    task: str
    config: ModelConfig
    output: OutputSpec
    state: dict[str, Tensor] = field(repr=False)
    backbone: dict[str, Any] | None
    data: dict[str, Any]
    version: str
    official_head: dict[str, Any] | None = None
    rasters: dict[str, Any] | None = None


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """Read a densekit checkpoint: its contents once (``torch.load(weights_only=True)``) and
    its sha256.

    Raises:
        DensekitError: a missing or unreadable file, or not a densekit checkpoint.
    """
    path = Path(path)
    stored, meta = _load(path)
    if meta.get("format") is None:
        config, output = legacy_record(meta["task"], stored.get("hyper_parameters"), path)
    else:
        config = ModelConfig.from_record(meta["model"])
        output = OutputSpec.from_dict(meta["output"])
    return CheckpointFile(
        path=str(path),
        sha256=sha256_file(path),
        task=str(meta["task"]),
        config=config,
        output=output,
        state=model_state(stored),
        backbone=meta.get("backbone"),
        data=dict(stored.get("datamodule_hyper_parameters") or {}),
        version=str(meta.get("densekit_version", "")),
        official_head=meta.get("official_head"),
        rasters=meta.get("rasters"),
    )


def read_task_name(path: str | Path) -> str:
    """The task a densekit checkpoint was written by (its record only; no model is built)."""
    return str(_load(Path(path))[1]["task"])


def load_file(path: str | Path) -> Any:
    """The contents of a checkpoint file, read with ``torch.load(weights_only=True)``.

    Raises:
        DensekitError: a missing or empty file, a file refused for holding executable objects,
            a damaged (truncated) file, or not a PyTorch file; each message names the file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise DensekitError(f"checkpoint {path}: {what}")
    if path.stat().st_size == 0:
        raise DensekitError(f"checkpoint {path}: the file is empty (an incomplete copy?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # permission denied, I/O error: the CLI names the file
    except Exception as e:
        reason = why_unreadable(e)
        if reason.startswith("refused"):
            raise DensekitError(f"checkpoint {path}: not a densekit checkpoint, {reason}") from None
        raise DensekitError(
            f"checkpoint {path}: {reason}; give a .ckpt written by densekit fit"
        ) from None


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's contents and its ``densekit`` record, or an error naming the file."""
    stored = load_file(path)
    meta = stored.get("densekit") if isinstance(stored, dict) else None
    if not isinstance(meta, dict) or "task" not in meta:
        raise DensekitError(
            f"checkpoint {path}: not a checkpoint of densekit fit (no densekit record); give a "
            ".ckpt written by densekit fit or DenseModel.save"
        )
    return stored, meta


def is_model_entry(key: str) -> bool:
    """Whether a state-dict key (without ``model.``) is one of the model's."""
    return key.split(".", 1)[0] in MODEL_ENTRIES


def model_state(stored: dict[str, Any]) -> dict[str, Tensor]:
    """The model's tensors of a checkpoint, under the model's own names: the entries under
    ``model.``, or, in a checkpoint of before the redesign, the task's top-level entries that
    are the model's (same names, no ``model.``; the loss's are left out)."""
    state = stored["state_dict"]
    if (stored.get("densekit") or {}).get("format") is None:
        return {k: v for k, v in state.items() if is_model_entry(k)}
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def legacy_record(
    task: str, hparams: dict[str, Any] | None, path: Path
) -> tuple[ModelConfig, OutputSpec]:
    """The model options and output spec of a checkpoint written before the redesign, from
    its task's hyper-parameters."""
    if task not in LEGACY_TASKS or not isinstance(hparams, dict):
        raise DensekitError(f"checkpoint {path}: not a checkpoint of densekit fit")
    hp = dict(hparams)
    if hp.get("head_grid") is not None:
        grid = dict(hp["head_grid"])
        grid["metric"] = grid.get("metric") or LEGACY_TASKS[task]
        hp["head_grid"] = grid
    images = 2 if task == "ChangeDetectionTask" else 1
    return ModelConfig.from_args(hp, images=images), legacy_output(task, hp)


def legacy_output(task: str, hp: dict[str, Any]) -> OutputSpec:
    """The output spec of an old task's hyper-parameters."""
    if task == "DepthTask":
        bins = DepthBins(
            hp.get("depth_mode", "bins"),
            int(hp.get("num_bins", 256)),
            hp.get("bin_spacing", "linear"),
            float(hp.get("min_depth", 1e-3)),
            float(hp.get("max_depth", 10.0)),
        )
        return OutputSpec.values("depth", bins)
    build = OutputSpec.change if task == "ChangeDetectionTask" else OutputSpec.segmentation
    return build(int(hp.get("num_classes", 2)), hp.get("class_names"))


def task_state(checkpoint: dict[str, Any]) -> None:
    """Bring a checkpoint written before the redesign into a task's layout now, in place: the
    model's entries under ``model.`` (the task holds it as ``task.model``), the loss's where
    they were; newer checkpoints are left as they are."""
    meta = checkpoint.get("densekit") or {}
    if meta.get("format") is None and "state_dict" in checkpoint:
        checkpoint["state_dict"] = {
            (PREFIX + k if is_model_entry(k) else k): v for k, v in checkpoint["state_dict"].items()
        }


# -- the record ------------------------------------------------------------------------------
def provenance(backbone: Backbone | None) -> dict[str, Any]:
    """The backbone record of checkpoints and metric files."""
    if backbone is None:
        return {"backbone": None, "densekit_version": __version__}
    w = backbone.weights
    return {
        "backbone": {"name": backbone.name, "source": w.source, "path": w.path, "sha256": w.sha256},
        "densekit_version": __version__,
    }


def make_record(
    task: str,
    config: ModelConfig,
    output: OutputSpec,
    inputs: InputSpec,
    backbone: Backbone | None,
    head: nn.Module | None = None,
    rasters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``densekit`` record of a checkpoint of a model trained by ``task`` (with one of
    Meta's heads, where it came from: kind, file, sha256, licence; ``rasters``: the band layout
    of the training rasters, when known)."""
    record = {
        "format": FORMAT,
        "task": task,
        "model": config.to_args(),
        "output": output.to_dict(),
        "inputs": inputs.to_dict(),
        **provenance(backbone),
    }
    if isinstance(head, OfficialDecoderHead):
        record["official_head"] = head.record()
    if rasters is not None:
        record["rasters"] = dict(rasters)
    return record


def check_backbone(recorded: dict[str, Any], backbone: Backbone, where: str) -> None:
    """The backbone loaded now is the one the checkpoint was trained on."""
    if recorded["source"] == "random":
        if backbone.weights.source != "random":
            raise DensekitError(
                f"{where}: the checkpoint was trained on a random backbone (saved in the "
                "checkpoint); load it with weights='random', not with another weights file"
            )
        return
    if recorded["sha256"] != backbone.weights.sha256:
        raise DensekitError(
            f"{where}: the checkpoint was trained on backbone weights {recorded['path']} "
            f"(sha256 {recorded['sha256']}), but {backbone.weights.path} has sha256 "
            f"{backbone.weights.sha256}: the file changed or is another one"
        )


# weights values that name no local file
WEIGHT_WORDS = ("random", "bundled", "official")


def check_backbone_file(ckpt: CheckpointFile) -> None:
    """The backbone weights file a checkpoint was trained on is still there: the checkpoint
    names it (and its sha256) but does not hold it.

    Raises:
        WeightsError: naming the checkpoint, the file and its recorded sha256.
    """
    if not ckpt.config.uses_backbone:
        return
    weights = ckpt.config.backbone.weights
    if weights is None or weights in WEIGHT_WORDS or weights.startswith(("http:", "https:", "hf:")):
        return
    if Path(weights).expanduser().exists():
        return
    sha = (ckpt.backbone or {}).get("sha256") or "not recorded"
    raise WeightsError(
        f"checkpoint {ckpt.path}: its backbone {ckpt.config.backbone.name} was trained on the "
        f"weights file {weights} (sha256 {sha}), which does not exist here; the checkpoint names "
        "that file but does not hold it: put the file back at that path"
    )


def write_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then moved into place."""
    if not path.parent.is_dir():
        raise DensekitError(f"{path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
