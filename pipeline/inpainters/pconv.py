"""Partial-convolution U-Net (Liu et al. 2018, "Image Inpainting for Irregular Holes Using Partial
Convolutions"; reports 002 and 003): every convolution sees only valid pixels and the mask of
valid pixels travels with the features through encoder and decoder.

`PartialConv2d`: out = W^T (X * M) * window / count(M) + b where any pixel of the window is valid,
0 where none is; the new mask is 1 wherever any pixel was valid. The U-Net halves the image
`depth` times with stride-2 partial convs, then doubles it back (nearest upsampling of features
and mask, concatenated with the encoder's features and mask at that size); its last layer also
sees the input image and its mask, so it can copy the known pixels. The boxes' own pixels never
reach the output: the network needs no hole fill (the loader leaves the boxes black).

Losses (`loss`):
    paper  valid L1 + 6 x hole L1 + 0.1 x total variation over the boxes' 1-pixel dilation, plus
           0.05 x perceptual + 120 x style (VGG16 pool1..3 features) when `feature_weights` names
           a VGG16 state dict on disk; without one those two terms are off (nothing downloads)
    l2     squared error on the box pixels only: what RMSE rewards
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters.blocks import NORMS, init_weights, norm_layer
from pipeline.inpainters.losses import box_loss
from pipeline.inpainters.trainable import (Family, TrainableConfig, TrainedInpainter, at_least, batch_tensors,
                                           choice)

LOSSES = ("paper", "l2")


@dataclass
class NetworkParams:
    """The U-Net's shape: a checkpoint must match all of these."""

    width: int = 64  # channels of the first layer, doubling per level up to max_width
    max_width: int = 512
    depth: int = 7  # levels; 7 takes 256x256 to 2x2 (the paper's 8 for 512x512)
    kernels: str = "7,5,5,3"  # encoder kernel sizes from the top; the last one repeats below
    norm: str = "batch"  # batch | instance | none (never on the first encoder and the last decoder layer)


@dataclass
class LossParams:
    loss: str = "paper"  # paper | l2
    lambda_valid: float = 1.0
    lambda_hole: float = 6.0
    lambda_tv: float = 0.1
    lambda_perceptual: float = 0.05  # used only with feature_weights
    lambda_style: float = 120.0  # used only with feature_weights
    feature_weights: str = ""  # a VGG16 state dict (torchvision's key layout) on disk; empty: no perceptual/style


GENERATOR_KEYS = ("width", "max_width", "depth", "kernels", "norm")


# ---------------------------------------------------------------------------------------------
# The layer


class PartialConv2d(nn.Conv2d):
    """forward(x (N, C, H, W), mask (N, 1 or C, H, W) 1 = valid) -> (out, new mask (N, 1, H', W')).

    out = conv(x * mask) * window / count + bias where count (valid inputs under the window) > 0,
    exactly 0 where count == 0; window = kernel area x channels. new mask = (count > 0). Zero
    padding counts as invalid.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            ones = torch.ones(1, mask.shape[1], *self.kernel_size, device=mask.device)
            count = F.conv2d(mask.float(), ones, None, self.stride, self.padding, self.dilation)
            updated = (count > 0).float()
            ratio = ones.numel() / count.clamp_min(1.0) * updated
        out = F.conv2d(x * mask.to(x.dtype), self.weight, None, self.stride, self.padding, self.dilation)
        out = out * ratio.to(out.dtype)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(out.dtype) * updated.to(out.dtype)
        return out, updated


class PConvBlock(nn.Module):
    """PartialConv2d -> [norm] -> [activation]; carries the mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: str, act: nn.Module | None):
        super().__init__()
        self.conv = PartialConv2d(in_channels, out_channels, kernel, stride, kernel // 2,
                                  bias=norm != "batch")
        self.norm = norm_layer(norm, out_channels)
        self.act = act or nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.conv(x, mask)
        return self.act(self.norm(x)), mask


class PConvUNet(nn.Module):
    """forward(image (N, 3, H, W) in -1..1, hole (N, 1, H, W) 1 in the boxes) -> (N, 3, H, W).

    The output is the last partial conv's, no activation (the paper's); the pixels under `hole`
    do not affect it.
    """

    def __init__(self, width: int = 64, max_width: int = 512, depth: int = 7, kernels: tuple[int, ...] = (7, 5, 5, 3),
                 norm: str = "batch", in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        widths = [min(width * 2**i, max_width) for i in range(depth)]
        kernel = [kernels[min(i, len(kernels) - 1)] for i in range(depth)]
        self.encoder = nn.ModuleList(
            PConvBlock(in_channels if i == 0 else widths[i - 1], widths[i], kernel[i], 2,
                       "none" if i == 0 else norm, nn.ReLU(inplace=True)) for i in range(depth))
        # decoder[i] undoes encoder[i]: the upsampled features of level i + the skip of level i - 1
        self.decoder = nn.ModuleList(
            PConvBlock(widths[i] + (widths[i - 1] if i else in_channels), widths[i - 1] if i else out_channels, 3, 1,
                       norm if i else "none", nn.LeakyReLU(0.2, inplace=True) if i else None) for i in range(depth))

    def forward(self, image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        x, mask = image, 1.0 - hole
        skips = []
        for block in self.encoder:
            skips.append((x, mask))
            x, mask = block(x, mask)
        for block in reversed(self.decoder):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            mask = F.interpolate(mask, scale_factor=2.0, mode="nearest")
            skip, skip_mask = skips.pop()
            mask = torch.cat([mask.expand(-1, x.shape[1], -1, -1), skip_mask.expand(-1, skip.shape[1], -1, -1)], dim=1)
            x, mask = block(torch.cat([x, skip], dim=1), mask)
        return x


def parse_kernels(text: str) -> tuple[int, ...]:
    return tuple(int(k) for k in str(text).split(","))


def build_generator(net: NetworkParams) -> PConvUNet:
    model = PConvUNet(net.width, net.max_width, net.depth, parse_kernels(net.kernels), net.norm)
    init_weights(model)
    return model


# ---------------------------------------------------------------------------------------------
# Losses (float NCHW in -1..1; mask (N, 1, H, W) with 1 in the boxes)


class VGG16Features(nn.Module):
    """VGG16's layers up to pool3, loaded from a local torchvision-layout state dict
    (features.<i>.weight / bias); forward -> [pool1, pool2, pool3] of an image in -1..1."""

    LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")

    def __init__(self, path: Path):
        super().__init__()
        layers, channels = [], 3
        for item in self.LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.features.state_dict()
        self.features.load_state_dict({k: state[f"features.{k}"] for k in own})
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image + 1) / 2 - self.mean) / self.std
        out = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                out.append(x)
        return out


