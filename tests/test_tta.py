"""Test-time augmentation (tta: none | flip | d4) and dropout sampling (mc_dropout, samples) of the
trainable families, on stand-in generators whose outputs are known."""

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters import pix2pix as p2p
from pipeline.inpainters.base import InpaintBatch
from pipeline.inpainters.tta import TTA_MODES

CPU = torch.device("cpu")


def _config(**params):
    return p2p.pix2pix_config(VariantConfig(name="t", method="pix2pix", params={"hole_fill": "zero", **params}))


def _inpainter(generator, **params):
    return p2p.Pix2PixInpainter(generator, _config(**params), device=CPU)


class SymmetricConv(torch.nn.Module):
    """Equivariant under every flip and quarter turn by construction: one 3x3 kernel, symmetric
    under the eight symmetries of the square, on the fill and on the mask."""

    def __init__(self):
        super().__init__()
        a, b, c = torch.rand(3)
        kernel = torch.tensor([[a, b, a], [b, c, b], [a, b, a]])
        self.register_buffer("kernel", kernel.expand(3, 1, 3, 3).clone())

    def forward(self, x, fill):
        mask = x[:, 3:]
        blurred = torch.nn.functional.conv2d(fill, self.kernel, padding=1, groups=3)
        return torch.tanh(blurred + torch.nn.functional.conv2d(mask.expand_as(fill), self.kernel, padding=1, groups=3))


class BiasedShift(torch.nn.Module):
    """Not equivariant: the fill moved one pixel right, plus a fixed image `bias`, plus half the mask."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, x, fill):
        return torch.roll(fill, 1, dims=-1) + self.bias + 0.5 * x[:, 3:]


def _inputs(n=2, size=12):
    torch.manual_seed(0)
    fill = torch.rand(n, 3, size, size) * 2 - 1
    mask = torch.zeros(n, 1, size, size)
    mask[..., 2:5, 3:9] = 1  # an asymmetric hole: a transform that forgot the mask would show
    return fill, mask


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_an_equivariant_generator_gains_nothing_from_tta(mode):
    fill, mask = _inputs()
    generator = SymmetricConv()
    plain = _inpainter(generator).predict(fill, mask)
    assert torch.allclose(_inpainter(generator, tta=mode).predict(fill, mask), plain, atol=1e-6)


@pytest.mark.parametrize("mode", ["none", "flip", "d4"])
def test_tta_is_the_average_over_the_transforms_computed_independently(mode):
    fill, mask = _inputs()
    bias = torch.rand(3, 12, 12)
    out = _inpainter(BiasedShift(bias), tta=mode).predict(fill, mask).numpy()
    # each transform g turns the one-pixel shift right into a shift along g^-1(right), and the
    # bias into g^-1(bias); the mask term follows the image back: 0.5 * mask whatever the mode
    f, b = fill.numpy(), bias.numpy()
    if mode == "none":
        shifts, biases = [np.roll(f, 1, -1)], [b]
    elif mode == "flip":
        shifts = [np.roll(f, 1, -1), np.roll(f, -1, -1)]
        biases = [b, b[..., ::-1]]
    else:
        shifts = [np.roll(f, s, axis) for s in (1, -1) for axis in (-1, -2) for _ in range(2)]
        biases = [np.rot90(m, k, axes=(-2, -1)) for m in (b, b[..., ::-1]) for k in range(4)]
    expected = np.mean(shifts, axis=0) + np.mean(biases, axis=0) + 0.5 * mask.numpy()
    assert np.allclose(out, expected, atol=1e-5)


def test_tta_runs_every_transform_through_the_network():
    fill, mask = _inputs(n=1)
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, x, fill):
            seen.append(fill.clone())
            return fill

    for mode, count in zip(TTA_MODES, (1, 2, 8)):
        seen.clear()
        _inpainter(Recording(), tta=mode).predict(fill, mask)
        assert len(seen) == count
        assert len({tuple(s.flatten().tolist()) for s in seen}) == count  # eight distinct views for d4


def test_tta_settings_are_checked_and_the_old_key_is_named():
    with pytest.raises(ConfigError, match="tta_flip.*replaced by params.tta"):
        _config(tta_flip=True)
    with pytest.raises(ConfigError, match="tta.*'d8'.*none, flip, d4"):
        _config(tta="d8")


# --- dropout sampling ---------------------------------------------------------------------------


class NoisyFill(torch.nn.Module):
    """The fill plus 0.4 x dropout(ones): every output pixel a coin flip when dropout is on."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, fill):
        return torch.tanh(fill + 0.2 * self.drop(torch.ones_like(fill)))


