"""Test helpers for Meta's released heads: the tiny head fixtures of ../shared/fixtures/dino_heads.

Each fixture's JSON names its backbone fixture (in tests/data/dino_reference/tiny or
../shared/fixtures/dino_reference/tiny), its layers and configuration; the kind is read off its
name. Fixtures added to the folder later are picked up by the glob.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import FIXTURES, SHARED, TINY

SHARED_FIXTURES = SHARED / "fixtures"
HEADS = SHARED_FIXTURES / "dino_heads"
TINY_HEADS = HEADS / "tiny"
KEYS = HEADS / "keys"
BACKBONE_DIRS = (FIXTURES / "tiny", SHARED_FIXTURES / "dino_reference" / "tiny")


def needs_head_fixtures() -> Path:
    """The tiny head fixtures folder; the test skips only when ../shared/fixtures is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures folder {SHARED_FIXTURES} is absent")
    assert TINY_HEADS.is_dir(), f"{TINY_HEADS} missing from the shared fixtures"
    return TINY_HEADS


def head_fixture_names() -> list[str]:
    return sorted(p.stem for p in TINY_HEADS.glob("*.json")) if TINY_HEADS.is_dir() else []


def key_layout_names() -> list[str]:
    return sorted(p.stem for p in KEYS.glob("*.json")) if KEYS.is_dir() else []


def kind_of(name: str, family: str) -> str:
    """The head kind a fixture or key-layout file stands for, from its name."""
    if "chmv2" in name:
        return "dinov3_chmv2"
    if "linear_seg" in name:
        return "dinov3_linear_seg"
    if family == "dinov3":
        return "dinov3_dpt_depth"
    return "dinov2_dpt_depth" if "dpt" in name else "dinov2_linear_depth"


def backbone_file(fixture: str, suffix: str = ".pth") -> Path:
    for folder in BACKBONE_DIRS:
        if (folder / f"{fixture}{suffix}").is_file():
            return folder / f"{fixture}{suffix}"
    raise FileNotFoundError(f"backbone fixture {fixture}{suffix} in none of {BACKBONE_DIRS}")


@dataclass
class TinyHead:
    """One tiny head fixture and the arguments that load it."""

    name: str
    meta: dict[str, Any]
    kind: str
    layers: list[int]
    depth_range: tuple[float, float] | None
    backbone: str
    backbone_weights: Path
    overrides: dict[str, Any]

    @property
    def path(self) -> Path:
        return TINY_HEADS / f"{self.name}.pth"

    def load(self, **kwargs: Any):
        from densekit import load_official_head

        args: dict[str, Any] = {"layers": self.layers, "depth_range": self.depth_range}
        args.update(kwargs)
        return load_official_head(
            self.kind, self.path, self.backbone, self.backbone_weights, **args, **self.overrides
        )

    def expected(self) -> dict[str, Any]:
        return torch.load(TINY_HEADS / f"{self.name}.expected.pt", weights_only=True)


def tiny_head(name: str) -> TinyHead:
    meta = json.loads((TINY_HEADS / f"{name}.json").read_text())
    config = meta.get("config", {})
    layers = meta.get("layers") or config["backbone_out_layers"]
    drange = (config["min_depth"], config["max_depth"]) if "min_depth" in config else None
    fixture = meta["backbone_fixture"]
    kwargs = json.loads(backbone_file(fixture, ".json").read_text())["kwargs"]
    registry_name = TINY[fixture][0] if fixture in TINY else fixture.removesuffix("_tiny")
    ratio = "ffn_ratio" if meta["family"] == "dinov3" else "mlp_ratio"
    overrides = {k: kwargs[k] for k in ("embed_dim", "depth", "num_heads", ratio)}
    return TinyHead(
        name=name,
        meta=meta,
        kind=kind_of(name, meta["family"]),
        layers=list(layers),
        depth_range=drange,
        backbone=registry_name,
        backbone_weights=backbone_file(fixture),
        overrides=overrides,
    )


def fixture_inputs(patch: int, sizes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The inputs of each size of an expected file: the backbone fixtures' inputs, and for the
    other sizes (``pad``) ``torch.manual_seed(1); torch.randn(2, 3, H, W)``."""
    inputs = torch.load(backbone_file(f"inputs_p{patch}", ".pt"), weights_only=True)
    out = {}
    for size, rec in sizes.items():
        hw = [int(v) for v in rec["input_hw"]]
        if size in inputs:
            out[size] = inputs[size]
        else:
            torch.manual_seed(1)
            out[size] = torch.randn(2, 3, *hw)
        assert list(out[size].shape[-2:]) == hw, f"{size}: input is not {hw}"
    return out


def relative(out: torch.Tensor, expected: torch.Tensor) -> float:
    """max |out - expected| / max |expected|."""
    assert out.shape == expected.shape, f"{tuple(out.shape)} != {tuple(expected.shape)}"
    return ((out.double() - expected.double()).abs().max() / expected.abs().max()).item()
