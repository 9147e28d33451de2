"""The registry is one literal table whose keys, Literal type and aliases agree."""

import typing

import pytest

from densekit.backbones.registry import ALIASES, NORMALIZATIONS, REGISTRY, BackboneName, get_spec
from densekit.errors import UnknownNameError


def test_keys_are_names_and_match_the_literal_type():
    assert all(key == spec.name for key, spec in REGISTRY.items())
    assert list(typing.get_args(BackboneName)) == list(REGISTRY)


def test_aliases_point_at_entries():
    for alias, name in ALIASES.items():
        assert get_spec(alias) is REGISTRY[name]


def test_every_entry_has_normalisation_bands_and_weight_files():
    for spec in REGISTRY.values():
        norm = NORMALIZATIONS[spec.normalization]
        assert len(norm.mean) == len(norm.std) == len(norm.bands) == 3
        assert spec.weight_files
        assert len(spec.layer_set("dpt")) == 4 and spec.layer_set("last") == (spec.depth - 1,)
    assert REGISTRY["dinov3_vitl16_sat493m"].normalization == "sat493m"
    assert NORMALIZATIONS["sat493m"].mean == (0.430, 0.411, 0.296)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError, match=r"valid names: .*dinov3_vitl16_sat493m.*aliases"):
        get_spec("dinov4_vits14")
