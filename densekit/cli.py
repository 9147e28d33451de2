"""The ``densekit`` command: the parser of every subcommand, and the small adapters that turn
its arguments into calls of the library (the Lightning commands, ``features``, ``stats`` and
``quickstart`` in :mod:`densekit.commands`; ``tile`` and ``volume`` in
:mod:`densekit.inference`; ``benchmark`` in :mod:`densekit.benchmark`). Errors in what the user
gave print one message naming the file, key or value and exit with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError, Terminated, describe_os_error
from densekit.version import __version__

# run by LightningCLI (densekit.commands.lightning), which parses their arguments
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict", "pretrain")


# -- parsing the arguments of the tool commands --------------------------------------------
def _number(text: str, item: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise DensekitError(f"--arch {item!r}: {text!r} is not a number") from None


def parse_arch(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise DensekitError(f"--arch expects KEY=VALUE, got {item!r}")
        values = [_number(v, item) for v in value.split(",")]
        out[key] = values if len(values) > 1 else values[0]
    return out


def parse_layers(text: str) -> str | list[int]:
    if text in ("last", "last4", "dpt"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise DensekitError(
            f"--layers {text!r}: use 'last', 'last4', 'dpt' or block indices like 2,5,8,11"
        ) from None


def parse_device(text: str) -> Any:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise DensekitError(
            f"--device {text!r}: not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DensekitError(f"--device {text}: no CUDA device is available here")
    return device


def cmd_features(args: argparse.Namespace) -> int:
    from densekit.commands.tools import features
    from densekit.data.bands import parse_bands

    return features(
        args.image,
        backbone=args.backbone,
        weights=args.weights,
        layers=parse_layers(args.layers),
        bands=parse_bands(args.bands),
        stats=args.stats,
        scale=args.scale,
        fill_nonfinite=args.fill_nonfinite,
        frame=args.frame,
        arch=parse_arch(args.arch),
        bf16=args.bf16,
        device=parse_device(args.device),
        out=args.out,
        pca=args.pca,
    )


def cmd_stats(args: argparse.Namespace) -> int:
    from densekit.commands.tools import stats
    from densekit.data.bands import parse_bands

    return stats(
        args.files,
        bands=parse_bands(args.bands),
        backbone=args.backbone,
        fmt=args.format,
        out=args.out,
    )


def cmd_backbones(args: argparse.Namespace) -> int:
    """The registry as a table: rich in a terminal (or with ``--width``), else one plain line per
    backbone (``densekit backbones | grep vitl16``)."""
    from densekit.backbones.registry import ALIASES, NORMALIZATIONS, REGISTRY
    from densekit.tables import print_table

    columns = ("name", "family", "patch", "dim", "depth", "params", "normalisation", "weights")
    rows = []
    for spec in REGISTRY.values():
        norm = NORMALIZATIONS[spec.normalization]
        rows.append(
            [
                spec.name,
                spec.family,
                str(spec.patch_size),
                str(spec.embed_dim) if spec.is_vit else "/".join(map(str, spec.dims)),
                str(spec.depth) if spec.is_vit else "/".join(map(str, spec.stage_depths)),
                f"{spec.num_params / 1e6:.1f}M",
                f"{norm.name}: mean {norm.mean}, std {norm.std}",
                "\n".join(spec.weight_files),
            ]
        )
    title = "densekit backbones (load with densekit.load_backbone(name, weights=...))"
    print_table(columns, rows, title=title, width=args.width)
    print("aliases: " + ", ".join(f"{a} -> {n}" for a, n in sorted(ALIASES.items())))
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from densekit.commands.official import list_heads

    print("\n".join(list_heads()))
    return 0


def parse_pair(text: str | None, flag: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise DensekitError(f"{flag} {text!r}: give MIN,MAX in metres, e.g. 0.001,96") from None
    return low, high


def cmd_import_head(args: argparse.Namespace) -> int:
    from densekit.commands.official import import_head
    from densekit.data.bands import parse_bands

    layers = parse_layers(args.layers) if args.layers else None
    if isinstance(layers, str):
        raise DensekitError(f"--layers {args.layers!r}: give block indices, e.g. 5,11,17,23")
    record = import_head(
        args.kind,
        args.head,
        args.backbone,
        args.weights,
        args.out,
        layers=layers,
        depth_range=parse_pair(args.depth_range, "--depth-range"),
        arch=parse_arch(args.arch),
        scale=args.scale,
        dtype=args.dtype,
        bands=parse_bands(args.bands) or (1, 2, 3),
        class_names=args.class_names.split(",") if args.class_names else None,
    )
    drange = record["depth_range"]
    print(
        f"wrote {args.out}: {record['kind']} head ({record['licence']}; sha256 "
        f"{record['sha256']}) on {args.backbone}, layers {record['layers']}"
        + (f", {drange[0]:g}-{drange[1]:g} m" if drange else "")
    )
    print(f"next: densekit tile --checkpoint {args.out} --input IMAGE.tif --output OUT.tif")
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from densekit.data.bands import parse_bands
    from densekit.inference import StoppedEarly, TileOptions, tile

    inputs = args.input[0] if len(args.input) == 1 else args.input
    inputs2 = None
    if args.input2:
        inputs2 = args.input2[0] if len(args.input2) == 1 else args.input2
    options = TileOptions(
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        device=args.device,
        precision=args.precision,
        prefetch=args.prefetch,
        resume=args.resume,
        stop_after_strips=args.stop_after_strips,
        progress=not args.no_progress,
        bands=parse_bands(args.bands),
    )
    try:
        records = tile(args.checkpoint, inputs, args.output, inputs2, options)
    except StoppedEarly as e:
        print(f"densekit tile: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        given = [a for a in args.argv if a != "--debug"]
        resume = " ".join(["densekit", *given, *([] if args.resume else ["--resume"])])
        raise KeyboardInterrupt(
            "the finished strips are kept in the output's .partial folder; go on with: " + resume
        ) from None
    for r in records:
        if r:  # rank 0
            print(f"wrote {', '.join(r['outputs'])} ({r['megapixels_per_s']} Mpx/s)")
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    """Run ``densekit volume``, print the outputs and the metrics (no patient data)."""
    from densekit.inference import segment_volume

    if args.ct_window is not None and args.percentiles is not None:
        raise DensekitError("give --ct-window or --percentiles, not both")
    intensity: dict[str, Any] | None = None
    if args.ct_window is not None:
        parts = args.ct_window.split(",")
        intensity = {
            "ct_window": args.ct_window if len(parts) == 1 else _numbers(parts, "--ct-window")
        }
    elif args.percentiles is not None:
        intensity = {"percentiles": _numbers(args.percentiles.split(","), "--percentiles")}
    result = segment_volume(
        args.checkpoint,
        args.input,
        args.output,
        series_uid=args.series_uid,
        on_missing=args.on_missing,
        reference=args.reference,
        batch_size=args.batch_size,
        device=str(parse_device(args.device)),
        plane=args.plane,
        context=args.context,
        intensity=intensity,
        progress=not args.no_progress,
    )
    record = result["record"]
    shape = "x".join(map(str, record["input"]["shape"]))
    classes = len(record["classes"])
    print(f"wrote {', '.join(result['outputs'])} ({shape} voxels, {classes} classes)")
    for name, m in (record["metrics"] or {}).get("classes", {}).items():
        dice = "n/a" if m["dice"] is None else f"{m['dice']:.4f}"
        hd95 = "n/a" if m["hd95_mm"] is None else f"{m['hd95_mm']:.2f} mm"
        print(f"{name}: Dice {dice}, HD95 {hd95}")
    return 0


def _numbers(parts: list[str], flag: str) -> list[float]:
    try:
        return [float(v) for v in parts]
    except ValueError:
        raise DensekitError(f"{flag} {','.join(parts)!r}: expected numbers like 40,400") from None


def _listed(text: str | None, flag: str, kind: type) -> list[Any] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``kind`` int, float or str); None stays None."""
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DensekitError(
            f"{flag} {text!r}: give comma-separated {kind.__name__} values, e.g. "
            + {"int": "0,1,2", "float": "0.1,1.0"}.get(kind.__name__, "linear,unet")
        ) from None
    if not values:
        raise DensekitError(f"{flag} {text!r}: give at least one value")
    return values


