"""Band selection and normalisation never guess and name both counts when they disagree."""

import numpy as np
import pytest

from densekit.backbones.registry import NORMALIZATIONS
from densekit.data.bands import (
    BandStats,
    choose_normalization,
    parse_bands,
    resolve_band_indices,
)
from densekit.errors import DensekitError, InputImageError


def test_parse_bands():
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands("B4, B3,B2") == ("B4", "B3", "B2")
    assert parse_bands(None) is None
    with pytest.raises(DensekitError, match="empty band"):
        parse_bands("4,,2")


def test_resolve_by_index_and_name():
    names = ["B2", "B3", "B4", "B8"]
    assert resolve_band_indices([3, 2, 1], names, "f.tif") == [2, 1, 0]
    assert resolve_band_indices(["B4", "B3", "B2"], names, "f.tif") == [2, 1, 0]
    assert resolve_band_indices([1, 1, 1], [None], "g.tif") == [0, 0, 0]


def test_missing_band_index_and_name():
    with pytest.raises(
        InputImageError,
        match=r"f.tif: band 5 does not exist; the file has 4 band\(s\), numbered 1..4",
    ):
        resolve_band_indices([5, 3, 2], ["B2", "B3", "B4", "B8"], "f.tif")
    with pytest.raises(
        InputImageError, match=r"no band named 'B11'; band names in the file: \['B2'"
    ):
        resolve_band_indices(["B11"], ["B2", "B3", "B4", "B8"], "f.tif")
    with pytest.raises(InputImageError, match=r"none \(use 1-based indices\)"):
        resolve_band_indices(["red"], [None, None, None], "f.tif")


def test_statistics_count_must_match(tmp_path):
    path = tmp_path / "stats.yaml"
    path.write_text("bands: [B4, B3]\nmean: [1000, 900]\nstd: [300, 250]\n")
    stats = BandStats.from_yaml(path)
    with pytest.raises(
        InputImageError, match=r"3 band\(s\) selected but the statistics have 2 values"
    ):
        choose_normalization(3, stats, NORMALIZATIONS["imagenet"], None, "f.tif")
    norm = choose_normalization(2, stats, None, None, "f.tif")
    out = norm.apply(np.array([[[1000.0]], [[1150.0]]]))
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 1.0])


def test_bad_statistics_files(tmp_path):
    (tmp_path / "a.yaml").write_text("mean: [1, 2]\nstd: [1]\n")
    with pytest.raises(DensekitError, match=r"2 means but 1 stds"):
        BandStats.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("mean: [1]\nstd: [0]\n")
    with pytest.raises(DensekitError, match=r"std values must be > 0"):
        BandStats.from_yaml(tmp_path / "b.yaml")


def test_backbone_statistics_need_a_known_value_range():
    with pytest.raises(InputImageError, match=r"no known value range.*scale 1e-4"):
        choose_normalization(3, None, NORMALIZATIONS["sat493m"], None, "s2.tif")
    norm = choose_normalization(3, None, NORMALIZATIONS["imagenet"], 1 / 255, "x.png")
    out = norm.apply(np.full((3, 1, 1), 255, np.uint8))
    np.testing.assert_allclose(
        out[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6
    )


def test_adapted_backbone_needs_statistics():
    with pytest.raises(InputImageError, match=r"adapted.*give per-band statistics"):
        choose_normalization(13, None, None, 1e-4, "s2.tif")
