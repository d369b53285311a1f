"""Globally and locally consistent image completion (Iizuka et al. 2017; report 004).

Completion network: an encoder-decoder that halves the image twice, runs dilated 3x3 convolutions
(rates 2, 4, 8, 16) at a quarter of the size, and doubles it back; it is fed the masked image with
the boxes pre-filled (`hole_fill`: zero = the constant mid-grey of report 004, mean, telea,
navier-stokes; pipeline/inpainters/fill.py) and the mask as a fourth channel. With `residual` (this
project's addition, as in pix2pix) it predicts a residual on the fill before the final tanh.

Context discriminator: a global branch on the whole image and a local branch on a
`local_size` square crop around a box (the first of the sample's boxes, which the loader draws
at random), each ending in a 1024-wide layer; the two are concatenated into one real/fake logit.
D sees photos with the generated box pixels pasted in, as the pipeline composites them.

Training in three phases (report 004, the paper's Tc / Td / T): the completion network alone on
masked MSE for `completion_epochs`, then the discriminator alone for `discriminator_epochs`, then
both: D on real vs completed, the completion network on MSE + `alpha` x adversarial. Report 004
found masked MSE unstable in the joint phase and switched to MSE over the whole image:
`joint_mse: masked | global` picks which (it is a param, so it shows in the leaderboard's config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters.blocks import NORMS, generator_input, norm_layer, residual_on_fill
from pipeline.inpainters.fill import HOLE_FILLS, fill_holes
from pipeline.inpainters.losses import GANLoss, box_loss
from pipeline.inpainters.trainable import (Family, TrainableConfig, TrainedInpainter, at_least, batch_tensors,
                                           choice)

JOINT_MSE = ("masked", "global")
PHASES = ("completion", "discriminator", "joint")


@dataclass
class NetworkParams:
    width: int = 64  # completion network: channels of the first layer (the paper's 64; 4x in the middle)
    norm: str = "batch"  # batch | instance | none
    hole_fill: str = "zero"  # zero (mid-grey) | mean | telea | navier-stokes | none
    residual: bool = False  # predict a residual on the fill (tanh space), as pix2pix does here
    d_width: int = 64  # discriminators: channels of the first layer (doubling to 8x)
    local_size: int = 128  # side of the local discriminator's crop around a box


@dataclass
class LossParams:
    completion_epochs: int = 18  # phase 1: the completion network alone, masked MSE (paper: 90k of 500k steps)
    discriminator_epochs: int = 2  # phase 2: the discriminator alone (paper: 10k)
    joint_mse: str = "masked"  # phase 3's MSE: masked (the paper's) | global (report 004's fix)
    alpha: float = 0.0004  # weight of the adversarial term in phase 3 (the paper's)


GENERATOR_KEYS = ("width", "norm", "hole_fill", "residual")


def phase(epoch: int, loss: LossParams) -> str:
    """completion | discriminator | joint: the schedule's phase of `epoch` (0-based)."""
    if epoch < loss.completion_epochs:
        return "completion"
    if epoch < loss.completion_epochs + loss.discriminator_epochs:
        return "discriminator"
    return "joint"


# ---------------------------------------------------------------------------------------------
# Networks


def conv_block(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, norm: str = "batch",
               transpose: bool = False) -> nn.Sequential:
    """conv (or 4x4 stride-2 transposed conv) -> [norm] -> ReLU, size kept or halved/doubled."""
    if transpose:
        conv = nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=norm != "batch")
    else:
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, dilation * (kernel - 1) // 2, dilation, bias=norm != "batch")
    return nn.Sequential(conv, norm_layer(norm, out_ch), nn.ReLU(inplace=True))


