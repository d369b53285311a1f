"""What a trainable family supplies to the shared trainer (pipeline/train.py), the settings every
family shares, and the Inpainter that predicts with a trained generator.

A family (pix2pix.py, pconv.py, glcic.py) is a `Family` subclass:

    NetworkParams, LossParams   its own params (dataclasses); the network's must match a checkpoint
    generator_keys              the params a best.pt must agree on to be loaded for prediction
    hole_fill(config)           what fills the boxes before the networks see them (in the loader)
    build(config)               its networks by name: {"generator": ..., ["discriminator": ...]}
    make_step(config, acc, nets, opts)  the step function: step(batch, epoch) trains on one batch
                                 and returns its losses by tag
    generate(generator, filled, mask)  the prediction, float (N, 3, H, W) in -1..1

Params are flat in the variant YAML (so `--param key=value` reaches each) and fall in four groups:
the family's NetworkParams and LossParams, and the shared TrainParams and InferenceParams (pydantic
checks each value's type and bounds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
import pydantic
import torch
from torch import nn

from pipeline.config import CHECKED, ConfigError, Fraction, NonNegative, Positive, VariantConfig, parse_params
from pipeline.data.dataset import to_image, to_tensor
from pipeline.devices import execution_device
from pipeline.inpainters.base import InpaintBatch, Inpainter

CHECKPOINT_DIR = Path("checkpoints")
# checkpoint key of each network's optimizer (the names pix2pix checkpoints have always used)
OPTIMIZER_KEYS = {"generator": "opt_g", "discriminator": "opt_d"}
JpegQuality = Annotated[int, pydantic.Field(ge=1, le=100)]


@pydantic.dataclasses.dataclass(config=CHECKED)
class TrainParams:
    """How `python -m pipeline train` optimises a family's networks (every family has these)."""

    epochs: Positive = 200  # the learning-rate schedule spans them all, whatever max_steps says
    max_steps: NonNegative = 0  # stop after this many optimiser steps (0: run all epochs)
    train_batch_size: Positive = 1  # per process
    lr: float = 0.0002
    lr_decay: Fraction = 0.5  # the last fraction of the run over which lr falls linearly to 0 (pix2pix: half)
    beta1: float = 0.5
    beta2: float = 0.999
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # fp16 needs a GPU
    channels_last: bool = True  # NHWC activations: faster convolutions with bf16 on CPU and on tensor cores
    compile: bool = False  # torch.compile the networks (worth it for long GPU runs)
    # data loader processes (decode, augment, hole fill); auto: this process's share of the cores
    # less one for itself
    num_workers: NonNegative | Literal["auto"] = 2
    threads: NonNegative = 0  # torch threads per process on the CPU; 0: its share of the cores minus its workers
    # stop (validate, save) after this much training time; 0: no limit
    max_minutes: Annotated[float, pydantic.Field(ge=0)] = 0.0
    seed: int = 0
    jitter: int = 16  # augmentation: largest pad-and-crop shift, pixels
    flip: Fraction = 0.5  # augmentation: probability of a horizontal flip
    colour: Fraction = 0.5  # augmentation: probability of colour jitter
    jpeg: Fraction = 0.0  # augmentation: probability of JPEG-compressing the masked input, as the
    jpeg_quality_low: JpegQuality = 60  # competition's masked copies are, at a quality drawn from
    jpeg_quality_high: JpegQuality = 95  # low..high
    log_every: Positive = 20  # steps between TensorBoard scalars
    checkpoint_every: Positive = 200  # steps between last.pt saves (also saved every epoch end)
    val_every: Positive = 1  # epochs between validations (best.pt is chosen on these)


@pydantic.dataclasses.dataclass(config=CHECKED)
class InferenceParams:
    """How the trained generator is used by `predict` / `submit`."""

    checkpoint: str = ""  # empty: checkpoints/<variant>/best.pt
    tta_flip: bool = False  # average the prediction with that of the mirrored image


