"""Shared test helpers: paths to the test data and the project's shared sample data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
FIXTURES = TEST_DATA / "dino_reference"
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

# tiny fixture -> (registry name, architecture overrides under the official argument names)
TINY = {
    "dinov2_vits14_tiny": ("dinov2_vits14", {"mlp_ratio": 4}),
    "dinov2_vits14_reg4_tiny": ("dinov2_vits14_reg4", {"mlp_ratio": 4}),
    "dinov2_vitg14_reg4_tiny": ("dinov2_vitg14_reg4", {"mlp_ratio": 4}),
    "dinov3_vits16_tiny": ("dinov3_vits16", {"ffn_ratio": 4}),
    "dinov3_vits16_tiny_bf16periods": ("dinov3_vits16", {"ffn_ratio": 4}),
    "dinov3_vits16plus_tiny": ("dinov3_vits16plus", {"ffn_ratio": 6}),
    "dinov3_vit7b16_tiny": ("dinov3_vit7b16", {"ffn_ratio": 3}),
}
TINY_DIMS = {"embed_dim": 64, "depth": 6, "num_heads": 2}


def tiny_overrides(fixture: str) -> dict:
    name, extra = TINY[fixture]
    kwargs = json.loads((FIXTURES / "tiny" / f"{fixture}.json").read_text())["kwargs"]
    key = "mlp_ratio" if name.startswith("dinov2") else "ffn_ratio"
    assert kwargs[key] == extra[key], "fixture constructor disagrees with the test table"
    return {**TINY_DIMS, **extra}


def load_tiny(fixture: str, **kwargs):
    from densekit import load_backbone

    name, _ = TINY[fixture]
    return load_backbone(
        name, FIXTURES / "tiny" / f"{fixture}.pth", **tiny_overrides(fixture), **kwargs
    )


def tiny_inputs(patch: int) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "tiny" / f"inputs_p{patch}.pt", weights_only=True)


def needs_shared_data(*parts: str) -> Path:
    """Path under ../shared/data; the test skips only when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    assert path.exists(), f"{path} missing from the shared data"
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_confusion_accuracy(rank: int, port: int, results) -> None:
    """One of two gloo processes: each holds different predictions; the synced accuracy is
    4/8 while rank 0 alone would say 1.0 (used by the metrics sync test)."""
    import torch.distributed as dist

    from densekit.tasks.metrics import ConfusionMetrics

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = ConfusionMetrics(2, ignore_index=None, class_names=["no", "yes"])
    if rank == 0:
        m.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    else:
        m.update(torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([1, 1, 1, 1, 1, 1]))
    results[rank] = m.scores()["acc_micro"]
    dist.destroy_process_group()


def write_raster(path, data, crs=None, transform=None, **profile) -> None:
    """Write ``data`` ((C, H, W) or (H, W)) as a GeoTIFF; georeferenced when ``crs`` is given
    (10 m pixels at UTM 500000 E, 4600000 N unless ``transform`` says otherwise)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    data = np.asarray(data)
    data = data if data.ndim == 3 else data[None]
    if crs is not None:
        profile.update(crs=crs, transform=transform or from_origin(500000, 4600000, 10, 10))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        **profile,
    ) as dst:
        dst.write(data)


def rank_tile(rank: int, port: int, ckpt: str, src: str, out: str) -> None:
    """mp.spawn worker: one of two processes of ``densekit.inference.tile``."""
    import os

    from densekit.inference import TileOptions, tile

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    tile(
        ckpt, src, out, options=TileOptions(tile=56, overlap=14, probabilities=True, progress=False)
    )


# `densekit fit` overrides that put the tiny DINOv2 fixture in place of a config's backbone
TINY_CLI = [
    "--model.init_args.weights",
    str(FIXTURES / "tiny" / "dinov2_vits14_tiny.pth"),
    "--model.init_args.backbone_overrides",
    "{embed_dim: 64, depth: 6, num_heads: 2, mlp_ratio: 4}",
    "--model.init_args.dpt_features",
    "32",
]


def random_tiny_weights(path, **overrides) -> str:
    """A random DINOv2-layout ViT (``overrides``: embed_dim, depth, ...) saved as an official
    checkpoint at ``path``, for tasks that need a weights file."""
    import warnings

    from densekit.backbones import load_backbone
    from densekit.backbones.export import official_state_dict, save_official

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone("dinov2_vits14", "random", **overrides)
    return str(save_official(official_state_dict(b.arch, b.model), path))


class InterruptAtEpoch(Callback):
    """A Lightning callback that raises KeyboardInterrupt (as Ctrl-C does) when epoch
    ``epoch`` (0-based) starts; a config names it ``helpers.InterruptAtEpoch``."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


NAMES = ["background", "soft", "bright"]  # the classes of threshold_model


def threshold_model(settings: Any = None) -> Any:
    """A stand-in whose labels are known: class 1 where the centre channel is above 0.5, class 2
    above 0.9 (per pixel, so exactly the windowed volume thresholded): a 3-class
    :class:`~densekit.inference.volume.VolumeModel` that needs no checkpoint, on ``settings``
    (default: axial, no context, the soft-tissue CT window)."""
    from densekit.inference.trained import Trained
    from densekit.inference.volume import VolumeModel
    from densekit.medical.slices import Intensity, SliceSettings
    from densekit.models import InputSpec, OutputSpec

    class Threshold(torch.nn.Module):
        def forward(self, x):
            c = x[:, 1]
            return torch.stack([0.5 - c, c - 0.5, 2 * (c - 0.9) + c - 0.5], dim=1)

    settings = settings or SliceSettings("axial", 0, Intensity(ct_window="soft_tissue"))
    trained = Trained(
        model=Threshold(),
        output=OutputSpec.segmentation(3, NAMES),
        inputs=InputSpec(3, 1, None, (0.0,) * 3, (1.0,) * 3, 1.0),
        checkpoint_sha256="0" * 64,
    )
    model = VolumeModel(trained, settings)
    model.provenance = lambda: {  # type: ignore[method-assign]
        "backbone": "threshold",
        "head": "none",
        "plane": settings.plane,
        "context": settings.context,
        "checkpoint_sha256": "0" * 64,
    }
    return model