class CompletionNetwork(nn.Module):
    """forward(filled (N, 3, H, W) in -1..1, mask (N, 1, H, W)) -> (N, 3, H, W) in -1..1.

    The paper's layers at `width` w: 5x5 w; 3x3/2 2w; 3x3 2w; 3x3/2 4w; 3x3 4w x2; dilated 3x3 4w
    at rates 2, 4, 8, 16; 3x3 4w x2; deconv 2w; 3x3 2w; deconv w; 3x3 w/2; 3x3 to RGB.
    """

    DILATIONS = (2, 4, 8, 16)

    def __init__(self, width: int = 64, norm: str = "batch", residual: bool = False):
        super().__init__()
        w = width
        self.residual = residual
        self.layers = nn.Sequential(
            conv_block(4, w, 5, norm=norm),
            conv_block(w, 2 * w, 3, 2, norm=norm), conv_block(2 * w, 2 * w, 3, norm=norm),
            conv_block(2 * w, 4 * w, 3, 2, norm=norm), conv_block(4 * w, 4 * w, 3, norm=norm),
            conv_block(4 * w, 4 * w, 3, norm=norm),
            *[conv_block(4 * w, 4 * w, 3, dilation=d, norm=norm) for d in self.DILATIONS],
            conv_block(4 * w, 4 * w, 3, norm=norm), conv_block(4 * w, 4 * w, 3, norm=norm),
            conv_block(4 * w, 2 * w, 4, norm=norm, transpose=True), conv_block(2 * w, 2 * w, 3, norm=norm),
            conv_block(2 * w, w, 4, norm=norm, transpose=True), conv_block(w, max(1, w // 2), 3, norm=norm),
            nn.Conv2d(max(1, w // 2), 3, 3, 1, 1),
        )

    def forward(self, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.layers(generator_input(filled, mask)).float()
        if self.residual:  # zero residual -> the fill
            return residual_on_fill(filled, out)
        return torch.tanh(out)


def _strided_stack(width: int, size: int, norm: str) -> tuple[nn.Sequential, int]:
    """5x5 stride-2 convs from `size` down to 4x4, widths w, 2w, 4w, 8w, 8w...; (stack, features)."""
    layers, channels = [], 3
    for i in range(int(math.log2(size // 4))):
        out = width * min(2**i, 8)
        layers += [nn.Conv2d(channels, out, 5, 2, 2, bias=norm != "batch"), norm_layer(norm, out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.Flatten()), channels * 16


class ContextDiscriminator(nn.Module):
    """forward(image (N, 3, S, S), crop (N, 3, L, L)) -> (N, 1) real/fake logits: the global and
    the local branch each end in a 1024-wide layer, concatenated into one output."""

    def __init__(self, width: int = 64, image_size: int = 256, local_size: int = 128, norm: str = "batch"):
        super().__init__()
        self.global_convs, global_features = _strided_stack(width, image_size, norm)
        self.local_convs, local_features = _strided_stack(width, local_size, norm)
        self.global_fc = nn.Linear(global_features, 1024)
        self.local_fc = nn.Linear(local_features, 1024)
        self.head = nn.Linear(2048, 1)

    def forward(self, image: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        features = torch.cat([F.relu(self.global_fc(self.global_convs(image))),
                              F.relu(self.local_fc(self.local_convs(crop)))], dim=1)
        return self.head(features)


def local_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W), boxes (N, k, 4) x, y, w, h -> (N, C, size, size): a square centred on each
    image's first box, moved inside the image where the box is near an edge."""
    height, width = images.shape[-2:]
    crops = []
    for image, (x, y, w, h) in zip(images, boxes[:, 0].tolist()):
        left = min(max(0, x + w // 2 - size // 2), width - size)
        top = min(max(0, y + h // 2 - size // 2), height - size)
        crops.append(image[:, top:top + size, left:left + size])
    return torch.stack(crops)


def mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """masked: mean squared error over the box pixels; global: over every pixel of the image."""
    if kind == "masked":
        return box_loss(prediction, target, mask, "l2")
    return (prediction.float() - target.float()).square().mean()


class GLCICStep:
    """step(batch, epoch): the phase's updates (completion: G on masked MSE; discriminator: D;
    joint: D, then G on MSE + alpha x adversarial)."""

    def __init__(self, accelerator, config: TrainableConfig, generator, discriminator, opt_g, opt_d):
        self.accelerator, self.loss, self.channels_last = accelerator, config.loss, config.train.channels_last
        self.local_size = config.network.local_size
        self.generator, self.discriminator, self.opt_g, self.opt_d = generator, discriminator, opt_g, opt_d
        # G's adversarial term goes through the bare module: no DDP hooks, no gradients for D
        self.plain_d = accelerator.unwrap_model(discriminator)
        self.gan_loss = GANLoss("vanilla").to(accelerator.device)

    def __call__(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor]:
        acc, loss = self.accelerator, self.loss
        now = phase(epoch, loss)
        filled, mask, target = batch_tensors(batch, self.channels_last)
        boxes = batch["boxes"]
        with acc.autocast(), torch.set_grad_enabled(now != "discriminator"):
            prediction = self.generator(filled, mask)
        composited = prediction * mask + target * (1 - mask)
        logs = {}
        if now != "completion":
            real_crop = local_crops(target, boxes, self.local_size)
            fake_crop = local_crops(composited.detach(), boxes, self.local_size)
            with acc.autocast():  # real and fake in one forward: one backward through DDP
                logits = self.discriminator(torch.cat([target, composited.detach()]), torch.cat([real_crop, fake_crop]))
            real_logits, fake_logits = logits.chunk(2)
            loss_d = self.gan_loss(real_logits, True) + self.gan_loss(fake_logits, False)
            acc.backward(loss_d)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
            logs["loss/d"] = loss_d
        if now == "discriminator":
            return logs
        loss_g = mse(prediction, target, mask, "masked" if now == "completion" else loss.joint_mse)
        logs["loss/mse"] = loss_g
        if now == "joint":
            self.plain_d.requires_grad_(False)  # the graph below then holds no D weight gradients
            with acc.autocast():
                adv_logits = self.plain_d(composited, local_crops(composited, boxes, self.local_size))
            self.plain_d.requires_grad_(True)
            logs["loss/g_adv"] = self.gan_loss(adv_logits, True)
            loss_g = loss_g + loss.alpha * logs["loss/g_adv"]
        acc.backward(loss_g)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        return logs


# ---------------------------------------------------------------------------------------------


class GLCICFamily(Family):
    method = "glcic"
    NetworkParams = NetworkParams
    LossParams = LossParams
    generator_keys = GENERATOR_KEYS

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        net, loss, where = config.network, config.loss, variant.source or variant.name
        choice(variant, "norm", net.norm, NORMS)
        choice(variant, "hole_fill", net.hole_fill, HOLE_FILLS)
        choice(variant, "joint_mse", loss.joint_mse, JOINT_MSE)
        at_least(variant, {"width": net.width, "d_width": net.d_width})
        at_least(variant, {"completion_epochs": loss.completion_epochs,
                           "discriminator_epochs": loss.discriminator_epochs, "alpha": loss.alpha}, minimum=0)
        size = variant.data.image_size
        for key, side in (("local_size", net.local_size), ("image_size", size)):
            if side < 8 or side & (side - 1):
                raise ConfigError(f"{where}: {'params.' if key == 'local_size' else 'data.'}{key}: the discriminators "
                                  f"halve it down to 4x4, so a power of two of at least 8, got {side}")
        if net.local_size > size or net.local_size < variant.data.box_size:
            raise ConfigError(f"{where}: params.local_size: {net.local_size} must hold a {variant.data.box_size}px "
                              f"box and fit the {size}px image")
        if size % 4:
            raise ConfigError(f"{where}: data.image_size: the completion network halves it twice; got {size}")
        if loss.completion_epochs + loss.discriminator_epochs > config.train.epochs:
            raise ConfigError(f"{where}: params.completion_epochs + discriminator_epochs "
                              f"({loss.completion_epochs} + {loss.discriminator_epochs}) exceed params.epochs "
                              f"({config.train.epochs}); the joint phase would never come")

    def hole_fill(self, config: TrainableConfig) -> partial:
        return partial(fill_holes, how=config.network.hole_fill)

    def build_generator(self, config: TrainableConfig) -> CompletionNetwork:
        net = config.network
        return CompletionNetwork(net.width, net.norm, net.residual)

    def build_discriminator(self, config: TrainableConfig) -> ContextDiscriminator:
        net = config.network
        return ContextDiscriminator(net.d_width, config.image_size, net.local_size, net.norm)

    def make_step(self, config, accelerator, nets, optimizers) -> GLCICStep:
        return GLCICStep(accelerator, config, nets["generator"], nets["discriminator"],
                         optimizers["opt_g"], optimizers["opt_d"])

    def generate(self, generator, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return generator(filled, mask)


FAMILY = GLCICFamily()


class GLCICInpainter(TrainedInpainter):
    """A trained completion network, from `params.checkpoint` (default checkpoints/<variant>/best.pt)."""

    family = FAMILY
