"""The hole fill, written once: the results the four copies it replaced gave, the fill confined to
the hole, and configs still using the fill's old names stopped with the name it has now."""

import hashlib
import pickle
from functools import partial

import numpy as np
import pytest

from pipeline.checkpoint import check_same_config
from pipeline.config import ConfigError, VariantConfig, load_sweep, load_variant
from pipeline.inpainters.base import InpaintBatch
from pipeline.inpainters.classical import MeanFill, OpenCVInpaint
from pipeline.inpainters.fill import HOLE_FILLS, fill_holes

# sha256 (first 16 hex digits) of what pix2pix's HoleFill, sd's prefill and the classical methods
# returned for `_case()` before they became fill_holes (names as those copies spelled them)
OLD_RESULTS = {
    ("none", 5.0): "05afdb136e9db293",  # sd prefill none
    ("zero", 5.0): "1d554e1260e1af9a",  # HoleFill zero
    ("mean", 5.0): "a4507028e6c3a975",  # HoleFill mean, sd prefill mean, MeanFill
    ("telea", 5.0): "1a154da9e90fc091",  # HoleFill telea, sd prefill telea, OpenCVInpaint telea
    ("navier-stokes", 5.0): "1923eb01b10c843b",  # HoleFill navier-stokes, OpenCVInpaint
    ("telea", 3.0): "1fafc8997b1b4fda",  # OpenCVInpaint telea, radius 3
    ("navier-stokes", 3.0): "7e3207d841d8af2e",  # OpenCVInpaint navier-stokes, radius 3
}


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Three masked images: two holes, a hole along the top edge, no hole."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
    masks = np.zeros((3, 48, 40), bool)
    masks[0, 5:20, 8:30] = True
    masks[0, 30:44, 2:12] = True
    masks[1, 0:10, 0:40] = True
    images[masks] = 0
    return images, masks


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("how, radius", list(OLD_RESULTS), ids=[f"{h}-{r}" for h, r in OLD_RESULTS])
def test_fill_gives_what_the_four_copies_gave(how, radius):
    images, masks = _case()
    batch = fill_holes(images, masks, how, radius)
    assert _digest(batch) == OLD_RESULTS[how, radius]
    # one image at a time (the loader's workers) is the same as the batch
    assert all((fill_holes(i, m, how, radius) == b).all() for i, m, b in zip(images, masks, batch))


def test_classical_methods_are_the_fill():
    images, masks = _case()
    batch = InpaintBatch(images, masks, [[]] * 3, [None] * 3, ["a", "b", "c"])
    assert _digest(MeanFill().inpaint(batch)) == OLD_RESULTS["mean", 5.0]
    assert _digest(OpenCVInpaint("navier-stokes", 3.0).inpaint(batch)) == OLD_RESULTS["navier-stokes", 3.0]


def test_fills_change_only_the_hole_and_refuse_unknown_names():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:22] = True
    masked = image.copy()
    masked[mask] = 0
    for how in HOLE_FILLS:
        filled = fill_holes(masked, mask, how)
        assert filled.dtype == np.uint8 and (filled[~mask] == image[~mask]).all(), how
    assert (fill_holes(masked, mask, "none") == masked).all()
    assert (fill_holes(masked, mask, "zero")[mask] == 128).all()
    assert np.allclose(fill_holes(masked, mask, "mean")[mask], image[~mask].mean(axis=0), atol=0.5)
    assert fill_holes(masked, mask, "telea")[mask].std() > 0  # a gradient, not a constant
    assert (fill_holes(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), "mean") == 128).all()
    # the loader's workers get the fill pickled
    assert (pickle.loads(pickle.dumps(partial(fill_holes, how="telea")))(masked, mask) == fill_holes(masked, mask, "telea")).all()
    with pytest.raises(ValueError, match="hole_fill 'blur' is not one of none, zero, mean"):
        fill_holes(masked, mask, "blur")


