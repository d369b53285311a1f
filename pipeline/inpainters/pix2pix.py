"""pix2pix for box inpainting: a U-Net generator, a 70x70 PatchGAN, their objectives, and the
Inpainter that loads a trained checkpoint.

The generator sees the masked photo with its hole pre-filled (`hole_init`: zero, mean, telea,
navier-stokes) plus the mask as a fourth channel, and predicts a residual on top of that fill:
the residual is added before the final tanh, so a zero residual reproduces the fill exactly and
the output stays in -1..1. Only box pixels are kept (the pipeline composites), so the
reconstruction losses are taken over the box pixels alone.

Objectives (`objective`):
    gan  adversarial (`gan_loss`: vanilla or lsgan) + lambda_l1 * L1, the pix2pix recipe
    l1   L1 on the box pixels, no discriminator
    l2   squared error on the box pixels, no discriminator (what RMSE rewards)

Params are flat in the variant YAML (so `--param key=value` reaches each); they fall in three
groups: NetworkParams (must match a checkpoint), TrainParams, InferenceParams.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, VariantConfig, parse_params
from pipeline.data.dataset import to_image, to_tensor
from pipeline.inpainters.base import InpaintBatch, Inpainter

CHECKPOINT_DIR = Path("checkpoints")
OBJECTIVES = ("gan", "l1", "l2")
GAN_LOSSES = ("vanilla", "lsgan")
NORMS = ("batch", "instance", "none")
HOLE_INITS = ("zero", "mean", "telea", "navier-stokes")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class NetworkParams:
    """What the weights depend on: resuming needs all equal, predicting those in GENERATOR_KEYS."""

    ngf: int = 64  # generator width: channels of the first layer (doubling down to ngf * 8)
    depth: int = 8  # down-samplings; 8 takes 256x256 to 1x1 (the paper's U-Net-256)
    norm: str = "batch"  # batch | instance | none
    dropout: bool = True  # dropout 0.5 in the widest decoder layers, as in the paper
    hole_init: str = "telea"  # what fills the hole before the generator: zero|mean|telea|navier-stokes
    ndf: int = 64  # discriminator width (gan objective only)
    d_layers: int = 3  # PatchGAN strided layers; 3 gives the 70x70 receptive field


@dataclass
class TrainParams:
    """How `python -m pipeline train` optimises the networks."""

    objective: str = "gan"  # gan | l1 | l2
    gan_loss: str = "vanilla"  # vanilla (BCE) | lsgan (least squares)
    lambda_l1: float = 100.0  # weight of L1 beside the adversarial term
    epochs: int = 200
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    train_batch_size: int = 1  # per process
    lr: float = 0.0002
    lr_decay: float = 0.5  # the last fraction of the run over which lr falls linearly to 0 (paper: half)
    beta1: float = 0.5
    beta2: float = 0.999
    mixed_precision: str = "no"  # no | bf16 | fp16 (fp16 needs a GPU)
    channels_last: bool = True  # NHWC activations: faster convolutions with bf16 on CPU and on tensor cores
    compile: bool = False  # torch.compile the networks (worth it for long GPU runs)
    num_workers: int = 2  # data loader processes (decode, augment, hole fill)
    threads: int = 0  # torch threads per process on the CPU; 0: its share of the cores minus its workers
    max_minutes: float = 0.0  # stop (validate, save) after this much training time; 0: no limit
    seed: int = 0
    jitter: int = 16  # augmentation: largest pad-and-crop shift, pixels
    flip: float = 0.5  # augmentation: probability of a horizontal flip
    colour: float = 0.5  # augmentation: probability of colour jitter
    jpeg: float = 0.0  # augmentation: probability of JPEG-compressing the masked input, as the
    jpeg_quality_low: int = 60  # competition's masked copies are, at a quality drawn from
    jpeg_quality_high: int = 95  # low..high
    log_every: int = 20  # steps between TensorBoard scalars
    checkpoint_every: int = 200  # steps between last.pt saves (also saved every epoch end)
    val_every: int = 1  # epochs between validations (best.pt is chosen on these)


@dataclass
class InferenceParams:
    """How the trained generator is used by `predict` / `submit`."""

    checkpoint: str = ""  # empty: checkpoints/<variant>/best.pt
    tta_flip: bool = False  # average the prediction with that of the mirrored image


PARAM_GROUPS = (NetworkParams, TrainParams, InferenceParams)


@dataclass
class Pix2PixConfig:
    network: NetworkParams
    train: TrainParams
    inference: InferenceParams


def resolved_params(config: Pix2PixConfig) -> dict[str, Any]:
    """Every param with its default filled in: what a checkpoint stores and is compared on."""
    return {k: v for group in (config.network, config.train, config.inference) for k, v in dataclasses.asdict(group).items()}


# what a generator's weights are trained for: a checkpoint must agree on these to be used
GENERATOR_KEYS = ("ngf", "depth", "norm", "dropout", "hole_init")


def _choice(variant: VariantConfig, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{variant.source or variant.name}: params.{key}: {value!r} is not one of "
                          f"{', '.join(allowed)}")


def pix2pix_config(variant: VariantConfig) -> Pix2PixConfig:
    """Split the variant's flat params into the three typed groups, rejecting unknown keys."""
    fields = {cls: {f.name for f in dataclasses.fields(cls)} for cls in PARAM_GROUPS}
    known = set().union(*fields.values())
    unknown = sorted(set(variant.params) - known)
    if unknown:
        raise ConfigError(f"{variant.source or variant.name}: params: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(known))}")
    groups = [parse_params(cls, {k: v for k, v in variant.params.items() if k in fields[cls]}, variant)
              for cls in PARAM_GROUPS]
    config = Pix2PixConfig(*groups)
    net, train = config.network, config.train
    _choice(variant, "norm", net.norm, NORMS)
    _choice(variant, "hole_init", net.hole_init, HOLE_INITS)
    _choice(variant, "objective", train.objective, OBJECTIVES)
    _choice(variant, "gan_loss", train.gan_loss, GAN_LOSSES)
    _choice(variant, "mixed_precision", train.mixed_precision, MIXED_PRECISION)
    size = variant.data.image_size
    if net.depth < 2 or size % 2**net.depth:
        raise ConfigError(f"{variant.source or variant.name}: params.depth: {net.depth} halvings do not "
                          f"divide the {size}px image evenly; use 2..{int(np.log2(size & -size))}")
    if not 0.0 <= train.lr_decay <= 1.0:
        raise ConfigError(f"{variant.source or variant.name}: params.lr_decay: a fraction 0..1, got {train.lr_decay}")
    if not 0.0 <= train.jpeg <= 1.0:
        raise ConfigError(f"{variant.source or variant.name}: params.jpeg: a probability 0..1, got {train.jpeg}")
    if not 1 <= train.jpeg_quality_low <= train.jpeg_quality_high <= 100:
        raise ConfigError(f"{variant.source or variant.name}: params.jpeg_quality_low/high: need "
                          f"1 <= low <= high <= 100, got {train.jpeg_quality_low}, {train.jpeg_quality_high}")
    counts = {"ngf": net.ngf, "ndf": net.ndf, "d_layers": net.d_layers, "epochs": train.epochs,
              "train_batch_size": train.train_batch_size, "log_every": train.log_every,
              "checkpoint_every": train.checkpoint_every, "val_every": train.val_every}
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{variant.source or variant.name}: params.{key}: must be at least 1, got {value}")
    return config