@dataclass
class TrainableConfig:
    """A trainable variant's params, parsed and checked, in their four groups."""

    network: Any
    loss: Any
    train: TrainParams
    inference: InferenceParams
    image_size: int = 256  # the variant's data.image_size (networks sized by it)

    def params(self) -> dict[str, Any]:
        """Every param with its default filled in: what a checkpoint stores and is compared on."""
        groups = (self.network, self.loss, self.train, self.inference)
        return {k: v for group in groups for k, v in dataclasses.asdict(group).items()}


def choice(variant: VariantConfig, key: str, value: str, allowed: tuple[str, ...]) -> None:
    """ConfigError naming the file and `params.<key>` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{variant.source or variant.name}: params.{key}: {value!r} is not one of "
                          f"{', '.join(allowed)}")


def at_least(variant: VariantConfig, values: dict[str, float], minimum: float = 1) -> None:
    """ConfigError naming the file and the first `params.<key>` below `minimum`."""
    for key, value in values.items():
        if value < minimum:
            raise ConfigError(f"{variant.source or variant.name}: params.{key}: must be at least {minimum}, got {value}")


class Family:
    """A trainable inpainting method as the trainer sees it; subclasses fill in the hooks."""

    method: str = ""
    NetworkParams: type = object
    LossParams: type = object
    generator_keys: tuple[str, ...] = ()

    # --- config

    def config(self, variant: VariantConfig) -> TrainableConfig:
        """Split the variant's flat params into the four typed groups, rejecting unknown keys."""
        classes = (self.NetworkParams, self.LossParams, TrainParams, InferenceParams)
        fields = [{f.name for f in dataclasses.fields(cls)} for cls in classes]
        known = set().union(*fields)
        unknown = sorted(set(variant.params) - known)
        if unknown:
            raise ConfigError(f"{variant.source or variant.name}: params: unknown key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(known))}")
        config = TrainableConfig(*[parse_params(cls, {k: v for k, v in variant.params.items() if k in names}, variant)
                                   for cls, names in zip(classes, fields)], image_size=variant.data.image_size)
        train = config.train
        if train.jpeg_quality_low > train.jpeg_quality_high:
            raise ConfigError(f"{variant.source or variant.name}: params.jpeg_quality_low/high: need "
                              f"1 <= low <= high <= 100, got {train.jpeg_quality_low}, {train.jpeg_quality_high}")
        self.check(variant, config)
        return config

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        """The family's own checks of its params (raise ConfigError naming the key)."""

    # --- what the trainer calls

    def hole_fill(self, config: TrainableConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """(masked uint8 HxWx3, bool HxW mask) -> uint8 HxWx3, run in the loader; None: boxes stay black."""
        return None

    def build_generator(self, config: TrainableConfig) -> nn.Module:
        raise NotImplementedError

    def build_discriminator(self, config: TrainableConfig) -> nn.Module | None:
        return None

    def build(self, config: TrainableConfig) -> dict[str, nn.Module]:
        """The networks by checkpoint key, the generator first."""
        nets = {"generator": self.build_generator(config)}
        discriminator = self.build_discriminator(config)
        if discriminator is not None:
            nets["discriminator"] = discriminator
        return nets

    def optimizers(self, config: TrainableConfig, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Adam for each network, by checkpoint key (opt_g, opt_d)."""
        hp = config.train
        # fused: one pass over the weights, not six
        return {OPTIMIZER_KEYS.get(name, f"opt_{name}"): torch.optim.Adam(
                    net.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2), fused=True)
                for name, net in nets.items()}

    def make_step(self, config: TrainableConfig, accelerator, nets: dict[str, nn.Module],
                  optimizers: dict[str, torch.optim.Optimizer]) -> Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]]:
        """The family's step function, built once per run: step(batch, epoch) optimises the networks
        on one batch and returns {TensorBoard tag: 0-dim loss}.

        The batch is the loader's dict on the device: model_input (the hole filled by
        `hole_fill`), mask (1 in the boxes), target, float NCHW; boxes (N, boxes, 4) x, y, w, h.
        """
        raise NotImplementedError

    def generate(self, generator: nn.Module, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """filled (N, 3, H, W) in -1..1 (boxes hold the hole fill), mask (N, 1, H, W) 1 in the boxes
        -> prediction (N, 3, H, W), in -1..1 up to the rounding of to_image."""
        raise NotImplementedError


def batch_tensors(batch: dict[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, ...]:
    """(filled, mask, target) of a loader batch; NHWC memory when `channels_last` (activations
    follow the input's layout, weights stay contiguous for the fused step)."""
    tensors = batch["model_input"], batch["mask"], batch["target"]
    if channels_last:
        tensors = tuple(t.contiguous(memory_format=torch.channels_last) for t in tensors)
    return tensors


def set_lr(optimizers: dict[str, torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# Inference


def default_checkpoint(variant_name: str) -> Path:
    return CHECKPOINT_DIR / variant_name / "best.pt"


def load_generator(family: Family, variant: VariantConfig, config: TrainableConfig) -> nn.Module:
    """The generator of the checkpoint `config.inference.checkpoint` (default: the variant's
    best.pt), after checking it was trained with the network `variant` describes;
    CheckpointError (naming the file and the differing keys) otherwise."""
    from pipeline.checkpoint import check_same_config, load_state_dict, read_checkpoint
    from pipeline.next_step import NextStep

    named = bool(config.inference.checkpoint)
    path = Path(config.inference.checkpoint or default_checkpoint(variant.name))
    train = NextStep("train", {"variant": variant.name})
    other = NextStep("submit", {"variant": variant.name, "param": "checkpoint=<file>"})
    hint = f"Train the variant with `{train}`." if named else f"Train it with `{train}`, or use another: `{other}`."
    state = read_checkpoint(path, hint=hint, named_by_user=named)
    check_same_config(path, state, variant, config.params(), family.generator_keys, "generator")
    generator = family.build_generator(config)
    load_state_dict(path, generator, state["generator"], "generator")
    return generator


class TrainedInpainter(Inpainter):
    """A family's trained generator, from `params.checkpoint` (default checkpoints/<variant>/best.pt).

    Subclasses set `family`. On several processes each one's model sits on its own device.
    """

    family: Family

    def __init__(self, generator: nn.Module, config: TrainableConfig, device: torch.device | None = None):
        self.device = device or execution_device()
        self.generator = generator.to(self.device).eval()
        self.fill = self.family.hole_fill(config)
        self.tta_flip = config.inference.tta_flip

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "TrainedInpainter":
        config = cls.family.config(variant)
        return cls(load_generator(cls.family, variant, config), config)

    @classmethod
    def check_params(cls, variant: VariantConfig) -> None:
        cls.family.config(variant)

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Before any prediction: the params are valid and the checkpoint loads into this network."""
        load_generator(cls.family, variant, cls.family.config(variant))

    @torch.inference_mode()
    def predict(self, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """filled (N, 3, H, W) in -1..1, mask (N, 1, H, W) -> prediction (N, 3, H, W) in -1..1."""
        prediction = self.family.generate(self.generator, filled, mask)
        if self.tta_flip:
            flipped = self.family.generate(self.generator, filled.flip(-1), mask.flip(-1))
            prediction = (prediction + flipped.flip(-1)) / 2
        return prediction

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        images = batch.masked_images if self.fill is None else [
            self.fill(image, mask) for image, mask in zip(batch.masked_images, batch.masks)]
        filled = torch.stack([to_tensor(image) for image in images])
        mask = torch.from_numpy(batch.masks[:, None].astype(np.float32))
        prediction = self.predict(filled.to(self.device), mask.to(self.device))
        return to_image(prediction)
