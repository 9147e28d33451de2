"""`densekit stats`, random training windows, all-nodata windows and augmentation."""

import numpy as np
import pytest
import torch
import yaml
from helpers import SHARED_DATA, TEST_DATA, needs_shared_data
from helpers import write_raster as write

from densekit.cli import main
from densekit.data import SegmentationDataModule
from densekit.data.augment import Augmentation
from densekit.data.augment import apply as apply_augmentation
from densekit.data.stats import band_statistics

CHIPS = TEST_DATA / "chips"


def test_statistics_match_numpy_and_skip_nodata(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(1, 5000, (2, 300, 200), dtype=np.uint16)
    a[:, :10] = 0
    b = rng.integers(1, 5000, (2, 100, 50), dtype=np.uint16)
    write(tmp_path / "a.tif", a, nodata=0)
    write(tmp_path / "b.tif", b, nodata=0)
    stats = band_statistics([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], block_rows=37)
    both = np.concatenate([a[:, 10:].reshape(2, -1), b.reshape(2, -1)], axis=1).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], both.mean(1), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], both.std(1), rtol=1e-9)
    assert stats["count"] == [both.shape[1]] * 2
    for q in (2, 50, 98):  # exact for 16-bit integers
        expected = np.percentile(both, q, axis=1, method="inverted_cdf")
        np.testing.assert_allclose(stats["percentiles"][f"p{q}"], expected)


def test_float_percentiles_from_a_bounded_sample(tmp_path):
    rng = np.random.default_rng(1)
    f = rng.normal(0.2, 0.05, (1, 400, 400)).astype(np.float32)
    f[0, 0, 0] = np.nan
    write(tmp_path / "f.tif", f)
    stats = band_statistics([str(tmp_path / "f.tif")], sample_size=20_000)
    assert stats["count"] == [400 * 400 - 1]
    assert stats["percentiles"]["p50"][0] == pytest.approx(0.2, abs=0.002)


