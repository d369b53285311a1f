"""Variant configs: typed, checked, and pointed at other data without dragging the sample along."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, load_sweep, load_variant, variant_from_dict
from pipeline.inpainters.base import InpaintBatch, build_inpainter, check_params


def test_data_override_drops_the_configs_own_truth():
    raw = {"method": "telea", "data": {"root": "data/sample", "truth": "data/sample-truth"}}
    assert variant_from_dict(dict(raw)).data.truth == Path("data/sample-truth")
    other = variant_from_dict(dict(raw), data_root="data/raw/photo-reconstruction")
    assert other.data.root == Path("data/raw/photo-reconstruction") and other.data.truth is None
    same = variant_from_dict(dict(raw), data_root="data/sample")
    assert same.data.truth == Path("data/sample-truth")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"method": "telea", "name": "a/b"}, "letters, digits"),
        ({"method": "telea", "batch_size": 0}, "batch_size: expected a positive integer"),
        ({"method": "telea", "data": {"val_count": "24"}}, "val_count: expected a non-negative integer"),
        ({"method": "telea", "data": {"box_size": 300}}, "does not fit a 256 image"),
        ({"method": "telea", "data": {"id_pattern": "(unclosed"}}, "id_pattern: not a valid regular expression"),
        ({"method": "telea", "data": {"colour": 1}}, r"unknown key\(s\) colour"),
        ({"name": "x"}, "missing 'method'"),
        ({"method": "telea", "params": {"radius": "big"}}, "radius: expected float"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_inpainter(variant_from_dict(raw))


CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_parses_with_its_methods_parser(path):
    """A typo in any configs/*.yaml (an unknown or mistyped param, a bad choice) fails make test."""
    variants = load_sweep(path) if path.name == "sd-prompts.yaml" else [load_variant(path)]
    for variant in variants:
        if path.name != "sd-prompts.yaml":
            assert variant.name == path.stem
        check_params(variant)


def test_a_typo_in_a_config_is_caught_by_its_parser(tmp_path):
    for method, typo in (("telea", "radios"), ("pix2pix", "lamda_l1"), ("sd", "gudance_scale")):
        path = tmp_path / f"{method}.yaml"
        path.write_text(f"method: {method}\nparams: {{{typo}: 1}}\n")
        with pytest.raises(ConfigError, match=typo):
            check_params(load_variant(path))


def test_mean_fill_of_a_fully_masked_image_is_grey():
    variant = variant_from_dict({"method": "mean"})
    masks = np.ones((1, 8, 8), bool)
    out = build_inpainter(variant).inpaint(InpaintBatch(np.zeros((1, 8, 8, 3), np.uint8), masks, [[]], [None], ["a"]))
    assert (out == 128).all()
