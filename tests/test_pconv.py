"""Partial convolutions: rescaling and mask update on hand-made cases, a U-Net blind to the pixels
under its holes, the paper's loss terms, and params checking."""

import pytest
import torch

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters import pconv


def _ones_conv(in_channels: int = 1) -> pconv.PartialConv2d:
    conv = pconv.PartialConv2d(in_channels, 1, 3, padding=1)
    torch.nn.init.ones_(conv.weight)
    torch.nn.init.constant_(conv.bias, 0.5)
    return conv


def test_partial_conv_rescales_by_window_over_valid_count_and_adds_bias_after():
    x = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).view(1, 1, 3, 3)
    valid = torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 0, 0]]).view(1, 1, 3, 3)
    out, new_mask = _ones_conv()(x, valid)
    # (0,0): 1 + 2 over 2 valid of 9 -> 3 * 9/2 + 0.5; (0,2): only the 2 -> 2 * 9/1 + 0.5;
    # the bottom row's windows hold no valid pixel: 0, bias not added, mask stays 0
    expected = torch.tensor([[14.0, 14.0, 18.5], [14.0, 14.0, 18.5], [0.0, 0.0, 0.0]])
    assert torch.allclose(out[0, 0], expected)
    assert torch.equal(new_mask[0, 0], torch.tensor([[1.0, 1, 1], [1, 1, 1], [0, 0, 0]]))


def test_partial_conv_ignores_invalid_values_and_counts_channels_of_a_per_channel_mask():
    x = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).view(1, 1, 3, 3)
    valid = torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 0, 0]]).view(1, 1, 3, 3)
    noisy = torch.where(valid.bool(), x, torch.full_like(x, 1000.0))
    conv = _ones_conv()
    assert torch.equal(conv(x, valid)[0], conv(noisy, valid)[0])
    # two channels, the second wholly invalid: window 18, valid count 2 at (0,0) -> 3 * 18/2 + 0.5
    two = torch.cat([x, torch.full_like(x, 1000.0)], dim=1)
    out, new_mask = _ones_conv(2)(two, torch.cat([valid, torch.zeros_like(valid)], dim=1))
    assert out[0, 0, 0, 0].item() == pytest.approx(27.5) and new_mask[0, 0, 0, 0] == 1


def test_a_strided_layer_shrinks_the_hole_by_its_window():
    conv = pconv.PartialConv2d(1, 1, 7, stride=2, padding=3)
    hole = torch.zeros(1, 1, 64, 64)
    hole[..., 20:40, 20:40] = 1
    _, new_mask = conv(torch.rand(1, 1, 64, 64), 1 - hole)
    # output i sees input rows 2i-3 .. 2i+3: all inside 20..39 only for i = 12..18
    expected = torch.ones(32, 32)
    expected[12:19, 12:19] = 0
    assert new_mask.shape == (1, 1, 32, 32) and torch.equal(new_mask[0, 0], expected)


@pytest.mark.parametrize("train_mode", [False, True])
def test_unet_output_does_not_depend_on_the_hole_pixels(train_mode):
    torch.manual_seed(0)
    net = pconv.PConvUNet(width=4, max_width=8, depth=4, kernels=(7, 5, 3), norm="batch").train(train_mode)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    hole = torch.zeros(2, 1, 64, 64)
    hole[..., 10:35, 20:45] = 1
    other = torch.where(hole.bool(), torch.rand_like(image) * 2 - 1, image)  # new values in the hole only
    out = net(image, hole)
    assert out.shape == (2, 3, 64, 64)
    assert torch.equal(out, net(other, hole))
    known = image.clone()
    known[..., 0, 0] += 0.5  # a known pixel does reach the output
    assert not torch.equal(out, net(known, hole))


