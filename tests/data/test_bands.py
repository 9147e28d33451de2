"""Band selection never guesses and names both counts when they disagree; statistics files
are checked."""

import pytest

from densekit.data.bands import BandStats, parse_bands, resolve_band_indices
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


def test_bad_statistics_files(tmp_path):
    (tmp_path / "a.yaml").write_text("mean: [1, 2]\nstd: [1]\n")
    with pytest.raises(DensekitError, match=r"2 means but 1 stds"):
        BandStats.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("mean: [1]\nstd: [0]\n")
    with pytest.raises(DensekitError, match=r"std values must be > 0"):
        BandStats.from_yaml(tmp_path / "b.yaml")
