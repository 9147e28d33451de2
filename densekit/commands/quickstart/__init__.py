"""``densekit quickstart``: the main job, offline, on real data bundled with the package.

Remote sensing (default, :mod:`~densekit.commands.quickstart.geo`): a bundled task
(:mod:`~densekit.commands.quickstart.geo_tasks`: ``water``, Sen1Floods11 Sentinel-2, the
default; ``buildings``, SpaceNet Atlanta pan) and the bundled backbone ``densekit_vitt16``. What
a user would do, each step with its own output in ``--out``:

1. ``stats.yaml``: the band statistics of the image (``densekit stats``);
2. ``quickstart.yaml``: the training config (a ``densekit fit`` config; rerun it by hand) and
   ``benchmark_card.yaml`` (a ``densekit benchmark`` card on the same data);
3. training the task's head on the left 60 % of the columns (validated on the next 20 %;
   feature cache on: ``feature_cache/``, Lightning's files in ``run/``), testing on the right
   20 %: ``model.ckpt`` and ``test_metrics.json``;
4. ``prediction.tif`` and its sidecar ``prediction.json``: ``densekit tile`` over the whole
   image (a tiled COG with the input's CRS, transform and class colours);
5. the trivial predictor (the positive class everywhere) and a per-pixel logistic regression on
   the task's bands, fitted on the training columns, scored on the same test columns;
6. ``overview.png``: image | prediction and label in the GeoTIFF's class colours | error map,
   the three scores in the title; ``features_pca.png``: the first three principal components of
   the backbone's last layer, titled with the variance they explain;
7. ``metrics.json``: the test metrics, the three scores on the test columns, the timings, and
   the output paths.

Medical (``--domain medical``, :mod:`~densekit.commands.quickstart.medical`): three CT slices
with a DICOM SEG of the liver; ``densekit volume`` writes NIfTI labels and a DICOM SEG.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from densekit.commands.quickstart import geo, medical
from densekit.commands.quickstart.geo import GEO_IMAGE, GEO_LABELS
from densekit.commands.quickstart.geo_tasks import GEO_TASKS
from densekit.commands.quickstart.medical import CT_SEG, CT_SERIES
from densekit.errors import DensekitError

RUNNERS: dict[str, Callable[..., dict]] = {"geo": geo.run, "medical": medical.run}
OUTPUTS = {"geo": geo.OUTPUTS, "medical": medical.OUTPUTS}
OUTPUT_FOLDERS = {"geo": geo.OUTPUT_FOLDERS, "medical": medical.OUTPUT_FOLDERS}
EXTRA_OUTPUTS = {"geo": geo.EXTRA_OUTPUTS, "medical": medical.EXTRA_OUTPUTS}

__all__ = [
    "CT_SEG",
    "CT_SERIES",
    "GEO_IMAGE",
    "GEO_LABELS",
    "GEO_TASKS",
    "OUTPUTS",
    "OUTPUT_FOLDERS",
    "quickstart",
]


def quickstart(
    out: str | Path | None = None,
    domain: str = "geo",
    backbone: str = "densekit_vitt16",
    weights: str = "bundled",
    epochs: int | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Run the quickstart of ``domain`` (``"geo"`` or ``"medical"``) into ``out`` (default
    ``densekit-quickstart`` / ``densekit-quickstart-medical``); ``task``: the geo task
    (``water``, the default, or ``buildings``)."""
    if domain not in RUNNERS:
        raise DensekitError(f"--domain {domain!r}: valid values are 'geo' and 'medical'")
    if task is not None and domain != "geo":
        raise DensekitError(f"--task {task}: the tasks are of --domain geo, not {domain}")
    if task is not None and task not in GEO_TASKS:
        raise DensekitError(f"--task {task!r}: valid values are {', '.join(map(repr, GEO_TASKS))}")
    geo_task = GEO_TASKS[task or "water"]
    samples = (geo_task.image, geo_task.labels) if domain == "geo" else (CT_SERIES, CT_SEG)
    for f in samples:
        if not f.exists():
            raise DensekitError(f"the bundled sample {f} is missing: reinstall densekit")
    if weights not in ("bundled", "official", "random") and not Path(weights).expanduser().exists():
        raise DensekitError(
            f"--weights {weights}: no such file or folder; give a weights file, 'bundled' "
            "(densekit_vitt16), 'official' (downloads when online) or 'random'"
        )
    if out is None:
        out = "densekit-quickstart" + ("-medical" if domain == "medical" else "")
    folder = Path(out).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise DensekitError(f"--out {out}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    for d in RUNNERS:  # no stale outputs of an earlier run (of either domain) left beside
        for name in [*OUTPUTS[d], *EXTRA_OUTPUTS[d]]:
            (folder / name).unlink(missing_ok=True)
    console = Console(stderr=True, soft_wrap=True)  # commands stay on one line for copying
    console.print(
        f"densekit quickstart ({domain}): offline, bundled data and backbone {backbone} "
        f"({weights}); outputs in {folder}"
    )
    if domain == "geo":
        record = geo.run(folder, backbone, weights, epochs or geo_task.epochs, console, geo_task)
    else:
        record = medical.run(folder, backbone, weights, epochs or 30, console)
    _summary(console, folder, domain, record)
    return record


def _summary(console: Console, out: Path, domain: str, record: dict[str, Any]) -> None:
    console.print(f"\n[bold green]done[/] in {record['total_seconds']:.0f} s.")
    if domain == "geo":
        scores = record["test_columns"]
        name = record["metric"].removeprefix("iou_")
        console.print(
            f"{name} IoU on the test columns: [bold]model {scores['model']:.3f}[/], trivial "
            f"predictor ('{name}' everywhere) {scores['trivial']:.3f}, per-pixel logistic "
            f"regression {scores['per_pixel_logistic_regression']:.3f}"
        )
    console.print("Outputs:")
    for name in OUTPUTS[domain]:
        console.print(f"  {out / name}")
    for name in OUTPUT_FOLDERS[domain]:
        console.print(f"  {out / name}/")
    console.print("\nNext:")
    console.print(
        f"  train it again or change it:   densekit fit --config {out / 'quickstart.yaml'}"
    )
    if domain == "geo":
        console.print(
            "  tile your own raster:          densekit tile --checkpoint "
            f"{out / 'model.ckpt'} --input YOUR.tif --output pred.tif"
        )
        console.print(
            f"  label fractions vs a U-Net:    densekit benchmark {out / 'benchmark_card.yaml'} "
            f"--out {out / 'benchmark'}"
        )
        if record.get("task") == "water":
            console.print("  a task it does badly:          densekit quickstart --task buildings")
        console.print("  the same on CT:                densekit quickstart --domain medical")
    else:
        console.print(
            "  segment your own series:       densekit volume --checkpoint "
            f"{out / 'model.ckpt'} --input DICOM_FOLDER --output labels.nii.gz"
        )
    again = "densekit quickstart" + (" --domain medical" if domain == "medical" else "")
    console.print(
        f"  a downloaded DINOv2 backbone:  {again} --backbone dinov2_vits14 "
        "--weights dinov2_vits14_pretrain.pth"
    )
