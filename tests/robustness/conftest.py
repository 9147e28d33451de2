"""Fixtures of the robustness tests."""

from __future__ import annotations

import pytest
from robust_cases import threshold_model


@pytest.fixture
def threshold(monkeypatch):
    """``densekit volume`` runs :func:`robust_cases.threshold_model` whatever the checkpoint."""
    import densekit.inference.volume as infer_module

    monkeypatch.setattr(infer_module, "load_volume_model", lambda *a, **k: threshold_model())