def cmd_benchmark(args: argparse.Namespace) -> int:
    from densekit.benchmark import Overrides, load_card, run_benchmark

    overrides = Overrides(
        budget=args.budget,
        seeds=_listed(args.seeds, "--seeds", int),
        fractions=_listed(args.fractions, "--fractions", float),
        heads=_listed(args.heads, "--heads", str),
    )
    if args.list:
        card = load_card(args.card, overrides)
        for run in card.runs(Path(args.out).resolve()):
            print(run.run_id)
        return 0
    try:
        rows = run_benchmark(args.card, args.out, overrides=overrides)
    except KeyboardInterrupt:
        options = " ".join(a for a in args.argv if a != "--debug")
        print(
            f"densekit benchmark: interrupted; the finished runs are kept in "
            f"{args.out}/results.jsonl; resume with: densekit {options}",
            file=sys.stderr,
        )
        return 130
    out = Path(args.out)
    files = ", ".join(str(out / f"results.{ext}") for ext in ("csv", "md", "png"))
    print(f"{len(rows)} runs; wrote {files}")
    print((out / "results.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="densekit",
        description="Dense predictions from frozen DINO features.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "training (LightningCLI, see `densekit fit --help`):\n"
            "  fit|validate|test|predict --config FILE.yaml   train or evaluate a head\n"
            "  validate|test|predict ... --bands 4,3,2        the images' bands the model reads\n"
            "  pretrain --config FILE.yaml                    DINO self-supervised pretraining"
        ),
    )
    parser.add_argument("--version", action="version", version=f"densekit {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also DENSEKIT_DEBUG=1); any command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("backbones", help="list the registry of backbones")
    p.add_argument("--width", type=int, default=None, help="table width (default: terminal)")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("heads", help="list Meta's released dense heads densekit loads")
    p.set_defaults(func=cmd_heads)

    p = sub.add_parser(
        "import-head",
        help="make a densekit checkpoint of one of Meta's released heads (tile/test/predict it)",
        description=(
            "Write a densekit checkpoint of Meta's head file on its backbone (see `densekit "
            "heads`); tile, test and predict then use it as a trained checkpoint."
        ),
    )
    p.add_argument("--kind", required=True, help="head kind or released name (`densekit heads`)")
    p.add_argument("--head", required=True, help="Meta's head file (.pth)")
    p.add_argument("--backbone", required=True, help="registry name (see `densekit backbones`)")
    p.add_argument("--weights", required=True, help="the backbone's weights (as for features)")
    p.add_argument("--out", required=True, help="the checkpoint to write (.ckpt)")
    p.add_argument("--layers", default=None, help="block indices (default: the released ones)")
    p.add_argument("--depth-range", default=None, help="MIN,MAX metres (default: released)")
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiplies raw values to reach [0, 1] (default 1/255 for uint8 imagery)",
    )
    p.add_argument(
        "--dtype", default="uint8", help="data type of the imagery it reads (default uint8)"
    )
    p.add_argument(
        "--bands", default=None, help="the red, green, blue bands (1-based or names; default 1,2,3)"
    )
    p.add_argument("--class-names", default=None, help="comma-separated class names (seg heads)")
    p.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone architecture override, e.g. embed_dim=64 (tiny test models)",
    )
    p.set_defaults(func=cmd_import_head)

    p = sub.add_parser(
        "features",
        help="patch features of one image (GeoTIFF, PNG/JPEG, DICOM) and their PCA picture",
        description="Compute the patch features of one image with a frozen backbone.",
    )
    p.add_argument("image", help="GeoTIFF, PNG/JPEG or DICOM file")
    p.add_argument("--backbone", required=True, help="registry name (see `densekit backbones`)")
    p.add_argument(
        "--weights",
        required=True,
        help="official .pth, HF folder/.safetensors, 'official'/URL/HF id (online), or 'random'",
    )
    p.add_argument("--layers", default="last", help="last | last4 | dpt | indices, e.g. 2,5,8,11")
    p.add_argument(
        "--bands",
        default=None,
        help="1-based band indices or band names in backbone order, e.g. 4,3,2 or B4,B3,B2; "
        "1,1,1 repeats a grey band",
    )
    p.add_argument("--stats", default=None, help="YAML with per-band mean/std in file units")
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply raw values by this to reach [0, 1] (default: 1/255 for 8-bit data)",
    )
    p.add_argument(
        "--fill-nonfinite",
        action="store_true",
        help="set NaN/inf pixels to the normalisation mean instead of failing",
    )
    p.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM (0-based)")
    p.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture override, e.g. embed_dim=64 (tiny test models)",
    )
    p.add_argument("--bf16", action="store_true", help="run the backbone under bf16 autocast")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", required=True, help="output .pt with the features")
    p.add_argument("--pca", default=None, help="also write the PCA picture as PNG")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "tile",
        help="apply a trained head to whole rasters: tiled, blended, streamed, COG output",
        description=(
            "Tiled inference with a densekit checkpoint (see densekit.inference). Under torchrun "
            "the strips are split between the processes."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint of densekit fit")
    p.add_argument("--input", required=True, nargs="+", help="raster(s) or a folder of rasters")
    p.add_argument("--input2", nargs="+", help="second dates (change detection), paired by order")
    p.add_argument("--output", required=True, help="output .tif (a folder with several inputs)")
    p.add_argument(
        "--bands",
        default=None,
        help="the input's bands the model reads, 1-based indices or names in the model's order, "
        "e.g. 4,3,2 or B4,B3,B2 (default: the training bands; then the input must have the "
        "training rasters' band count, data type and band names)",
    )
    p.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of tiles (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward (default 4)")
    p.add_argument("--probabilities", action="store_true", help="also write <output>_probs.tif")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    p.add_argument("--prefetch", type=int, default=2, help="batches read ahead (default 2)")
    p.add_argument("--resume", action="store_true", help="continue a killed or stopped run")
    p.add_argument(
        "--stop-after-strips",
        type=int,
        default=None,
        help="stop after N strips, keeping the partial output (exit status 3); --resume goes on",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tile)

    p = sub.add_parser(
        "volume",
        help="segment a DICOM/NIfTI/NRRD volume slice by slice: NIfTI labels or a DICOM SEG",
        description="A segmentation model run slice by slice (see densekit.inference.volume).",
    )
    p.add_argument("--checkpoint", required=True, help="a SegmentationTask checkpoint")
    p.add_argument("--input", required=True, help="DICOM folder or file, .nii(.gz), .nrrd")
    p.add_argument("--output", required=True, help="OUT.nii.gz / OUT.nii, or OUT.dcm (SEG)")
    p.add_argument("--series-uid", default=None, help="the DICOM series when there are several")
    p.add_argument(
        "--on-missing",
        choices=("error", "resample"),
        default="error",
        help="missing DICOM slices: an error (default) or interpolated linearly",
    )
    p.add_argument("--reference", default=None, help="mask to score: SEG .dcm or label map")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("slice settings, only for a checkpoint that does not record them")
    g.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default=None)
    g.add_argument("--context", type=int, default=None, help="0: 2D; k: slices i-k, i, i+k")
    g.add_argument("--ct-window", default=None, help="preset name or LEVEL,WIDTH in HU")
    g.add_argument("--percentiles", default=None, help="LOWER,UPPER (MR), e.g. 1,99")
    p.set_defaults(func=cmd_volume)

    p = sub.add_parser(
        "benchmark",
        help="label fractions x seeds x heads (+ U-Net baseline) of a task card: CSV, table, plot",
        description=(
            "Run a task card (tasks/*.yaml, see densekit.benchmark.card): every backbone, head "
            "and baseline at every label fraction and seed. Running it again resumes: finished "
            "rows are skipped."
        ),
    )
    p.add_argument("card", help="task card YAML, e.g. tasks/spacenet_buildings.yaml")
    p.add_argument("--out", required=True, help="output folder (results, runs, feature cache)")
    p.add_argument("--list", action="store_true", help="print the run ids and stop")
    g = p.add_argument_group("overrides of the card (the runs' configs change: they run again)")
    g.add_argument("--budget", type=int, default=None, help="training epochs of every run")
    g.add_argument("--seeds", default=None, help="seeds, e.g. 0 or 0,1,2")
    g.add_argument("--fractions", default=None, help="label fractions, e.g. 0.1,1.0")
    g.add_argument("--heads", default=None, help="heads and baselines to run, e.g. linear,unet")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser(
        "stats",
        help="per-band mean, std and percentiles of rasters (one streaming pass) as YAML",
        description="Per-band statistics of one or more rasters (or folders of band files).",
    )
    p.add_argument("files", nargs="+", help="rasters or folders of single-band files")
    p.add_argument("--bands", default=None, help="1-based indices or names, e.g. B04,B03,B02")
    p.add_argument("--backbone", default=None, help="check the band count against this backbone")
    p.add_argument(
        "--format",
        choices=("config", "plain"),
        default="config",
        help="config: a LightningCLI fragment (model/data init_args); plain: all statistics",
    )
    p.add_argument("--out", required=True, help="output YAML")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "quickstart",
        help="the main job in one command, offline, on bundled real data",
        description="Train a linear head on bundled real data, test it on a held-out part, "
        "tile the whole image (or segment the CT volume), and write the checkpoint, "
        "predictions, pictures and metrics (see densekit.commands.quickstart).",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default densekit-quickstart, densekit-quickstart-medical)",
    )
    p.add_argument(
        "--domain",
        choices=("geo", "medical"),
        default="geo",
        help="geo: a GeoTIFF task (--task); medical: CT liver (DICOM + SEG)",
    )
    p.add_argument(
        "--task",
        choices=("water", "buildings"),
        default=None,
        help="geo task: water (default; Sen1Floods11 Sentinel-2, a task the bundled backbone "
        "does well) or buildings (SpaceNet Atlanta pan, one it does badly)",
    )
    p.add_argument("--backbone", default="densekit_vitt16", help="registry name")
    p.add_argument(
        "--weights", default="bundled", help="weights file, 'bundled', 'official' or 'random'"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: water 30, buildings 15, medical 30)",
    )
    p.set_defaults(func=cmd_quickstart)
    return parser