# ---------------------------------------------------------------------------------------------
# Hole initialisation: uint8 in, uint8 out, so it runs in the data loader's workers


class HoleFill:
    """(masked uint8 HxWx3, bool HxW mask) -> uint8 HxWx3 with the hole filled; picklable, so it
    runs in the loader's worker processes whatever their start method."""

    def __init__(self, name: str):
        if name not in HOLE_INITS:
            raise ValueError(f"hole_init {name!r} is not one of {', '.join(HOLE_INITS)}")
        self.name = name

    def __call__(self, masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.name in ("telea", "navier-stokes"):
            flag = cv2.INPAINT_TELEA if self.name == "telea" else cv2.INPAINT_NS
            return cv2.inpaint(masked, mask.astype(np.uint8), 5.0, flag)
        out = masked.copy()
        if self.name == "zero":
            out[mask] = 128  # 0 on the model's -1..1 scale: the canonical pix2pix input
        else:  # mean colour of the known pixels
            out[mask] = np.round(masked[~mask].mean(axis=0)).astype(np.uint8)
        return out


# ---------------------------------------------------------------------------------------------
# Networks


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


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
    Returns float (N, 3, H, W) in -1..1.
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 3, ngf: int = 64, depth: int = 8,
                 norm: str = "batch", dropout: bool = True):
        super().__init__()
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
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[-1](skips.pop())
        for up in reversed(self.ups[:-1]):
            x = up(torch.cat([x, skips.pop()], dim=1))
        # residual in tanh's input space: zero residual -> the fill; always inside -1..1
        base = torch.atanh(fill.float().clamp(-0.999, 0.999))
        return torch.tanh(base + x.float())


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


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The paper's init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def build_generator(net: NetworkParams) -> UNetGenerator:
    model = UNetGenerator(4, 3, net.ngf, net.depth, net.norm, net.dropout)
    init_weights(model)
    return model


