"""The medical quickstart: three CT slices with a DICOM SEG of the liver (dcmqi test data,
BSD-3-Clause); a linear head trained on one slice, validated on one, tested on one (one patient:
this checks the pipeline, it is not a benchmark); ``densekit volume`` writes ``liver.nii.gz``
and ``liver_seg.dcm`` (with Dice/HD95 against the reference SEG) and ``overview.png`` (CT |
prediction | reference on the test slice)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from densekit.commands.quickstart.steps import (
    SAMPLES,
    Steps,
    copy_file,
    last_checkpoint,
    lightning,
    test_metrics,
    trainer_settings,
    write_yaml,
)
from densekit.io import atomic_outputs
from densekit.pictures import panels

CT_SERIES = SAMPLES / "dcmqi_liver" / "ct"
CT_SEG = SAMPLES / "dcmqi_liver" / "liver_seg.dcm"
OUTPUTS = [
    "quickstart.yaml",
    "model.ckpt",
    "test_metrics.json",
    "liver.nii.gz",
    "liver_seg.dcm",
    "liver.nii.gz.metrics.json",
    "liver_seg.dcm.metrics.json",
    "overview.png",
    "metrics.json",
]
# folders it writes (the training run)
OUTPUT_FOLDERS = ["run"]
EXTRA_OUTPUTS: list[str] = []


def medical_config(out: Path, backbone: str, weights: str, epochs: int) -> dict:
    return {
        "seed_everything": 0,
        "trainer": trainer_settings(out, epochs, 1),
        "model": {
            "class_path": "densekit.tasks.SegmentationTask",
            "init_args": {
                "num_classes": 2,
                "class_names": ["background", "liver"],
                "backbone": backbone,
                "weights": weights,
                "layers": "last4",
                "head": "linear",
                "loss": "ce",
                "lr": 0.01,
                "scale": 1.0,
                "upsampler": "guided",
            },
        },
        "data": {
            "class_path": "densekit.medical.MedicalSegmentationDataModule",
            "init_args": {
                "cases": [{"image": str(CT_SERIES), "mask": str(CT_SEG)}],
                "segments": {"Liver": 1},
                "plane": "axial",
                "context": 0,
                "intensity": {"ct_window": "soft_tissue"},
                "split": [0.34, 0.33, 0.33],
                "split_by": "slice",
                "batch_size": 1,
            },
        },
    }


def run(out: Path, backbone: str, weights: str, epochs: int, console: Console) -> dict:
    from densekit.data.masks import read_seg
    from densekit.inference import segment_volume
    from densekit.medical import read_volume
    from densekit.medical.slices import Intensity, display_order

    steps = Steps(console, 4)
    steps.start(f"training a linear head on {backbone}: CT slice 1 train, 2 validation, 3 test")
    config = out / "quickstart.yaml"
    write_yaml(
        config,
        medical_config(out, backbone, weights, epochs),
        "# The config densekit quickstart --domain medical trained with; rerun: densekit fit "
        "--config THIS\n",
    )
    shutil.rmtree(out / "run", ignore_errors=True)
    lightning(["fit", "--config", str(config)])
    ckpt = out / "model.ckpt"
    copy_file(last_checkpoint(out / "run"), ckpt)
    lightning(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    test = test_metrics(out / "run")
    copy_file(sorted((out / "run").rglob("test_metrics.json"))[-1], out / "test_metrics.json")
    steps.done(f"-> {ckpt}; test slice liver IoU {test['metrics']['iou_liver']:.3f}")

    steps.start("densekit volume: NIfTI labels and a DICOM SEG, scored against the reference SEG")
    nifti = segment_volume(ckpt, CT_SERIES, out / "liver.nii.gz", reference=CT_SEG, progress=False)
    segment_volume(ckpt, CT_SERIES, out / "liver_seg.dcm", reference=CT_SEG, progress=False)
    dice = nifti["record"]["metrics"]
    steps.done(f"-> {out / 'liver.nii.gz'}, {out / 'liver_seg.dcm'}; metrics {dice}")

    steps.start("picture: CT | prediction | reference on the test slice")
    ct = read_volume(CT_SERIES)
    masks, _ = read_seg(CT_SEG, ct)
    display = display_order(ct, "axial")  # the order and orientation training used
    k = ct.shape[0] - 1  # split_by: slice puts the last slice in display order in the test part
    window = display.apply(Intensity(ct_window="soft_tissue").apply(ct.array))[k]
    predicted = display.apply(read_volume(out / "liver.nii.gz").array)[k]
    reference = display.apply(masks[0])[k]
    panels(
        out / "overview.png",
        [
            ("CT (soft-tissue window)", window, "gray"),
            ("prediction (densekit volume)", predicted.astype(float), "gray"),
            ("reference (DICOM SEG, liver)", reference.astype(float), "gray"),
        ],
        f"{backbone}, linear head + guided upsampler; test slice ({k + 1} of 3 in display order)",
        None,
    )
    steps.done(f"-> {out / 'overview.png'}")

    steps.start("metrics")
    record = {
        "domain": "medical",
        "data": str(CT_SERIES),
        "backbone": test.get("backbone"),
        "test_metrics": test["metrics"],
        "volume_metrics": dice,
        "seconds": steps.times,
        "outputs": {k: str(out / k) for k in [*OUTPUTS, *OUTPUT_FOLDERS]},
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_outputs({out / "metrics.json": lambda tmp: tmp.write_text(text)})
    steps.done(f"-> {out / 'metrics.json'}")
    record["total_seconds"] = round(time.perf_counter() - steps.t0, 1)
    return record
