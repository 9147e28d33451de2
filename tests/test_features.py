"""Preparing an image for a backbone, extracting features and the PCA picture."""

import numpy as np
import pytest
import torch
from helpers import TEST_DATA, load_tiny

from densekit.backbones.registry import NORMALIZATIONS
from densekit.data.bands import BandStats
from densekit.data.images import read_image
from densekit.errors import InputImageError
from densekit.features import choose_normalization, extract_features, pca_picture, prepare_input

IMAGES = TEST_DATA / "images"


@pytest.fixture(scope="module")
def bb():
    return load_tiny("dinov2_vits14_tiny", layers="last")


def test_rgb_uint8_with_nodata(bb):
    img = read_image(IMAGES / "rgb_uint8.tif")
    x, info = prepare_input(img, bb)
    assert x.shape == (1, 3, 36, 40) and info.bands == (1, 2, 3)
    assert info.normalization.source == "imagenet" and info.invalid_pixels == 24
    assert (x[0, :, :4, :6] == 0).all()  # nodata -> band mean (0 after normalisation)
    expected = (img.array[0, 10, 10] / 255 - 0.485) / 0.229
    assert x[0, 0, 10, 10].item() == pytest.approx(expected, rel=1e-5)


def test_band_order_from_colour_interpretation(bb):
    img = read_image(IMAGES / "bgr_uint8.tif")
    with pytest.raises(InputImageError, match=r"stored as blue, green, red.*pass bands 3,2,1"):
        prepare_input(img, bb)
    x, _ = prepare_input(img, bb, bands=(3, 2, 1))
    ref, _ = prepare_input(read_image(IMAGES / "rgb_uint8.tif"), bb)
    valid = ref != 0
    torch.testing.assert_close(x[valid], ref[valid])


def test_band_count_mismatch_names_both_counts(bb):
    img = read_image(IMAGES / "s2_uint16.tif")
    with pytest.raises(
        InputImageError, match=r"has 4 band\(s\) but the backbone takes 3 \(red, green, blue\)"
    ):
        prepare_input(img, bb)
    with pytest.raises(
        InputImageError, match=r"2 band\(s\) chosen \(\['B4', 'B3'\]\) but dinov2_vits14 takes 3"
    ):
        prepare_input(img, bb, bands=("B4", "B3"))
    grey = read_image(IMAGES / "grey.png")
    with pytest.raises(InputImageError, match=r"e.g. 1,1,1"):
        prepare_input(grey, bb)
    assert prepare_input(grey, bb, bands=(1, 1, 1))[0].shape == (1, 3, 40, 40)


def test_sentinel2_needs_scale_or_statistics(bb, tmp_path):
    img = read_image(IMAGES / "s2_uint16.tif")
    with pytest.raises(InputImageError, match=r"no known value range"):
        prepare_input(img, bb, bands=("B4", "B3", "B2"))
    _x, info = prepare_input(img, bb, bands=("B4", "B3", "B2"), scale=1e-4)
    assert info.bands == (3, 2, 1)
    stats_file = tmp_path / "s.yaml"
    stats_file.write_text(
        "bands: [B4, B3, B2]\nmean: [5000, 5000, 5000]\nstd: [2000, 2000, 2000]\n"
    )
    x2, info2 = prepare_input(img, bb, stats=BandStats.from_yaml(stats_file))
    assert info2.bands == (3, 2, 1) and info2.normalization.source == "stats"
    assert x2[0, 0, 0, 0].item() == pytest.approx((img.array[2, 0, 0] - 5000) / 2000, rel=1e-5)


def test_nonfinite_pixels(bb):
    img = read_image(IMAGES / "nonfinite_float32.tif")
    with pytest.raises(InputImageError, match=r"2 pixel\(s\) are NaN or infinite"):
        prepare_input(img, bb, bands=(1, 2, 3), scale=1.0)
    x, info = prepare_input(img, bb, bands=(1, 2, 3), scale=1.0, fill_nonfinite=True)
    assert torch.isfinite(x).all() and info.nonfinite_pixels == 2
    assert (x[0, :, 10, 12] == 0).all() and (x[0, :, 20, 3] == 0).all()


