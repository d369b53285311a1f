"""pix2pix networks and objectives: the residual on the hole fill, U-Net shape, the 70x70 PatchGAN,
box-only losses, params checking, and test-time flip averaging."""

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters import pix2pix as p2p
from pipeline.inpainters.blocks import generator_input
from pipeline.inpainters.losses import box_loss


def test_zero_residual_reproduces_the_hole_fill_and_outputs_stay_in_range():
    torch.manual_seed(0)
    g = p2p.UNetGenerator(ngf=8, depth=4, norm="instance", dropout=False)
    fill = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    out = g(generator_input(fill, mask), fill)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1.0
    last = g.ups[0][1]  # the outermost transposed conv produces the residual
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    out = g(generator_input(fill, mask), fill)
    assert torch.allclose(out, fill.clamp(-0.999, 0.999), atol=1e-5)


def test_unet_halves_down_to_one_pixel_with_the_papers_widths_and_dropout():
    g = p2p.UNetGenerator(ngf=8, depth=8, dropout=True)
    shapes = []
    hooks = [d.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for d in g.downs]
    g.eval()
    out = g(torch.zeros(1, 4, 256, 256), torch.zeros(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 3, 256, 256)
    assert [c for c, _, _ in shapes] == [8, 16, 32, 64, 64, 64, 64, 64]
    assert [h for _, h, _ in shapes] == [128, 64, 32, 16, 8, 4, 2, 1]
    # dropout in the three widest decoder layers below the innermost, as in U-Net-256
    dropouts = [i for i, up in enumerate(g.ups) if any(isinstance(m, torch.nn.Dropout) for m in up)]
    assert dropouts == [4, 5, 6]


def test_patchgan_logit_sees_a_70x70_window():
    d = p2p.PatchDiscriminator(7, ndf=8, layers=3, norm="none")
    x = torch.randn(1, 7, 256, 256, requires_grad=True)
    logits = d(x)
    assert logits.shape == (1, 1, 30, 30)
    logits[0, 0, 15, 15].backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_box_losses_count_only_box_pixels():
    target = torch.zeros(1, 3, 8, 8)
    prediction = torch.full((1, 3, 8, 8), 5.0)  # wrong everywhere outside the box
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    prediction[..., 2:4, 2:4] = 0.5
    assert box_loss(prediction, target, mask, "l1").item() == pytest.approx(0.5)
    assert box_loss(prediction, target, mask, "l2").item() == pytest.approx(0.25)


def _variant(**params) -> VariantConfig:
    return VariantConfig(name="t", method="pix2pix", params=params)


@pytest.mark.parametrize("params, words", [
    ({"ngf": 8, "learning_rate": 0.1}, ["learning_rate", "allowed", "lr"]),
    ({"objective": "perceptual"}, ["objective", "perceptual", "gan, l1, l2"]),
    ({"hole_fill": "blur"}, ["hole_fill", "telea"]),
    ({"depth": 9}, ["depth", "256"]),
    ({"ngf": "wide"}, ["ngf", "int"]),
    ({"lr_decay": 1.5}, ["lr_decay"]),
])
def test_bad_params_are_errors_naming_the_key(params, words):
    with pytest.raises(ConfigError) as err:
        p2p.pix2pix_config(_variant(**params))
    for word in words:
        assert word in str(err.value)


class FillPlusRamp(torch.nn.Module):
    """A stand-in generator whose output is known: the fill plus a left-to-right ramp -1..1."""

    def forward(self, x, fill):
        ramp = torch.linspace(-1, 1, fill.shape[-1]).expand_as(fill)
        return fill + ramp


def test_flip_tta_averages_the_mirrored_prediction():
    # flipping the input mirrors the fill but not the ramp; flipping the output back mirrors the
    # ramp, so the average of the two keeps the fill and cancels the ramp: exactly the fill
    config = p2p.pix2pix_config(_variant(hole_fill="telea"))
    fill = torch.rand(2, 3, 16, 20) * 2 - 1
    mask = torch.zeros(2, 1, 16, 20)
    plain = p2p.Pix2PixInpainter(FillPlusRamp(), config, device=torch.device("cpu"))
    config.inference.tta = "flip"
    tta = p2p.Pix2PixInpainter(FillPlusRamp(), config, device=torch.device("cpu"))
    assert torch.allclose(plain.predict(fill, mask), fill + torch.linspace(-1, 1, 20), atol=1e-6)
    assert torch.allclose(tta.predict(fill, mask), fill, atol=1e-6)


def test_under_several_processes_each_model_goes_to_its_process_device(monkeypatch):
    # accelerate launch / torchrun set WORLD_SIZE; the device is the one accelerate gives the
    # process (cuda:<local rank>), not "cuda" for all: a stand-in state hands out a marked device
    import accelerate

    class ProcessState:
        device = torch.device("meta")

        def __init__(self, cpu: bool = False):  # cpu=True on a machine without a GPU (devices.partial_state)
            self.cpu = cpu

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", ProcessState)
    config = p2p.pix2pix_config(_variant(ngf=8, depth=4))
    inpainter = p2p.Pix2PixInpainter(p2p.FAMILY.build_generator(config), config)
    assert inpainter.device == torch.device("meta")
    assert next(inpainter.generator.parameters()).device == torch.device("meta")