def cmd_quickstart(args: argparse.Namespace) -> int:
    from densekit.commands.quickstart import quickstart

    if args.epochs is not None and args.epochs < 1:
        raise DensekitError(f"--epochs {args.epochs}: give 1 or more")
    quickstart(args.out, args.domain, args.backbone, args.weights, args.epochs, args.task)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``densekit`` command; errors the user can fix print one line (see
    :func:`report_error`), a traceback only with ``--debug`` or ``DENSEKIT_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DENSEKIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    with terminate_on_sigterm():
        try:
            return run_command(argv)
        except BrokenPipeError:
            return reader_went_away()
        except (Exception, KeyboardInterrupt, Terminated) as e:
            if debug:
                raise
            return report_error(e, command)


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command (errors are raised)."""
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from densekit.commands.lightning import run_lightning

        return run_lightning(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # what the user typed (a resume hint repeats it)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


def reader_went_away() -> int:
    """The reader of stdout closed it (``densekit backbones | head``): stop quietly with the
    status of a process ended by SIGPIPE, 141 (later writes and the final flush go nowhere)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def report_error(err: BaseException, command: str) -> int:
    """Print ``err`` as one line on stderr and return the exit status: 2 for what the user gave
    (:class:`~densekit.errors.DensekitError`), 1 for reading or writing files (an ``OSError``:
    no space left, permission denied, ...) and for errors densekit did not foresee, 130 after
    Ctrl-C, 143 after SIGTERM."""
    prefix = f"densekit {command}: " if command else "densekit: "
    cause = user_error(err)
    if isinstance(cause, DensekitError):
        message, status = f"error: {cause}", cause.exit_status
    elif isinstance(cause, OSError):
        message, status = f"error: {describe_os_error(cause)}", 1
    elif isinstance(err, Terminated):  # what was kept, where a command says so
        message, status = "stopped by SIGTERM" + (f"; {err}" if str(err) else ""), 143
    elif isinstance(err, KeyboardInterrupt):  # what was kept, or that nothing was
        kept = str(err) or "run the same command again to start over"
        message, status = f"interrupted; {kept}", 130
    elif isinstance(err, MemoryError):
        message, status = "error: out of memory (lower --batch-size or the tile/window size)", 1
    else:
        text = str(err).strip().splitlines()
        message = (
            f"internal error: {type(err).__name__}: {text[0] if text else ''} (run again with "
            "--debug for the traceback and please report it)"
        )
        status = 1
    print(prefix + " ".join(message.split("\n")), file=sys.stderr)
    return status


def user_error(err: BaseException) -> BaseException:
    """The densekit or OS error behind ``err`` (jsonargparse and Lightning wrap the errors
    raised while they build the model and data classes), else ``err`` itself."""
    seen = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, (DensekitError, OSError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return err


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`~densekit.errors.Terminated` in the main thread (Lightning's own
    handler only sets a flag checked between steps), so every command ends promptly and its
    clean-ups run (temporary files removed; ``tile`` keeps its resumable partial run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
