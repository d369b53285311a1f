"""Variant configs: typed, checked, and pointed at other data without dragging the sample along."""

from pathlib import Path

import numpy as np
import pytest
import yaml

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
        # fields whose default is None or a factory are checked too
        ({"method": "telea", "data": {"bbox_csv": 3}}, "data.bbox_csv: expected str or null, got 3"),
        ({"method": "telea", "data": {"truth": 3}}, "data.truth: expected Path or null, got 3"),
        ({"method": "telea", "data": {"channels": "grb"}}, "data.channels: 'grb' is not one of rgb, bgr"),
        ({"method": "telea", "data": {"id_pattern": 5}}, "data.id_pattern: expected str or null, got 5"),
        ({"method": "telea", "params": ["radius"]}, r"params: expected a mapping, got \['radius'\]"),
        ({"method": "sd", "params": {"animal_names": ["cat"]}}, "params.animal_names: expected a mapping"),
        ({"method": "telea", "data": {"val_count": True}}, "val_count: expected a non-negative integer, got True"),
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


def test_a_wrong_type_for_a_key_without_a_plain_default_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("method: telea\ndata: {bbox_csv: [a.csv]}\n")
    with pytest.raises(ConfigError, match=rf"{path}: data\.bbox_csv: expected str or null, got \['a.csv'\]"):
        load_variant(path)
    path.write_text("method: telea\ndescription: [a, b]\n")
    with pytest.raises(ConfigError, match=rf"{path}: description: expected str"):
        load_variant(path)
    path.write_text("method: telea\nparams:\ndescription:\n")  # keys with nothing under them: the defaults
    assert load_variant(path).params == {} and load_variant(path).description == ""


@pytest.mark.parametrize("params, message", [
    ({"mixed_precision": "fp8"}, "params.mixed_precision: 'fp8' is not one of no, bf16, fp16"),
    ({"flip": 2}, "params.flip: expected a fraction 0..1, got 2"),
    ({"epochs": True}, "params.epochs: expected a positive integer, got True"),
    ({"max_minutes": -1}, r"params.max_minutes: expected float >= 0, got -1"),
    ({"jpeg_quality_low": 0}, "params.jpeg_quality_low: expected int >= 1 and <= 100, got 0"),
    ({"jpeg_quality_low": 90, "jpeg_quality_high": 80}, "params.jpeg_quality_low/high: need 1 <= low <= high <= 100"),
    ({"checkpoint": None}, "params.checkpoint: expected str, got None"),
])
def test_shared_training_params_are_checked_by_type_and_bounds(tmp_path, params, message):
    path = tmp_path / "p2p.yaml"
    path.write_text(yaml.safe_dump({"method": "pix2pix", "params": params}))
    with pytest.raises(ConfigError, match=rf"{path}: {message}"):
        check_params(load_variant(path))
