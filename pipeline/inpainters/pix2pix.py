"""pix2pix for box inpainting: a U-Net generator, a 70x70 PatchGAN, their objectives, and the
Inpainter that loads a trained checkpoint.

The generator sees the masked photo with its hole pre-filled (`hole_fill`: zero, mean, telea,
navier-stokes; fill.py) plus the mask as a fourth channel, and predicts a residual on top of that
fill: the residual is added before the final tanh, so a zero residual reproduces the fill exactly
and the output stays in -1..1. Only box pixels are kept (the pipeline composites), so the
reconstruction losses are taken over the box pixels alone.

Objectives (`objective`):
    gan  adversarial (`gan_loss`: vanilla or lsgan) + lambda_l1 * L1, the pix2pix recipe
    l1   L1 on the box pixels, no discriminator
    l2   squared error on the box pixels, no discriminator (what RMSE rewards)

Params are flat in the variant YAML (so `--param key=value` reaches each): NetworkParams (must
match a checkpoint) and LossParams here, TrainParams and InferenceParams shared by every trainable
family (pipeline/inpainters/trainable.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from functools import partial

import numpy as np
import torch
from torch import nn

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters.blocks import NORMS, generator_input, init_weights, norm_layer, residual_on_fill
from pipeline.inpainters.fill import DEVICE_FILLS, HOLE_FILLS, fill_holes, onion_fill
from pipeline.inpainters.losses import GAN_LOSSES, GANLoss, box_loss
from pipeline.inpainters.trainable import (Family, TrainableConfig, TrainedInpainter, at_least, batch_tensors,
                                           choice)

OBJECTIVES = ("gan", "l1", "l2")


@dataclass
class NetworkParams:
    """What the weights depend on: resuming needs all equal, predicting those in GENERATOR_KEYS."""

    ngf: int = 64  # generator width: channels of the first layer (doubling down to ngf * 8)
    depth: int = 8  # down-samplings; 8 takes 256x256 to 1x1 (the paper's U-Net-256)
    norm: str = "batch"  # batch | instance | none
    dropout: bool = True  # dropout 0.5 in the widest decoder layers, as in the paper
    hole_fill: str = "telea"  # what fills the hole before the generator: one of fill.HOLE_FILLS (onion: on the device)
    ndf: int = 64  # discriminator width (gan objective only)
    d_layers: int = 3  # PatchGAN strided layers; 3 gives the 70x70 receptive field


@dataclass
class LossParams:
    """pix2pix's objective."""

    objective: str = "gan"  # gan | l1 | l2
    gan_loss: str = "vanilla"  # vanilla (BCE) | lsgan (least squares)
    lambda_l1: float = 100.0  # weight of L1 beside the adversarial term


# what a generator's weights are trained for: a checkpoint must agree on these to be used
GENERATOR_KEYS = ("ngf", "depth", "norm", "dropout", "hole_fill")


def pix2pix_config(variant: VariantConfig) -> TrainableConfig:
    """The variant's params in their typed groups (network, loss, train, inference), checked."""
    return FAMILY.config(variant)


# ---------------------------------------------------------------------------------------------
# Networks (the pieces other families share are in blocks.py)


