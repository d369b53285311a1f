"""Pretrained inpainters from one TorchScript file: LaMa ("big-lama.pt") and MI-GAN
("migan_traced.pt") as IOPaint serves them, zero-shot or fine-tuned on the shared trainer.

params: weights (the .pt file), convention (how the file is called), zero_shot (predict with the
file's own parameters; else with checkpoints/<variant>/best.pt, trained from them).

The conventions are IOPaint's (iopaint/model/lama.py, mi_gan.py, base.py, helper.py):

    lama   model(image, mask): image float (N, 3, H, W) RGB 0..1, mask (N, 1, H, W) 1 = hole;
           H and W padded to a multiple of 8 (pad_mod 8) and the output cropped back; the output
           is RGB on 0..1 (IOPaint multiplies it by 255 and clips: it is not 0..255)
    migan  model(cat([0.5 - mask, image * (1 - mask)])): one (N, 4, 512, 512) input, the image on
           -1..1, 1 = hole; a smaller photo is padded to 512 x 512 (pad_mod 512, min_size 512,
           square), not enlarged, and cropped back; the output is RGB on -1..1

Padding is IOPaint's: at the bottom and the right, mirrored with the edge pixel repeated (numpy's
"symmetric"). One difference: IOPaint casts LaMa's output to uint8 by truncation, this pipeline
rounds (`to_image`), half a grey level nearer on average.

Fine-tuning: the file's parameters are the start, the loss is L2 (or L1) on the box pixels, and
batch norm keeps its running statistics: the published files were traced in eval mode, so their
batch norm layers always use the stored statistics (tracing bakes training=False into the graph),
and a scripted file's are held in eval mode here too.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config import ConfigError, VariantConfig
from pipeline.inpainters.losses import box_loss
from pipeline.inpainters.trainable import (Family, TrainableConfig, TrainedInpainter, batch_tensors, choice,
                                           load_generator, load_trained)

OBJECTIVES = ("l2", "l1")
BATCH_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")


# ---------------------------------------------------------------------------------------------
# The conventions: how each file is called (tensors on 0..1 in and out, padding around the call)


class Convention:
    """How a file is called: its input constraints as class attributes (IOPaint's), `call` maps
    image (N, 3, H, W) RGB 0..1 and mask (N, 1, H, W) 1 = hole, already padded, to RGB 0..1."""

    name = ""
    pad_mod = 8
    min_size: int | None = None
    pad_to_square = False
    out_range = (0.0, 1.0)  # what the file returns, before it is mapped to 0..1

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        out_h, out_w = (-(-side // self.pad_mod) * self.pad_mod for side in (height, width))
        if self.min_size:
            out_h, out_w = max(out_h, self.min_size), max(out_w, self.min_size)
        if self.pad_to_square:
            out_h = out_w = max(out_h, out_w)
        return out_h, out_w

    def raw(self, model, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The file's own output, on `out_range`."""
        raise NotImplementedError

    def call(self, model, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        low, high = self.out_range
        return (self.raw(model, image, mask) - low) / (high - low)


class LamaConvention(Convention):
    name, pad_mod = "lama", 8

    def raw(self, model, image, mask):
        return model(image, mask)


class MiganConvention(Convention):
    name, pad_mod, min_size, pad_to_square = "migan", 512, 512, True
    out_range = (-1.0, 1.0)

    def raw(self, model, image, mask):
        image = image * 2 - 1
        return model(torch.cat([0.5 - mask, image * (1 - mask)], dim=1))


CONVENTIONS = {c.name: c() for c in (LamaConvention, MiganConvention)}


def symmetric_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x (..., h, w) extended to (..., height, width) at the bottom and the right by mirroring
    with the edge repeated (numpy.pad mode="symmetric", any amount)."""
    def index(size: int, out: int) -> torch.Tensor:
        i = torch.arange(out, device=x.device) % (2 * size)
        return torch.where(i < size, i, 2 * size - 1 - i)

    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    return x.index_select(-2, index(h, height)).index_select(-1, index(w, width))


class TorchScriptNet(nn.Module):
    """A TorchScript inpainter behind one call: forward(image, mask) -> prediction, all at the
    photo's size: image float (N, 3, H, W) RGB 0..1, mask (N, 1, H, W) 1 = hole -> RGB 0..1
    (not clipped). Its state dict is the file's parameters under `model.`."""

    def __init__(self, model: torch.jit.ScriptModule, convention: str):
        super().__init__()
        self.model = model
        self.convention = CONVENTIONS[convention]

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        size = self.convention.padded_size(height, width)
        out = self.convention.call(self.model, symmetric_pad(image, *size), symmetric_pad(mask, *size))
        return out[..., :height, :width]

    def train(self, mode: bool = True) -> "TorchScriptNet":
        """Training mode everywhere but in batch norm, whose running statistics stay the file's."""
        super().train(mode)
        for module in self.model.modules():
            if getattr(module, "original_name", type(module).__name__) in BATCH_NORMS:
                module.train(False)
        return self


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The TorchScript module in `path` (on the CPU, eval mode); ConfigError when it is not one."""
    try:
        with warnings.catch_warnings():  # torch 2.9 calls torch.jit deprecated; IOPaint's files are TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # a zip of another kind, a state dict, a truncated download
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a TorchScript file (torch.jit.load: {first}); the pretrained inpainters "
                          "are the traced .pt files IOPaint loads, not state dicts or checkpoints") from None


# ---------------------------------------------------------------------------------------------
# Checks before any work


def missing_weights(variant: VariantConfig, path: Path) -> ConfigError:
    """The error for an absent weights file: how to get it (download, or a Kaggle dataset)."""
    from pipeline.next_step import NextStep
    from pipeline.weights import published_for

    published = published_for(path)
    get = (f"download it with `{NextStep('weights', {'name': published.name})}`" if published
           else "copy the TorchScript file there")
    return ConfigError(f"{path}: no such file (params.weights of {variant.source or variant.name}); {get}. "
                       f"In a Kaggle notebook without internet, attach the file as a dataset and point at it: "
                       f"--param weights=/kaggle/input/<dataset>/{path.name}")


def check_checksum(path: Path) -> None:
    """A warning (not an error) when a published file's MD5 is not the published one."""
    from pipeline.weights import md5sum, published_for

    published = published_for(path)
    if published is None:
        return
    found = md5sum(path)
    if found != published.md5:
        print(f"warning: {path}: md5 {found} is not the published {published.md5} ({published.url}); "
              "using it anyway", file=sys.stderr)


@torch.inference_mode()
def check_blank_call(path: Path, net: TorchScriptNet, size: int) -> None:
    """One call on a blank grey image with a hole in the middle: the shape and range must be the
    convention's (a file called with the wrong convention usually fails here)."""
    image = torch.full((1, 3, size, size), 0.5)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    image = image * (1 - mask)
    try:
        out = net.eval()(image, mask)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: calling it with the {net.convention.name} convention failed ({first}); "
                          f"is params.convention right?") from None
    if tuple(out.shape) != (1, 3, size, size):
        raise ConfigError(f"{path}: returned shape {tuple(out.shape)} for a {size}x{size} photo with the "
                          f"{net.convention.name} convention, expected (1, 3, {size}, {size})")
    low, high = net.convention.out_range
    slack = 0.1  # a little overshoot is normal; the prediction is clipped
    if not torch.isfinite(out).all() or out.min() < -slack or out.max() > 1 + slack:
        raise ConfigError(f"{path}: returned values outside {low}..{high} on a blank image "
                          f"(the {net.convention.name} convention's range); is params.convention right?")


# ---------------------------------------------------------------------------------------------
# The family: params, networks, the step


@dataclass
class NetworkParams:
    weights: str = ""  # the TorchScript file: weights/big-lama.pt, weights/migan_traced.pt
    convention: str = "lama"  # lama | migan: how the file is called (see the module docstring)
    zero_shot: bool = False  # predict with the file's own parameters (no checkpoint, not trainable)


@dataclass
class LossParams:
    objective: str = "l2"  # l2 (what RMSE rewards) | l1, over the box pixels


# a checkpoint holds the file's parameters: it fits any file of the same convention and shapes
GENERATOR_KEYS = ("convention",)


class TorchScriptStep:
    """One optimiser step on the box loss; step(batch, epoch) -> {TensorBoard tag: loss}."""

    def __init__(self, accelerator, config: TrainableConfig, generator, optimizer):
        self.accelerator, self.generator, self.optimizer = accelerator, generator, optimizer
        self.objective, self.channels_last = config.loss.objective, config.train.channels_last

    def __call__(self, batch: dict[str, torch.Tensor], epoch: int = 0) -> dict[str, torch.Tensor]:
        acc = self.accelerator
        filled, mask, target = batch_tensors(batch, self.channels_last)
        with acc.autocast():
            prediction = FAMILY.generate(self.generator, filled, mask)
        loss = box_loss(prediction, target, mask, self.objective)
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {f"loss/box_{self.objective}": loss}


class TorchScriptFamily(Family):
    method = "torchscript"
    NetworkParams = NetworkParams
    LossParams = LossParams
    generator_keys = GENERATOR_KEYS

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        net = config.network
        if not net.weights:
            raise ConfigError(f"{variant.source or variant.name}: params.weights: the TorchScript file "
                              "(weights/big-lama.pt, weights/migan_traced.pt) is required")
        choice(variant, "convention", net.convention, tuple(CONVENTIONS))
        choice(variant, "objective", config.loss.objective, OBJECTIVES)

    def check_trainable(self, variant: VariantConfig, config: TrainableConfig) -> None:
        if config.network.zero_shot:
            raise ConfigError(f"{variant.source or variant.name}: params.zero_shot is true: this variant predicts "
                              "with the file's own parameters; train a variant with zero_shot: false "
                              "(configs/lama-ft.yaml)")

    def build_generator(self, config: TrainableConfig) -> TorchScriptNet:
        path = Path(config.network.weights)
        model = load_torchscript(path)
        for parameter in model.parameters():  # ScriptModules have no requires_grad_()
            parameter.requires_grad_(True)
        return TorchScriptNet(model, config.network.convention)

    def make_step(self, config, accelerator, nets, optimizers) -> TorchScriptStep:
        return TorchScriptStep(accelerator, config, nets["generator"], optimizers["opt_g"])

    def generate(self, generator, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # the loader's -1..1 to the net's 0..1 and back; the boxes hold black (-1), as in a test image
        return generator((filled + 1) / 2, mask) * 2 - 1


FAMILY = TorchScriptFamily()


class TorchScriptInpainter(TrainedInpainter):
    """A TorchScript inpainter: the file's parameters (zero_shot) or a fine-tuned checkpoint
    (`params.checkpoint`, default checkpoints/<variant>/best.pt)."""

    family = FAMILY

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "TorchScriptInpainter":
        config = FAMILY.config(variant)
        if config.network.zero_shot:
            return cls(FAMILY.build_generator(config), config)
        generator, facts = load_trained(FAMILY, variant, config)
        return cls(generator, config, run_facts=facts)

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Before any work: the file exists, is TorchScript, has the published checksum (else a
        warning), answers a blank image with the convention's shape and range; a fine-tuned
        variant's checkpoint loads into it."""
        config = FAMILY.config(variant)
        path = Path(config.network.weights)
        if not path.is_file():
            raise missing_weights(variant, path)
        check_checksum(path)
        if config.network.zero_shot:
            net = FAMILY.build_generator(config)
        else:
            net = load_generator(FAMILY, variant, config)
        check_blank_call(path, net, variant.data.image_size)