def test_image_smaller_than_a_patch(bb):
    with pytest.raises(InputImageError, match=r"10x10 pixels, smaller than one 14-pixel patch"):
        prepare_input(read_image(IMAGES / "small_uint8.tif"), bb)


def test_extract_features_geometry(bb):
    x, _ = prepare_input(read_image(IMAGES / "rgb_uint8.tif"), bb)
    out = extract_features(bb, x)
    assert out["image_size"] == [36, 40] and out["padded_size"] == [42, 42]
    assert out["features"][0].shape == (1, 64, 3, 3) and out["layers"] == [5]


def test_pca_picture_separates_two_regions():
    fmap = torch.zeros(1, 8, 4, 6)
    fmap[:, 0, :, :3] = 1.0  # left half differs from the right half along one direction
    fmap += 0.01 * torch.randn_like(fmap)
    rgb = pca_picture(fmap, (50, 80), stride=14)
    assert rgb.shape == (50, 80, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :20].astype(int), rgb[:, 50:].astype(int)
    assert abs(left[..., 0].mean() - right[..., 0].mean()) > 150  # first component splits them
    invalid = np.zeros((50, 80), bool)
    invalid[:5, :5] = True
    assert (pca_picture(fmap, (50, 80), 14, invalid)[:5, :5] == 0).all()


def test_nan_declared_as_nodata_is_nodata(bb):
    img = read_image(IMAGES / "nan_nodata_float32.tif")
    x, info = prepare_input(img, bb, scale=1.0)
    assert info.nonfinite_pixels == 0 and info.invalid_pixels == 6 * 10
    assert torch.isfinite(x).all() and (x[0, :, 30:, 30:] == 0).all()


def test_nodata_counts_only_in_the_chosen_bands(bb):
    img = read_image(IMAGES / "nodata_band1_uint16.tif")
    _, with_band1 = prepare_input(img, bb, bands=(1, 2, 3), scale=1e-4)
    assert with_band1.invalid_pixels == 100
    _, without = prepare_input(img, bb, bands=(2, 3, 3), scale=1e-4)
    assert without.invalid_pixels == 0


def test_unlabelled_bands_are_not_guessed(bb):
    img = read_image(IMAGES / "nodata_band1_uint16.tif")  # colour interpretation: grey, undefined
    with pytest.raises(InputImageError, match=r"does not say which bands are red, green, blue"):
        prepare_input(img, bb, scale=1e-4)


def test_statistics_and_scale_together_are_refused(bb, tmp_path):
    stats_file = tmp_path / "s.yaml"
    stats_file.write_text("mean: [1, 1, 1]\nstd: [1, 1, 1]\n")
    img = read_image(IMAGES / "rgb_uint8.tif")
    with pytest.raises(InputImageError, match=r"either per-band statistics .* or a scale"):
        prepare_input(img, bb, stats=BandStats.from_yaml(stats_file), scale=1 / 255)


def test_readme_first_command_with_the_bundled_backbone(tmp_path):
    """The README's first command: the bundled backbone's features of the bundled scene, offline
    and without the random-weights warning."""
    import warnings

    from helpers import REPO

    from densekit.cli import main

    sample = REPO / "densekit" / "samples" / "landsat7_rgb.tif"
    argv = [
        "features",
        str(sample),
        "--backbone",
        "densekit_vitt16",
        "--weights",
        "bundled",
        "--out",
        str(tmp_path / "features.pt"),
        "--pca",
        str(tmp_path / "pca.png"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert main(argv) == 0
    saved = torch.load(tmp_path / "features.pt", weights_only=True)
    assert (tmp_path / "pca.png").stat().st_size > 1000 and saved


# -- normalisation: never guessed ------------------------------------------------------------
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


def test_pca_explained_shares_sum_to_at_most_one_and_decrease():
    from densekit.features import pca_explained

    fmap = torch.randn(1, 8, 6, 7)
    fmap[:, 0] *= 10  # one direction dominates
    shares = pca_explained(fmap)
    assert len(shares) == 3 and shares[0] > 0.5 and shares[0] >= shares[1] >= shares[2]
    assert sum(shares) <= 1 + 1e-9