def _batch(n=3, size=16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    masks[:, 4:10, 5:12] = True
    images[masks] = 0
    return InpaintBatch(images, masks, [[] for _ in range(n)], [None] * n, [f"img{i}" for i in range(n)])


def test_samples_are_the_mean_of_the_single_seeded_runs():
    batch = _batch()
    mean = _inpainter(NoisyFill(), mc_dropout=True, samples=4, sample_seed=3).inpaint(batch)
    singles = [_inpainter(NoisyFill(), mc_dropout=True, sample_seed=seed).inpaint(batch) for seed in (3, 4, 5, 6)]
    assert not np.array_equal(singles[0], singles[1])  # the samples differ: dropout is on
    expected = np.round(np.mean(np.stack(singles).astype(np.float64), axis=0)).astype(np.uint8)
    assert np.array_equal(mean, expected)
    # a sample depends on its seed and image, not on its batch
    alone = _inpainter(NoisyFill(), mc_dropout=True, sample_seed=4).inpaint(
        InpaintBatch(batch.masked_images[1:2], batch.masks[1:2], [[]], [None], ["img1"]))
    assert np.array_equal(alone[0], singles[1][1])
    # without mc_dropout the network is deterministic (eval mode), as before
    plain = _inpainter(NoisyFill()).inpaint(batch)
    assert np.array_equal(plain, _inpainter(NoisyFill()).inpaint(batch))


def test_sampling_needs_dropout():
    with pytest.raises(ConfigError, match="samples.*mc_dropout: true"):
        _config(samples=3)
    with pytest.raises(ConfigError, match="samples: expected a positive integer"):
        _config(samples=0)
    with pytest.raises(ConfigError, match="no dropout layers"):
        _inpainter(SymmetricConv(), mc_dropout=True)


@pytest.mark.parametrize("config_name", ["unet-l2-cpu", "pconv-cpu", "glcic-cpu"])
def test_every_learned_family_averages_its_own_networks_views(config_name):
    """Each family's inpainter (real network, random weights) with tta: d4 predicts the mean of its
    network's eight views, the views made and undone here with numpy."""
    from pipeline.config import load_variant
    from pipeline.inpainters.base import inpainter_class
    from tests.conftest import REPO

    variant = load_variant(REPO / "configs" / f"{config_name}.yaml")
    variant.params["tta"] = "d4"
    cls = inpainter_class(variant)
    config = cls.family.config(variant)
    torch.manual_seed(0)
    generator = cls.family.build_generator(config).eval()
    for module in generator.modules():  # weights that keep the signal's scale: every view its own output
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(module.weight)
    fill = torch.rand(1, 3, 256, 256) * 2 - 1
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 30:105, 60:135] = 1
    views = []
    with torch.no_grad():
        for mirror in (False, True):
            for k in range(4):
                def there(x):
                    return torch.from_numpy(np.ascontiguousarray(np.rot90(x[..., ::-1] if mirror else x, k, axes=(-2, -1))))
                out = cls.family.generate(generator, there(fill.numpy()), there(mask.numpy())).numpy()
                back = np.rot90(out, -k, axes=(-2, -1))
                views.append(back[..., ::-1] if mirror else back)
    expected = np.mean(views, axis=0)
    predicted = cls(generator, config, device=CPU).predict(fill, mask).numpy()
    assert np.allclose(predicted, expected, atol=1e-5)
    assert not np.allclose(views[0], expected, atol=1e-3)  # the views differ: the test can tell