def test_stats_command_writes_a_config_fragment(tmp_path, capsys):
    out = tmp_path / "s.yaml"
    assert (
        main(
            [
                "stats",
                str(TEST_DATA / "images/s2_uint16.tif"),
                "--bands",
                "B4,B3,B2",
                "--backbone",
                "dinov3_vitl16_sat493m",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = yaml.safe_load(out.read_text())
    assert (
        doc["model"]["init_args"]["bands"]
        == ["B4", "B3", "B2"]
        == doc["data"]["init_args"]["bands"]
    )
    assert len(doc["model"]["init_args"]["mean"]) == 3
    assert "B4 -> red" in capsys.readouterr().err
    assert (
        main(
            [
                "stats",
                str(TEST_DATA / "images/s2_uint16.tif"),
                "--bands",
                "B9",
                "--out",
                str(tmp_path / "x.yaml"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.yaml").exists()


def test_stats_of_real_band_folders():
    oscd = needs_shared_data("oscd-subset", "images", "bercy", "imgs_1")
    stats = band_statistics([str(oscd)], bands=["B04", "B8A", "B01"])
    assert stats["bands"] == ["B04", "B8A", "B01"]
    assert stats["count"][0] > stats["count"][1] > stats["count"][2]  # 10 m, 20 m, 60 m
    assert SHARED_DATA.is_dir()


def test_random_windows_and_nodata_windows(tmp_path):
    img = np.full((3, 64, 64), 100, np.uint8)
    img[:, :, :32] = 0  # the left half is nodata
    write(tmp_path / "i.tif", img, nodata=0)
    write(tmp_path / "l.tif", np.ones((1, 64, 64), np.uint8))
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")],
        labels=[str(tmp_path / "l.tif")],
        window=16,
        train_windows="random",
        samples_per_epoch=12,
        val_images=[str(tmp_path / "i.tif")],
        val_labels=[str(tmp_path / "l.tif")],
    )
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 8  # the 8 grid windows of the left half are skipped
    train = dm.datasets["train"]
    assert len(train) == 12
    torch.manual_seed(0)
    items = [train[i] for i in range(12)]
    assert all((it["mask"] != 255).any() for it in items)
    assert len({tuple(it["window"].tolist()) for it in items}) > 3


def test_augmentation_moves_image_and_targets_together():
    torch.manual_seed(0)
    image = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    item = {
        "image1": image.clone(),
        "image2": image.clone() * 2,
        "mask": image[0].long(),
        "depth": image[:1].clone(),
    }
    aug = Augmentation(hflip=1.0, vflip=0.0, rotate90=0.0, gain=0.0).build()
    out = apply_augmentation(item, aug)
    assert torch.equal(out["image1"], image.flip(-1))
    assert torch.equal(out["image2"], image.flip(-1) * 2)
    assert torch.equal(out["mask"], image[0].long().flip(-1))
    assert torch.equal(out["depth"], image[:1].flip(-1))
    item = {"image1": image.clone(), "image2": image.clone(), "mask": image[0].long()}
    out = apply_augmentation(item, Augmentation(0, 0, 1.0, gain=0.5).build())
    ratio1 = out["image1"].sum() / image.sum()
    ratio2 = out["image2"].sum() / image.sum()
    assert ratio1 != ratio2 and 0.5 <= ratio1 <= 1.5  # one gain per date
    # the mask turned with the images: same pixel order as date 1 (a positive gain keeps it)
    assert out["mask"].shape == out["image1"].shape[1:]
    assert torch.equal(out["mask"].flatten().argsort(), out["image1"][0].flatten().argsort())


def test_augmentation_repeats_for_a_seed_without_workers():
    image = torch.arange(4 * 4, dtype=torch.float32).reshape(1, 4, 4)

    def draws(seed):
        torch.manual_seed(seed)  # what seed_everything does for torch
        aug = Augmentation(hflip=0.5, vflip=0.5, rotate90=0.5).build()
        return [apply_augmentation({"image": image.clone()}, aug)["image"] for _ in range(12)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_float_sample_is_uniform_across_blocks(tmp_path):
    """Half zeros (first rows) and half ones: the sample keeps both halves equally."""
    f = np.zeros((1, 400, 250), np.float32)
    f[0, 200:] = 1.0
    write(tmp_path / "h.tif", f)
    stats = band_statistics([str(tmp_path / "h.tif")], block_rows=50, sample_size=5000)
    assert stats["percentiles"]["p50"][0] in (0.0, 1.0)
    assert stats["percentiles"]["p1"][0] == 0.0 and stats["percentiles"]["p99"][0] == 1.0
    from densekit.data.stats import _Accumulator

    acc = _Accumulator()
    rng = np.random.default_rng(0)
    for block in (np.zeros(100_000), np.ones(100_000)):
        acc.add(block, rng, 10_000)
    share = np.concatenate(acc.sample).mean()
    assert 0.47 < share < 0.53, share


@pytest.mark.parametrize(
    ("first", "second"),
    [("uint8", "uint16"), ("uint16", "uint8"), ("uint8", "float32"), ("float32", "uint8")],
)
def test_stats_of_files_with_different_types_is_an_error(tmp_path, first, second):
    """Whatever the order of the files (a float first file used to take integers silently)."""
    from densekit.errors import DensekitError

    write(tmp_path / "a.tif", np.ones((1, 10, 10), first))
    write(tmp_path / "b.tif", np.ones((1, 10, 10), second))
    with pytest.raises(
        DensekitError, match=rf"b.tif: band 1 is {second}, unlike band 1 of .*a.tif \({first}\)"
    ):
        band_statistics([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")])


def test_non_square_items_are_flipped_not_turned():
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    aug = Augmentation(hflip=0.5, vflip=0.5, rotate90=1.0).build()
    for _ in range(10):
        out = apply_augmentation({"image": image.clone(), "mask": image[0].long()}, aug)
        assert out["image"].shape == (2, 4, 6) and out["mask"].shape == (4, 6)


def test_pattern_pairing_uses_what_the_wildcard_matched(tmp_path):
    from densekit.data.files import _glob_key

    assert _glob_key("data/img_*.tif", "data/img_001.tif") == "001"
    assert _glob_key("labels/lbl_*.tif", "labels/lbl_001.tif") == "001"
    assert _glob_key("images/city_*/img.tif", "images/city_a/img.tif") == "a"
    assert _glob_key("labels/*/cm.tif", "labels/a/cm.tif") == "a"
    assert _glob_key("oscd/images/*/imgs_1", "oscd/images/paris/imgs_1") == "paris"
    assert _glob_key("oscd/labels/*/cm/*-cm.tif", "oscd/labels/paris/cm/paris-cm.tif") == "paris"


def test_pairing_keys_keep_what_character_classes_matched(tmp_path):
    from densekit.data.files import _glob_key, pair_files
    from densekit.errors import DensekitError

    assert _glob_key("d/img_[0-9]*.tif", "d/img_12.tif") == "12"
    assert _glob_key("d/img_[!a-z]?.tif", "d/img_12.tif") == "12"
    assert _glob_key("d/img_[0-9]*_x*.tif", "d/img_12_x3.tif") == "12"  # the first run only
    for name in ("img_12.tif", "img_23.tif", "lbl_2.tif", "lbl_3.tif"):
        (tmp_path / name).touch()
    with pytest.raises(DensekitError, match=r"do not pair up by file name; unpaired: .*'12'"):
        pair_files(
            [("images", str(tmp_path / "img_[0-9]*.tif")), ("labels", str(tmp_path / "lbl_*.tif"))]
        )
    for name in ("lbl_12.tif", "lbl_23.tif"):
        (tmp_path / name).touch()
    pairs = pair_files(
        [("images", str(tmp_path / "img_[0-9]*.tif")), ("labels", str(tmp_path / "lbl_??.tif"))]
    )
    assert [(a[-10:], b[-10:]) for a, b in pairs] == [
        ("img_12.tif", "lbl_12.tif"),
        ("img_23.tif", "lbl_23.tif"),
    ]


def test_pairing_keys_drop_a_suffix_only_when_the_wildcard_matched_it():
    from densekit.data.files import _glob_key

    assert _glob_key("d/*_dsm.tif", "d/tile.v2_dsm.tif") == "tile.v2"
    assert _glob_key("d/*.tif", "d/tile.v2.tif") == "tile.v2"
    assert _glob_key("d/*", "d/tile.v2.tif") == "tile.v2"
    assert _glob_key("d/img_*", "d/img_001.tif") == "001"
    assert _glob_key("d/*.v2/img.tif", "d/tile.v2/img.tif") == "tile"


def test_dataloader_workers_draw_different_augmentations(tmp_path):
    """Forked workers start from the parent's albumentations state; augmentations are seeded
    per item from torch's generator, which PyTorch seeds apart in each worker, so the two
    workers' batches of one repeated item differ."""
    img = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    write(tmp_path / "i.tif", img)
    write(tmp_path / "l.tif", np.ones((1, 16, 16), np.uint8))
    dm = SegmentationDataModule(
        images=[str(tmp_path / "i.tif")] * 16,
        labels=[str(tmp_path / "l.tif")] * 16,
        batch_size=8,
        num_workers=2,
        augment=Augmentation(0.5, 0.5, 1.0),
    )
    dm.setup("fit")
    apart = [b["image"] for b in dm.train_dataloader()]
    assert len(apart) == 2 and not torch.equal(apart[0], apart[1])
    # each worker's 8 items vary too (not one transform repeated)
    assert len({tuple(x.flatten()[:3].tolist()) for x in apart[0]}) > 1
