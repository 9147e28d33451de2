"""``densekit validate|test|predict --ckpt_path C``: the rasters read against the rasters the
checkpoint was trained on, and ``--bands`` to choose the bands of others.

A checkpoint records its training rasters' band count, data type and band names
(:class:`~densekit.data.band_layout.BandLayout`). Before the model is built, each image the
command will read is compared with that record; one that differs is refused with both
descriptions, as ``densekit tile`` refuses it, unless ``--bands`` says which of its bands the
model reads (1-based indices or names, in the model's order), which then replaces the data
module's ``bands`` (one per model input band, or one per distinct training band, as
``densekit tile`` takes them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from densekit.data.band_layout import BandLayout
from densekit.data.bands import BandRef, parse_bands
from densekit.errors import DensekitError
from densekit.inference.rasters import model_band_order

STAGES = ("validate", "test", "predict")


def take_bands(argv: Sequence[str]) -> tuple[list[str], tuple[BandRef, ...] | None]:
    """``argv`` without ``--bands X`` (or ``--bands=X``), and the bands it gave.

    Raises:
        DensekitError: ``--bands`` on another command, without a value, or given twice.
    """
    rest: list[str] = []
    text: str | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--bands" or arg.startswith("--bands="):
            if text is not None:
                raise DensekitError("--bands is given twice: give it once")
            if arg == "--bands":
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise DensekitError("--bands needs a value: 1-based indices or band names")
                text, i = args[i + 1], i + 2
                continue
            text = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if text is None:
        return rest, None
    command = rest[0] if rest else ""
    if command not in STAGES:
        raise DensekitError(
            f"--bands is an option of densekit {', '.join(STAGES)} (and tile), not of "
            f"densekit {command}: set data.bands in the config"
        )
    bands = parse_bands(text)
    if not bands:
        raise DensekitError(
            "--bands is empty: give 1-based indices or band names, e.g. --bands 1 or 4,3,2"
        )
    return rest, bands


def set_stage_bands(data: Any, given: Sequence[BandRef], checkpoint: Any, ckpt_path: Any) -> None:
    """Put ``--bands`` into the data section of the config (``data.init_args.bands``).

    Args:
        data: the config's ``data`` (class_path and init_args).
        given: the bands of ``--bands``.
        checkpoint: the ``--ckpt_path``'s CheckpointFile (None where none was read).
        ckpt_path: the ``ckpt_path`` given (a file, ``last``, ``best``, ... or None).

    Raises:
        DensekitError: a data module that reads no raster bands, no checkpoint file, or a
            band count the model cannot take.
    """
    init_args = getattr(data, "init_args", None)
    if init_args is None or "bands" not in init_args:
        name = str(getattr(data, "class_path", data))
        raise DensekitError(
            f"--bands: the data module {name} reads no raster bands (no 'bands' option); "
            "--bands is for GeoTIFF data modules"
        )
    if checkpoint is None and ckpt_path is not None:
        raise DensekitError(
            f"--bands with --ckpt_path {ckpt_path}: give the checkpoint's file path, which "
            "says how many bands its model reads"
        )
    init_args.bands = stage_bands(given, checkpoint)


def stage_bands(given: Sequence[BandRef], checkpoint: Any) -> list[BandRef]:
    """The data module's ``bands`` for ``--bands given``: one per model input band, or one per
    distinct training band repeated as training repeated it (``--bands 1`` on a model trained
    on ``bands: [1, 1, 1]`` reads band 1 three times), as ``densekit tile`` takes them.

    Args:
        given: the bands of ``--bands``.
        checkpoint: the ``--ckpt_path``'s :class:`~densekit.models.checkpoint.CheckpointFile`,
            or None where none was given.

    Raises:
        DensekitError: no checkpoint, or a band count that fits neither.
    """
    if checkpoint is None:
        raise DensekitError(
            "--bands needs --ckpt_path: the checkpoint says how many bands its model reads"
        )
    config = checkpoint.config
    trained = None if config.bands is None else list(config.bands)
    order = model_band_order(list(given), trained, config.in_channels)
    if order is None:
        distinct = config.in_channels if trained is None else len(dict.fromkeys(trained))
        want = (
            str(config.in_channels)
            if distinct == config.in_channels
            else (f"{distinct} or {config.in_channels}")
        )
        raise DensekitError(
            f"--bands {','.join(str(b) for b in given)}: {len(given)} band(s), but the model of "
            f"the checkpoint {checkpoint.path} takes {config.in_channels}"
            + (f" (bands {trained} of its rasters)" if trained else "")
            + f"; give {want} 1-based indices or names, in the model's order"
        )
    return list(order)


def check_stage_rasters(
    data: Any, record: dict[str, Any] | None, checkpoint: str, stage: str, bands_given: bool
) -> None:
    """Refuse an image ``stage`` reads whose band layout differs from the checkpoint's
    training rasters (``record``), unless ``--bands`` was given.

    Args:
        data: the data module (one without ``stage_images`` reads no rasters: nothing to check).
        record: the checkpoint's ``rasters`` record (None: written before densekit kept it).
        checkpoint: the checkpoint's path, for the message.
        stage: ``validate``, ``test`` or ``predict``.
        bands_given: ``--bands`` was given.
    """
    images = getattr(data, "stage_images", None)
    if bands_given or not callable(images):
        return
    if record is None:
        warnings.warn(
            f"the checkpoint {checkpoint} does not record the rasters it was trained on (written "
            "before densekit recorded them), so the images' band count, data type (value range) "
            "and band names are not checked against them",
            UserWarning,
            stacklevel=2,
        )
        return
    trained = BandLayout.from_dict(record, f"checkpoint {checkpoint}")
    for path in images(stage):
        layout = BandLayout.of(path)
        differ = trained.differences(layout)
        if differ:
            raise DensekitError(
                f"{path} has {layout.describe()}; the checkpoint {checkpoint} was trained on "
                f"rasters with {trained.describe()} (different {', '.join(differ)}); give "
                f"--bands: 1-based indices or names of this raster's bands, in the model's order"
            )
