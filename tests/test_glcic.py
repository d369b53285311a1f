"""Globally and locally consistent completion: dilated middle, one output from two discriminators,
crops around a box, the three-phase schedule, masked vs global MSE, params checking."""

import pytest
import torch

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters import glcic
from pipeline.inpainters.trainable import InferenceParams, TrainableConfig, TrainParams


def test_completion_network_dilates_2_4_8_16_at_a_quarter_of_the_size():
    net = glcic.CompletionNetwork(width=4, norm="none")
    seen = []
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d) and module.dilation[0] > 1:
            module.register_forward_hook(lambda m, i, o: seen.append((m.dilation[0], tuple(o.shape[-2:]))))
    out = net(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64) and out.abs().max() <= 1
    assert seen == [(2, (16, 16)), (4, (16, 16)), (8, (16, 16)), (16, (16, 16))]


def test_residual_completion_with_a_zero_residual_reproduces_the_fill():
    net = glcic.CompletionNetwork(width=4, norm="none", residual=True)
    last = net.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    fill = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(net(fill, torch.zeros(2, 1, 32, 32)), fill.clamp(-0.999, 0.999), atol=1e-5)


def test_both_discriminators_feed_one_output():
    d = glcic.ContextDiscriminator(width=4, image_size=64, local_size=32, norm="none")
    image = torch.randn(2, 3, 64, 64, requires_grad=True)
    crop = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = d(image, crop)
    assert logits.shape == (2, 1)
    logits.sum().backward()
    assert image.grad.abs().sum() > 0 and crop.grad.abs().sum() > 0
    # global: 64 -> 4 in four 5x5 stride-2 layers; local: 32 -> 4 in three
    strided = lambda stack: [m for m in stack if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    assert len(strided(d.global_convs)) == 4 and len(strided(d.local_convs)) == 3
    assert d.global_fc.out_features == d.local_fc.out_features == 1024 and d.head.in_features == 2048


def test_local_crops_centre_on_the_first_box_and_stay_inside_the_image():
    images = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64)
    boxes = torch.tensor([[[20, 10, 16, 16], [0, 0, 16, 16]],   # centre (28, 18): crop from (12, 2)
                          [[50, 50, 14, 14], [0, 0, 16, 16]]])  # near the corner: moved inside
    crops = glcic.local_crops(images, boxes, 32)
    assert crops.shape == (2, 1, 32, 32)
    assert torch.equal(crops[0], images[0, :, 2:34, 12:44])
    assert torch.equal(crops[1], images[1, :, 32:64, 32:64])


def test_phases_follow_the_configured_epochs():
    loss = glcic.LossParams(completion_epochs=2, discriminator_epochs=1)
    assert [glcic.phase(e, loss) for e in range(5)] == ["completion", "completion", "discriminator", "joint", "joint"]


def test_masked_mse_sees_the_boxes_global_mse_the_whole_image():
    target = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    prediction = torch.where(mask.bool(), 1.0, 0.5).expand(1, 3, 4, 4)
    assert glcic.mse(prediction, target, mask, "masked").item() == pytest.approx(1.0)
    assert glcic.mse(prediction, target, mask, "global").item() == pytest.approx((4 * 1 + 12 * 0.25) / 16)


def _tiny_step(**loss):
    from pipeline.train import _accelerator

    torch.manual_seed(0)
    network = glcic.NetworkParams(width=4, norm="none", d_width=4, local_size=32)
    config = TrainableConfig(network, glcic.LossParams(completion_epochs=1, discriminator_epochs=1, **loss),
                             TrainParams(lr=0.01), InferenceParams(), image_size=64)
    nets = glcic.FAMILY.build(config)
    optimizers = glcic.FAMILY.optimizers(config, nets)
    return glcic.FAMILY.make_step(config, _accelerator("no"), nets, optimizers), nets


def _batch():
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 10:26, 20:36] = 1
    return {"model_input": target * (1 - mask), "mask": mask, "target": target,
            "boxes": torch.tensor([[[20, 10, 16, 16]], [[20, 10, 16, 16]]])}


@pytest.mark.parametrize("epoch, phase, g_moves, d_moves, tags", [
    (0, "completion", True, False, {"loss/mse"}),
    (1, "discriminator", False, True, {"loss/d"}),
    (2, "joint", True, True, {"loss/mse", "loss/d", "loss/g_adv"}),
])
def test_each_phase_updates_its_networks_only(epoch, phase, g_moves, d_moves, tags):
    step, nets = _tiny_step()
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
    assert glcic.phase(epoch, step.loss) == phase
    logs = step(_batch(), epoch)
    assert set(logs) == tags
    moved = {name: any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters())) for name, net in nets.items()}
    assert moved == {"generator": g_moves, "discriminator": d_moves}


def test_joint_phase_mse_follows_the_switch():
    batch = _batch()
    masked, _ = _tiny_step(joint_mse="masked")
    whole, _ = _tiny_step(joint_mse="global")
    # same weights, same batch: only the MSE's region differs (box pixels vs every pixel)
    assert masked(batch, 2)["loss/mse"].item() != pytest.approx(whole(batch, 2)["loss/mse"].item())


def test_real_and_fake_local_crops_are_cut_at_the_same_place():
    """D's local branch compares a photo with its completion at one spot: the real crop and the
    fake one hold the same pixels outside the box, and the fake one holds the generated box."""
    step, nets = _tiny_step()
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    boxes = torch.tensor([[[4, 6, 16, 16], [40, 36, 16, 16]], [[36, 4, 16, 16], [6, 42, 16, 16]]])
    for n, image_boxes in enumerate(boxes.tolist()):
        for x, y, w, h in image_boxes:
            mask[n, :, y:y + h, x:x + w] = 1
    seen = []
    nets["discriminator"].register_forward_pre_hook(lambda module, args: seen.append(args))
    step({"model_input": target * (1 - mask), "mask": mask, "target": target, "boxes": boxes}, 1)
    (images, crops), = seen  # the discriminator phase: one forward, real then fake
    real_crops, fake_crops = crops.chunk(2)
    for n in range(2):
        real, fake = real_crops[n], fake_crops[n]
        generated = (real != fake).any(dim=0)
        assert generated.any(), "the fake crop holds generated pixels"
        assert generated.sum() <= 16 * 16, "real and fake crops differ outside a box: cut at two places"


@pytest.mark.parametrize("params, words", [
    ({"joint_mse": "both"}, ["joint_mse", "masked, global"]),
    ({"completion_epochs": 150, "discriminator_epochs": 60}, ["completion_epochs", "exceed", "epochs"]),
    ({"local_size": 100}, ["local_size", "power of two"]),
    ({"local_size": 64}, ["local_size", "75px box"]),
    ({"hole_fill": "blur"}, ["hole_fill", "telea"]),
])
def test_bad_params_are_errors_naming_the_key(params, words):
    with pytest.raises(ConfigError) as err:
        glcic.FAMILY.config(VariantConfig(name="t", method="glcic", params=params))
    for word in words:
        assert word in str(err.value)