def gram(features: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def total_variation(composited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels that both lie in the boxes' 1-pixel
    dilation, over all elements (the paper's normalisation)."""
    region = F.max_pool2d(mask, 3, stride=1, padding=1)
    across = region[..., :, 1:] * region[..., :, :-1]
    down = region[..., 1:, :] * region[..., :-1, :]
    tv = ((composited[..., :, 1:] - composited[..., :, :-1]).abs() * across).sum() \
        + ((composited[..., 1:, :] - composited[..., :-1, :]).abs() * down).sum()
    return tv / composited.numel()


def pconv_losses(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss: LossParams,
                 features: VGG16Features | None = None) -> dict[str, torch.Tensor]:
    """The configured loss terms by TensorBoard tag, and "loss/total" (what is minimised)."""
    prediction, target = prediction.float(), target.float()
    if loss.loss == "l2":
        value = box_loss(prediction, target, mask, "l2")
        return {"loss/box_l2": value, "loss/total": value}
    diff = (prediction - target).abs()
    terms = {"loss/valid": (diff * (1 - mask)).mean(), "loss/hole": (diff * mask).mean()}
    composited = prediction * mask + target * (1 - mask)
    terms["loss/tv"] = total_variation(composited, mask)
    total = loss.lambda_valid * terms["loss/valid"] + loss.lambda_hole * terms["loss/hole"] + loss.lambda_tv * terms["loss/tv"]
    if features is not None:
        out_f, comp_f, true_f = features(prediction), features(composited), features(target)
        terms["loss/perceptual"] = sum((o - t).abs().mean() + (c - t).abs().mean()
                                       for o, c, t in zip(out_f, comp_f, true_f))
        terms["loss/style"] = sum((gram(o) - gram(t)).abs().mean() + (gram(c) - gram(t)).abs().mean()
                                  for o, c, t in zip(out_f, comp_f, true_f))
        total = total + loss.lambda_perceptual * terms["loss/perceptual"] + loss.lambda_style * terms["loss/style"]
    terms["loss/total"] = total
    return terms


class PConvStep:
    """step(batch, epoch): the configured loss on the generator's output, one Adam step."""

    def __init__(self, accelerator, config: TrainableConfig, generator, optimizer):
        self.accelerator, self.loss, self.channels_last = accelerator, config.loss, config.train.channels_last
        self.generator, self.optimizer = generator, optimizer
        self.features = None
        if config.loss.loss == "paper" and config.loss.feature_weights:
            self.features = VGG16Features(Path(config.loss.feature_weights)).to(accelerator.device)

    def __call__(self, batch: dict[str, torch.Tensor], epoch: int = 0) -> dict[str, torch.Tensor]:
        acc = self.accelerator
        image, mask, target = batch_tensors(batch, self.channels_last)
        with acc.autocast():
            prediction = self.generator(image, mask)
        terms = pconv_losses(prediction, target, mask, self.loss, self.features)
        acc.backward(terms["loss/total"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms


# ---------------------------------------------------------------------------------------------


class PConvFamily(Family):
    method = "pconv"
    NetworkParams = NetworkParams
    LossParams = LossParams
    generator_keys = GENERATOR_KEYS

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        net, loss = config.network, config.loss
        where = variant.source or variant.name
        choice(variant, "norm", net.norm, NORMS)
        choice(variant, "loss", loss.loss, LOSSES)
        at_least(variant, {"width": net.width, "max_width": net.max_width})
        try:
            kernels = parse_kernels(net.kernels)
        except ValueError:
            kernels = ()
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ConfigError(f"{where}: params.kernels: odd kernel sizes separated by commas (e.g. 7,5,5,3), "
                              f"got {net.kernels!r}")
        size = variant.data.image_size
        if net.depth < 1 or size % 2**net.depth:
            raise ConfigError(f"{where}: params.depth: {net.depth} halvings do not divide the {size}px image evenly")
        if loss.feature_weights and not Path(loss.feature_weights).is_file():
            raise ConfigError(f"{where}: params.feature_weights: {loss.feature_weights} is not a file; give a "
                              "VGG16 state dict on disk, or leave it empty to train without perceptual/style terms")

    def build_generator(self, config: TrainableConfig) -> PConvUNet:
        return build_generator(config.network)

    def make_step(self, config, accelerator, nets, optimizers) -> PConvStep:
        return PConvStep(accelerator, config, nets["generator"], optimizers["opt_g"])

    def generate(self, generator, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return generator(filled, mask)


FAMILY = PConvFamily()


class PConvInpainter(TrainedInpainter):
    """A trained partial-convolution U-Net, from `params.checkpoint` (default checkpoints/<variant>/best.pt)."""

    family = FAMILY