def test_unet_levels_follow_the_papers_layout():
    net = pconv.PConvUNet(width=64, max_width=512, depth=7, kernels=(7, 5, 5, 3))
    assert [b.conv.kernel_size[0] for b in net.encoder] == [7, 5, 5, 3, 3, 3, 3]
    assert [b.conv.out_channels for b in net.encoder] == [64, 128, 256, 512, 512, 512, 512]
    assert [b.conv.stride[0] for b in net.encoder] == [2] * 7
    # the last layer sees the upsampled features and the input image (3 channels), returns RGB
    assert (net.decoder[0].conv.in_channels, net.decoder[0].conv.out_channels) == (64 + 3, 3)
    assert isinstance(net.encoder[0].norm, torch.nn.Identity) and isinstance(net.encoder[1].norm, torch.nn.BatchNorm2d)


def test_paper_loss_weighs_hole_and_valid_pixels_and_l2_sees_only_the_boxes():
    target = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1  # 16 of 64 pixels
    prediction = torch.where(mask.bool(), 0.5, 0.25).expand(1, 3, 8, 8)
    terms = pconv.pconv_losses(prediction, target, mask, pconv.LossParams())
    assert terms["loss/hole"].item() == pytest.approx(0.5 * 16 / 64)
    assert terms["loss/valid"].item() == pytest.approx(0.25 * 48 / 64)
    # the box's edge lies in its 1-pixel dilation: 16 neighbouring pairs step by 0.5, x 3 channels
    assert terms["loss/tv"].item() == pytest.approx(16 * 0.5 * 3 / (3 * 64))
    assert terms["loss/total"].item() == pytest.approx(
        terms["loss/valid"].item() + 6 * terms["loss/hole"].item() + 0.1 * terms["loss/tv"].item())
    l2 = pconv.pconv_losses(prediction, target, mask, pconv.LossParams(loss="l2"))
    assert l2["loss/total"].item() == pytest.approx(0.25)


def test_total_variation_counts_edges_inside_the_dilated_boxes_only():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3:5, 3:5] = 1
    image = torch.zeros(1, 1, 8, 8)
    image[..., :, 0] = 1.0  # an edge far from the box: not counted
    assert pconv.total_variation(image, mask).item() == 0
    image[..., 4, 4] = 1.0  # a spike in the box: 4 neighbouring pairs of 1
    assert pconv.total_variation(image, mask).item() == pytest.approx(4 / 64)


def test_perceptual_and_style_terms_come_with_a_feature_network(tmp_path):
    torch.manual_seed(0)
    reference = torch.nn.Sequential(*[torch.nn.Conv2d(c_in, c_out, 3, padding=1) if c_out else torch.nn.Identity()
                                      for c_in, c_out in [(3, 64), (0, 0), (64, 64), (0, 0), (0, 0), (64, 128), (0, 0),
                                                          (128, 128), (0, 0), (0, 0), (128, 256), (0, 0), (256, 256),
                                                          (0, 0), (256, 256), (0, 0), (0, 0)]])
    path = tmp_path / "vgg16.pt"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    features = pconv.VGG16Features(path)
    target, mask = torch.rand(1, 3, 32, 32) * 2 - 1, torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    terms = pconv.pconv_losses(target + mask * 0.5, target, mask, pconv.LossParams(), features)
    assert terms["loss/perceptual"] > 0 and terms["loss/style"] > 0
    plain = pconv.pconv_losses(target + mask * 0.5, target, mask, pconv.LossParams())
    assert "loss/perceptual" not in plain and terms["loss/total"] > plain["loss/total"]


@pytest.mark.parametrize("params, words", [
    ({"kernels": "7,4"}, ["kernels", "odd"]),
    ({"loss": "perceptual"}, ["loss", "paper, l2"]),
    ({"depth": 9}, ["depth", "256"]),
    ({"feature_weights": "nowhere/vgg16.pt"}, ["feature_weights", "nowhere/vgg16.pt", "empty"]),
    ({"ngf": 8}, ["ngf", "allowed", "width"]),
])
def test_bad_params_are_errors_naming_the_key(params, words):
    with pytest.raises(ConfigError) as err:
        pconv.FAMILY.config(VariantConfig(name="t", method="pconv", params=params))
    for word in words:
        assert word in str(err.value)