@pytest.mark.parametrize("method, old", [("pix2pix", "hole_init"), ("glcic", "hole_init"), ("sd", "prefill")])
def test_a_config_with_the_old_key_is_told_the_new_one(tmp_path, method, old):
    path = tmp_path / f"{method}.yaml"
    path.write_text(f"method: {method}\nparams:\n  {old}: telea\n")
    with pytest.raises(ConfigError) as err:
        load_variant(path)
    assert str(err.value) == f"{path}: params.{old}: this key is now `hole_fill`; rename it in the file"


def test_a_sweep_with_the_old_key_names_its_file_and_entry(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("method: sd\nparams:\n  steps: 2\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: base.yaml\nvariants:\n  - name: a\n  - name: b\n    params:\n      prefill: none\n")
    with pytest.raises(ConfigError, match=rf"{sweep}: variants\[1\]: params.prefill: this key is now `hole_fill`"):
        load_sweep(sweep)
    base.write_text("method: sd\nparams:\n  prefill: none\n")
    with pytest.raises(ConfigError, match=rf"{base}: params.prefill: this key is now `hole_fill`"):
        load_sweep(sweep)


def test_a_checkpoint_saved_under_the_old_name_still_matches():
    variant = VariantConfig(name="p", method="pix2pix")
    state = {"config": {"name": "p", "method": "pix2pix", "params": {"hole_init": "telea"}, "data": {"image_size": 256}}}
    check_same_config("best.pt", state, variant, {"hole_fill": "telea"}, ["hole_fill"], "generator")
    with pytest.raises(Exception, match="hole_fill: checkpoint 'telea', config 'mean'"):
        check_same_config("best.pt", state, variant, {"hole_fill": "mean"}, ["hole_fill"], "generator")


def test_pyramid_fill_blends_the_surroundings_into_the_hole_and_keeps_the_rest():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 200  # left half bright, right half dark
    mask = np.zeros((64, 64), bool)
    mask[20:44, 20:44] = True
    out = fill_holes(np.where(mask[..., None], 0, image).astype(np.uint8), mask, "pyramid")
    assert (out[~mask] == image[~mask]).all()
    assert out[32, 21, 0] > out[32, 42, 0] + 50  # the bright side stays bright, the dark side dark
    assert fill_holes(image, np.ones((64, 64), bool), "pyramid").min() == 128  # nothing known: grey


def test_auto_loader_workers_leave_a_core_for_the_process(monkeypatch):
    from pipeline import train

    monkeypatch.setattr(train, "_cores", lambda: 4)
    assert train.loader_workers("auto", 1) == 3 and train.loader_workers("auto", 2) == 1
    assert train.loader_workers(5, 1) == 5


def test_telea_half_follows_telea_at_a_fraction_of_its_pixels():
    # a smooth ramp with an odd-sized image and hole: the half-size fill lands within a few levels
    # of full-size Telea's, and keeps every pixel outside the hole
    ys, xs = np.mgrid[0:61, 0:47]
    image = np.dstack([ys * 3, xs * 4, 255 - ys * 2]).clip(0, 255).astype(np.uint8)
    mask = np.zeros((61, 47), bool)
    mask[13:40, 9:32] = True
    masked = np.where(mask[..., None], 0, image).astype(np.uint8)
    half = fill_holes(masked, mask, "telea-half")
    assert (half[~mask] == image[~mask]).all()
    telea = fill_holes(masked, mask, "telea")
    error = np.abs(half[mask].astype(int) - telea[mask]).mean()
    assert error < 4, error  # the ramp is 2-4 levels a pixel; black left in the hole would be ~100
    truth_error = [np.abs(f[mask].astype(int) - image[mask]).mean() for f in (half, telea)]
    assert truth_error[0] < truth_error[1] + 2, truth_error  # as far from the ramp as Telea, give or take
    # one image at a time equals the batch, and a second call gives the same bytes
    images, masks = _case()
    batch = fill_holes(images, masks, "telea-half")
    assert all((fill_holes(i, m, "telea-half") == b).all() for i, m, b in zip(images, masks, batch))
    assert (fill_holes(images, masks, "telea-half") == batch).all() and (batch[2] == images[2]).all()
    # nothing known: as telea, the image comes back as it went in
    dark = np.zeros((8, 8, 3), np.uint8)
    assert (fill_holes(dark, np.ones((8, 8), bool), "telea-half") == dark).all()


def _ramp_case() -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour ramp (odd size) with two boxes, one on the image's edge."""
    ys, xs = np.mgrid[0:61, 0:47]
    image = np.dstack([ys * 3, xs * 4, 255 - ys * 2]).clip(0, 255).astype(np.uint8)
    mask = np.zeros((61, 47), bool)
    mask[13:40, 9:32] = True
    mask[45:61, 30:44] = True
    return image, mask


def test_onion_fill_fills_only_the_boxes_close_to_telea():
    import torch

    from pipeline.inpainters.fill import onion_fill

    image, mask = _ramp_case()
    masked = np.where(mask[..., None], 0, image).astype(np.uint8)
    filled = fill_holes(masked, mask, "onion")
    assert filled.dtype == np.uint8 and filled.shape == image.shape
    assert (filled[~mask] == image[~mask]).all()
    telea = fill_holes(masked, mask, "telea")
    assert np.abs(filled[mask].astype(int) - telea[mask]).mean() < 4  # black left in a box: ~100
    # the device function on a float batch in -1..1 (what a network sees) is the uint8 fill, scaled
    x = torch.from_numpy(masked).permute(2, 0, 1)[None].float() / 127.5 - 1
    holes = torch.from_numpy(mask)[None, None]
    out = onion_fill(x, holes)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out[~holes.expand_as(out)], x[~holes.expand_as(x)])
    as_uint8 = ((out[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
    assert np.abs(as_uint8 - filled).max() <= 1  # rounding apart, the same numbers
    # deterministic, independent of what the boxes held, of the batch, and of the memory layout
    noisy = torch.where(holes, torch.rand_like(x), x)
    assert torch.equal(onion_fill(noisy, holes), out)
    batch = onion_fill(torch.cat([x, x.flip(3)]), torch.cat([holes, holes.flip(3)]))
    assert torch.allclose(batch[0], out[0]) and torch.allclose(batch[1], out[0].flip(2), atol=1e-5)
    assert torch.equal(onion_fill(x.contiguous(memory_format=torch.channels_last), holes), out)
    # nothing known: the image stays as it is
    assert (fill_holes(masked, np.ones_like(mask), "onion") == masked).all()


def test_a_device_fill_is_done_by_the_generator_not_the_loader():
    import torch

    from pipeline.inpainters import pix2pix as p2p
    from pipeline.inpainters.blocks import generator_input
    from pipeline.inpainters.fill import onion_fill

    onion = p2p.pix2pix_config(VariantConfig(name="t", method="pix2pix", params={"hole_fill": "onion", "ngf": 8, "depth": 4}))
    telea = p2p.pix2pix_config(VariantConfig(name="t", method="pix2pix", params={"hole_fill": "telea", "ngf": 8, "depth": 4}))
    assert p2p.FAMILY.hole_fill(onion) is None and p2p.FAMILY.hole_fill(telea).keywords == {"how": "telea"}
    torch.manual_seed(0)
    g = p2p.FAMILY.build_generator(onion).eval()
    plain = p2p.FAMILY.build_generator(telea).eval()
    assert g.device_fill == "onion" and plain.device_fill is None
    plain.load_state_dict(g.state_dict())  # the same weights: the fill adds no parameter to a checkpoint
    image, mask = _ramp_case()
    image, mask = image[4:36, 0:32], mask[4:36, 0:32]
    x = torch.from_numpy(np.where(mask[..., None], 0, image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    holes = torch.from_numpy(mask)[None, None].float()
    with torch.no_grad():
        ours = p2p.FAMILY.generate(g, x, holes)  # boxes black, as the loader leaves them
        filled = onion_fill(x, holes.bool())
        theirs = p2p.FAMILY.generate(plain, filled, holes)  # the same fill done beforehand
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the fill itself stays float32 under autocast
            assert torch.equal(g.fill_boxes(generator_input(x, holes))[1], filled)
    assert torch.allclose(ours, theirs, atol=1e-6)
    with pytest.raises(ValueError, match="device_fill 'telea' is not one of onion"):
        p2p.UNetGenerator(device_fill="telea")