class Down(nn.Sequential):
    """Encoder step: [LeakyReLU 0.2] -> 4x4 stride-2 conv -> [norm]; halves H and W."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, outermost: bool = False,
                 innermost: bool = False):
        # a bias before batch norm is cancelled by the mean subtraction
        with_norm = not (outermost or innermost) and norm != "none"
        layers = [] if outermost else [nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=not (with_norm and norm == "batch")))
        if with_norm:
            layers.append(norm_layer(norm, out_channels))
        super().__init__(*layers)


class Up(nn.Sequential):
    """Decoder step: ReLU -> 4x4 stride-2 transposed conv -> [norm] -> [dropout 0.5]; doubles H, W."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, outermost: bool = False,
                 dropout: bool = False):
        with_norm = not outermost and norm != "none"
        layers = [nn.ReLU(inplace=True),
                  nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=not (with_norm and norm == "batch"))]
        if with_norm:
            layers.append(norm_layer(norm, out_channels))
        if dropout:
            layers.append(nn.Dropout(0.5))
        super().__init__(*layers)


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: `depth` Down steps, mirrored Up steps, each Up fed its Down's output.

    forward(x, fill): x float (N, in_channels, H, W) -- the filled masked image in -1..1 and the
    mask in 0..1; fill float (N, 3, H, W) in -1..1, the hole fill the residual is added to.
    Returns float (N, 3, H, W) in -1..1. With `device_fill` (a name of fill.DEVICE_FILLS) the boxes
    come unfilled and the network fills them first, on the batch's device, in float32: training,
    validation and prediction all go through here, so they see the same fill.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 3, ngf: int = 64, depth: int = 8,
                 norm: str = "batch", dropout: bool = True, device_fill: str | None = None):
        super().__init__()
        if device_fill is not None and device_fill not in DEVICE_FILLS:
            raise ValueError(f"device_fill {device_fill!r} is not one of {', '.join(DEVICE_FILLS)}")
        self.device_fill = device_fill
        widths = [min(ngf * 2**i, ngf * 8) for i in range(depth)]
        self.downs = nn.ModuleList(
            [Down(in_channels, widths[0], norm, outermost=True)]
            + [Down(widths[i - 1], widths[i], norm, innermost=i == depth - 1) for i in range(1, depth)]
        )
        # Up i undoes Down i; all but the innermost also take Down i's output through the skip
        ups = [Up(2 * widths[0], out_channels, norm, outermost=True)]
        for i in range(1, depth):
            in_ch = widths[i] if i == depth - 1 else 2 * widths[i]
            # the paper's dropout: the decoder layers that stay at the full ngf * 8 width
            capped = widths[i] == widths[i - 1] == ngf * 8 and i < depth - 1
            ups.append(Up(in_ch, widths[i - 1], norm, dropout=dropout and capped))
        self.ups = nn.ModuleList(ups)

    def forward(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        if self.device_fill is not None:
            x, fill = self.fill_boxes(x)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[-1](skips.pop())
        for up in reversed(self.ups[:-1]):
            x = up(torch.cat([x, skips.pop()], dim=1))
        return residual_on_fill(fill, x)


    def fill_boxes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4, H, W) unfilled image + mask -> (the same with the boxes filled, the fill (N, 3, H, W))."""
        mask = x[:, 3:]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):  # a fixed input transform
            filled = onion_fill(x[:, :3], mask > 0.5).to(x.dtype)
        return torch.cat([filled, mask], dim=1), filled


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN: (N, in_channels, H, W) -> (N, 1, H', W') real/fake logits per patch."""

    def __init__(self, in_channels: int, ndf: int = 64, layers: int = 3, norm: str = "batch"):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = ndf
        for i in range(1, layers + 1):
            out = ndf * min(2**i, 8)
            stride = 2 if i < layers else 1  # the last one keeps the size, widening the field to 70
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=norm != "batch"), norm_layer(norm, out),
                       nn.LeakyReLU(0.2, inplace=True)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_generator(net: NetworkParams) -> UNetGenerator:
    device_fill = net.hole_fill if net.hole_fill in DEVICE_FILLS else None
    model = UNetGenerator(4, 3, net.ngf, net.depth, net.norm, net.dropout, device_fill)
    init_weights(model)
    return model


def build_discriminator(net: NetworkParams) -> PatchDiscriminator:
    # conditioned on the generator's input (filled image + mask) beside the 3-channel candidate
    model = PatchDiscriminator(4 + 3, net.ndf, net.d_layers, net.norm)
    init_weights(model)
    return model


# ---------------------------------------------------------------------------------------------
# The step (objectives in losses.py; tensors float NCHW, mask (N, 1, H, W) with 1 in the boxes)


