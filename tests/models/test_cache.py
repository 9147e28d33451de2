"""The feature cache: computed once, read back exactly, keyed by model and data, bounded."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from densekit.models.cache import FeatureCache
from densekit.tasks import SegmentationTask

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _task(weights, cache=None):
    torch.manual_seed(0)
    return SegmentationTask(
        num_classes=3,
        weights=weights,
        backbone_overrides=TINY,
        scale=1 / 255,
        feature_cache=None if cache is None else str(cache),
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from densekit.backbones import load_backbone
    from densekit.backbones.export import official_state_dict, save_official

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_backbone("dinov2_vits14", "random", **TINY)
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial blocks (LayerScale 1e-5 would hide them)
        for p in b.model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    return str(save_official(official_state_dict(b.arch, b.model), path))


def test_cached_training_reads_features_back_and_matches_uncached(weights, tmp_path, chips, fit):
    plain = _task(weights)
    plain_trainer = fit(plain, chips("segmentation", batch_size=4), max_epochs=2)
    cached = _task(weights, tmp_path / "cache")
    calls = {"n": 0}
    original = cached.model.backbone.forward_with_class_tokens

    def counting(x):
        calls["n"] += x.shape[0]
        return original(x)

    cached.model.backbone.forward_with_class_tokens = counting  # type: ignore[method-assign]
    trainer = fit(cached, chips("segmentation", batch_size=4), max_epochs=2)
    entries = list((tmp_path / "cache").glob("*/*.pt"))
    # every train and validation window computed once (the sanity check reads some back)
    assert len(entries) == calls["n"] > 0
    assert cached.model.feature_cache.hits > 0
    plain_head, cached_head = plain.model.head.state_dict(), cached.model.head.state_dict()
    for (name, a), b in zip(plain_head.items(), cached_head.values(), strict=True):
        assert torch.equal(a, b), name  # the same training, bit for bit
    m_plain, m_cached = plain_trainer.callback_metrics, trainer.callback_metrics
    assert "val/miou" in m_plain and m_plain.keys() == m_cached.keys()
    assert all(torch.equal(m_plain[k], m_cached[k]) for k in m_plain)
    # a new run reuses the entries: the backbone is not run at all
    again = _task(weights, tmp_path / "cache")
    again.model.backbone.forward_with_class_tokens = None  # type: ignore[assignment]
    fit(again, chips("segmentation", batch_size=4), max_epochs=1)
    assert again.model.feature_cache.misses == 0


def test_augmented_or_random_windows_are_not_cached(weights, tmp_path, chips):
    from densekit.data.augment import Augmentation

    dm = chips("segmentation", batch_size=4, augment=Augmentation(hflip=1.0))
    dm.setup("fit")
    item = dm.train_dataloader().dataset[0]
    assert "cache_keys" not in item
    assert "cache_keys" in dm.val_dataloader().dataset[0]


def test_keys_change_with_the_file_and_the_model(weights, tmp_path, chips):
    dm = chips("segmentation", batch_size=4)
    dm.setup("fit")
    ds = dm.val_dataloader().dataset
    key = ds[0]["cache_keys"][0]
    path = ds.samples[0].images[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert ds[0]["cache_keys"][0] != key
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    a, b = _task(weights, tmp_path), _task(weights, tmp_path)
    b.model.input_mean += 1
    assert a.model.cache_model_key() != b.model.cache_model_key()


def test_eviction_keeps_the_folder_under_its_limit(tmp_path):
    cache = FeatureCache(tmp_path, max_gb=0)
    for i in range(3):
        cache.save(cache.path("m", str(i)), [torch.zeros(100)], [torch.zeros(4)])
        os.utime(cache.path("m", str(i)), (i, i))
    cache.max_bytes = cache.path("m", "2").stat().st_size * 2
    assert cache.evict() == 1
    assert not cache.path("m", "0").exists() and cache.path("m", "2").exists()