def build_discriminator(net: NetworkParams) -> PatchDiscriminator:
    # conditioned on the generator's input (filled image + mask) beside the 3-channel candidate
    model = PatchDiscriminator(4 + 3, net.ndf, net.d_layers, net.norm)
    init_weights(model)
    return model


# ---------------------------------------------------------------------------------------------
# Objectives (all tensors float, NCHW; mask (N, 1, H, W) with 1 in the boxes)


def generator_input(masked_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) filled masked image in -1..1 + (N, 1, H, W) mask -> (N, 4, H, W)."""
    return torch.cat([masked_image, mask], dim=1)


def box_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (l1) or squared (l2) error over the box pixels only."""
    diff = (prediction.float() - target.float()) * mask
    values = diff.abs() if kind == "l1" else diff.square()
    return values.sum() / (mask.sum() * prediction.shape[1]).clamp_min(1.0)


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """Adversarial loss of PatchGAN logits against an all-real or all-fake label."""
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


# ---------------------------------------------------------------------------------------------
# Inference


def default_checkpoint(variant_name: str) -> Path:
    return CHECKPOINT_DIR / variant_name / "best.pt"


def load_generator(path: Path, variant: VariantConfig, config: Pix2PixConfig) -> UNetGenerator:
    """The generator saved in checkpoint `path`, after checking it was trained with the network
    `variant` describes; CheckpointError (naming the file and the differing keys) otherwise."""
    from pipeline.checkpoint import check_same_config, load_state_dict, read_checkpoint

    state = read_checkpoint(path, hint=f"Train it with `make train VARIANT={variant.name}`, or pass "
                                       "CKPT=<file> (--param checkpoint=<file>)")
    check_same_config(path, state, variant, resolved_params(config), GENERATOR_KEYS, "generator")
    generator = build_generator(config.network)
    load_state_dict(path, generator, state["generator"], "generator")
    return generator


class Pix2PixInpainter(Inpainter):
    """A trained generator, from `params.checkpoint` (default checkpoints/<variant>/best.pt)."""

    def __init__(self, generator: UNetGenerator, hole_init: str, tta_flip: bool = False,
                 device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.generator = generator.to(self.device).eval()
        self.fill = HoleFill(hole_init)
        self.tta_flip = tta_flip

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "Pix2PixInpainter":
        config = pix2pix_config(variant)
        path = Path(config.inference.checkpoint or default_checkpoint(variant.name))
        generator = load_generator(path, variant, config)
        return cls(generator, config.network.hole_init, config.inference.tta_flip)

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Before any prediction: the params are valid and the checkpoint loads into this network."""
        config = pix2pix_config(variant)
        load_generator(Path(config.inference.checkpoint or default_checkpoint(variant.name)), variant, config)

    @torch.inference_mode()
    def predict(self, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """filled (N, 3, H, W) in -1..1, mask (N, 1, H, W) -> prediction (N, 3, H, W) in -1..1."""
        prediction = self.generator(generator_input(filled, mask), filled)
        if self.tta_flip:
            flipped = self.generator(generator_input(filled.flip(-1), mask.flip(-1)), filled.flip(-1))
            prediction = (prediction + flipped.flip(-1)) / 2
        return prediction

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        filled = torch.stack([to_tensor(self.fill(image, mask))
                              for image, mask in zip(batch.masked_images, batch.masks)])
        mask = torch.from_numpy(batch.masks[:, None].astype(np.float32))
        prediction = self.predict(filled.to(self.device), mask.to(self.device))
        return to_image(prediction)