class Pix2PixStep:
    """One step of the configured objective on a batch, through `accelerator` (precision, DDP).

    step(batch, epoch): the batch is the loader's dict on the device: model_input (the hole
    already filled), mask and target, float NCHW. Returns the step's losses (0-dim tensors) by
    TensorBoard tag.
    """

    def __init__(self, accelerator, config: TrainableConfig, generator, opt_g, discriminator=None, opt_d=None):
        self.accelerator, self.loss, self.channels_last = accelerator, config.loss, config.train.channels_last
        self.generator, self.opt_g = generator, opt_g
        self.discriminator, self.opt_d = discriminator, opt_d
        self.gan_loss = GANLoss(config.loss.gan_loss).to(accelerator.device)
        # G's adversarial term goes through the bare module: no DDP hooks, no gradients for D
        self.plain_d = accelerator.unwrap_model(discriminator) if discriminator is not None else None

    def __call__(self, batch: dict[str, torch.Tensor], epoch: int = 0) -> dict[str, torch.Tensor]:
        acc, loss = self.accelerator, self.loss
        filled, mask, target = batch_tensors(batch, self.channels_last)
        g_input = generator_input(filled, mask)
        with acc.autocast():
            prediction = self.generator(g_input, filled)
        if self.discriminator is None:  # l1 / l2: reconstruction of the box pixels only
            loss_g = box_loss(prediction, target, mask, loss.objective)
            logs = {f"loss/box_{loss.objective}": loss_g}
        else:
            # the pipeline keeps only box pixels, so D judges the photo with generated boxes pasted in
            composited = prediction * mask + target * (1 - mask)
            with acc.no_sync(self.discriminator):  # summed locally, synced by the second backward
                with acc.autocast():
                    real_logits = self.discriminator(torch.cat([g_input, target], dim=1))
                acc.backward(0.5 * self.gan_loss(real_logits, True))
            with acc.autocast():
                fake_logits = self.discriminator(torch.cat([g_input, composited.detach()], dim=1))
            loss_fake = self.gan_loss(fake_logits, False)
            acc.backward(0.5 * loss_fake)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)

            self.plain_d.requires_grad_(False)  # the graph below then holds no D weight gradients
            with acc.autocast():
                adv_logits = self.plain_d(torch.cat([g_input, composited], dim=1))
            self.plain_d.requires_grad_(True)
            loss_adv = self.gan_loss(adv_logits, True)
            loss_l1 = box_loss(prediction, target, mask, "l1")
            loss_g = loss_adv + loss.lambda_l1 * loss_l1
            logs = {"loss/d_fake": loss_fake, "loss/g_adv": loss_adv, "loss/box_l1": loss_l1}
        acc.backward(loss_g)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        return logs


# ---------------------------------------------------------------------------------------------
# The family: what the shared trainer and the inpainter need


class Pix2PixFamily(Family):
    method = "pix2pix"
    NetworkParams = NetworkParams
    LossParams = LossParams
    generator_keys = GENERATOR_KEYS

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        net, loss = config.network, config.loss
        choice(variant, "norm", net.norm, NORMS)
        choice(variant, "hole_fill", net.hole_fill, HOLE_FILLS)
        choice(variant, "objective", loss.objective, OBJECTIVES)
        choice(variant, "gan_loss", loss.gan_loss, GAN_LOSSES)
        size = variant.data.image_size
        if net.depth < 2 or size % 2**net.depth:
            raise ConfigError(f"{variant.source or variant.name}: params.depth: {net.depth} halvings do not "
                              f"divide the {size}px image evenly; use 2..{int(np.log2(size & -size))}")
        at_least(variant, {"ngf": net.ngf, "ndf": net.ndf, "d_layers": net.d_layers})

    def hole_fill(self, config: TrainableConfig) -> partial | None:
        if config.network.hole_fill in DEVICE_FILLS:  # the generator fills the boxes itself (forward)
            return None
        return partial(fill_holes, how=config.network.hole_fill)

    def build_generator(self, config: TrainableConfig) -> UNetGenerator:
        return build_generator(config.network)

    def build_discriminator(self, config: TrainableConfig) -> PatchDiscriminator | None:
        return build_discriminator(config.network) if config.loss.objective == "gan" else None

    def make_step(self, config, accelerator, nets, optimizers) -> Pix2PixStep:
        return Pix2PixStep(accelerator, config, nets["generator"], optimizers["opt_g"],
                           nets.get("discriminator"), optimizers.get("opt_d"))

    def generate(self, generator, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return generator(generator_input(filled, mask), filled)


FAMILY = Pix2PixFamily()


class Pix2PixInpainter(TrainedInpainter):
    """A trained pix2pix generator, from `params.checkpoint` (default checkpoints/<variant>/best.pt)."""

    family = FAMILY
