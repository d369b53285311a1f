"""What a trainable family supplies to the shared trainer (pipeline/train.py), the settings every
family shares, and the Inpainter that predicts with a trained generator.

A family (pix2pix.py, pconv.py, glcic.py, torchscript.py) is a `Family` subclass:

    NetworkParams, LossParams   its own params (dataclasses); the network's must match a checkpoint
    generator_keys              the params a best.pt must agree on to be loaded for prediction
    hole_fill(config)           what fills the boxes before the networks see them (in the loader)
    check_trainable(variant, config)  training's own checks (torchscript: a zero_shot variant refuses)
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

from pipeline.config import (CHECKED, ConfigError, Fraction, NonNegative, Positive, VariantConfig, param_where,
                             parse_params)
from pipeline.data.dataset import to_image, to_tensor
from pipeline.devices import execution_device
from pipeline.inpainters.base import InpaintBatch, Inpainter
from pipeline.inpainters.samples import mean_image, seed_for
from pipeline.inpainters.tta import averaged

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
    # batches whose gradients add up to one optimizer step (the batch an update sees:
    # train_batch_size x grad_accum_steps x processes); steps, schedule and logs count updates
    grad_accum_steps: Positive = 1
    lr: float = 0.0002
    lr_decay: Fraction = 0.5  # the last fraction of the run over which lr falls linearly to 0 (pix2pix: half)
    beta1: float = 0.5
    beta2: float = 0.999
    # auto: bf16 where the device has it natively, fp16 + loss scaler on other CUDA GPUs, else fp32
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "no"
    channels_last: bool = True  # NHWC activations: faster convolutions with bf16 on CPU and on tensor cores
    compile: bool = False  # torch.compile the networks (worth it for long GPU runs)
    # data loader processes (decode, augment, hole fill); auto: this process's share of the cores
    # less one for itself
    num_workers: NonNegative | Literal["auto"] = 2
    threads: NonNegative = 0  # torch threads per process on the CPU; 0: its share of the cores minus its workers
    # stop (validate, save) after this much training time; 0: no limit
    max_minutes: Annotated[float, pydantic.Field(ge=0)] = 0.0
    seed: int = 0
    # only deterministic kernels, no cuDNN autotuning: a GPU run resumed ends as it would have
    # uninterrupted (the CPU always does); slower, how much depends on the model and GPU
    deterministic: bool = False
    jitter: int = 16  # augmentation: largest pad-and-crop shift, pixels
    flip: Fraction = 0.5  # augmentation: probability of a horizontal flip
    colour: Fraction = 0.5  # augmentation: probability of colour jitter
    jpeg: Fraction = 0.0  # augmentation: probability of JPEG-compressing the masked input, as the
    jpeg_quality_low: JpegQuality = 60  # competition's masked copies are, at a quality drawn from
    jpeg_quality_high: JpegQuality = 95  # low..high
    # where the scalars go, through accelerate's trackers: comma-separated, of tensorboard (runs/<variant>/),
    # mlflow (MLFLOW_TRACKING_URI), wandb (WANDB_MODE=offline keeps it on this machine)
    trackers: str = "tensorboard"
    log_every: Positive = 20  # steps between logged scalars
    checkpoint_every: Positive = 200  # steps between last.pt saves (also saved every epoch end)
    val_every: Positive = 1  # epochs between validations (best.pt is chosen on these)


@pydantic.dataclasses.dataclass(config=CHECKED)
class InferenceParams:
    """How the trained generator is used by `predict` / `submit`."""

    checkpoint: str = ""  # empty: checkpoints/<variant>/best.pt
    # none | flip | d4: the prediction averaged over a mirror / the 8 flips and rotations (tta.py)
    tta: Literal["none", "flip", "d4"] = "none"
    mc_dropout: bool = False  # keep dropout on at inference: each prediction is a sample (needs dropout layers)
    samples: Positive = 1  # with mc_dropout: the mean of this many samples per image, sample k seeded (sample_seed + k, image id)
    sample_seed: int = 0


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
        if "tta_flip" in variant.params:  # renamed when d4 came: say so rather than "unknown key"
            raise ConfigError(f"{param_where(variant, 'tta_flip')}: replaced by params.tta: none | flip | d4 "
                              "(tta_flip: true is tta: flip, false is tta: none)")
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
        if config.inference.samples > 1 and not config.inference.mc_dropout:
            raise ConfigError(f"{param_where(variant, 'samples')}: {config.inference.samples} samples of a deterministic "
                              "network are all the same; set mc_dropout: true (a network with dropout) or samples: 1")
        self.check(variant, config)
        return config

    def check(self, variant: VariantConfig, config: TrainableConfig) -> None:
        """The family's own checks of its params (raise ConfigError naming the key)."""

    def check_trainable(self, variant: VariantConfig, config: TrainableConfig) -> None:
        """Checks only training needs (a variant that predicts without training refuses here)."""

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
    return load_trained(family, variant, config)[0]


def load_trained(family: Family, variant: VariantConfig, config: TrainableConfig) -> tuple[nn.Module, dict[str, Any]]:
    """(load_generator's generator, the facts of the run that trained it: checkpoint.run_facts)."""
    from pipeline.checkpoint import check_same_config, load_state_dict, read_checkpoint, run_facts
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
    return generator, run_facts(path, state)


def dropout_layers(family: Family, generator: nn.Module) -> list[nn.Module]:
    """The generator's dropout layers, what `mc_dropout` samples; ConfigError when it has none."""
    layers = [m for m in generator.modules() if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))]
    if not layers:
        raise ConfigError(f"params.mc_dropout: this {family.method} generator has no dropout layers "
                          "(pix2pix: dropout: true), so there is nothing to sample")
    return layers


class TrainedInpainter(Inpainter):
    """A family's trained generator, from `params.checkpoint` (default checkpoints/<variant>/best.pt).

    Subclasses set `family`. On several processes each one's model sits on its own device.
    `tta` averages each prediction over flips / rotations (tta.py); `mc_dropout` keeps dropout
    on, one seeded sample per image, or the mean of `samples` of them (samples.py).
    """

    family: Family

    def __init__(self, generator: nn.Module, config: TrainableConfig, device: torch.device | None = None,
                 run_facts: dict[str, Any] | None = None):
        self.run_facts = run_facts or {}  # the checkpoint's training run (leaderboard columns); {}: none
        self.device = device or execution_device()
        self.generator = generator.to(self.device).eval()
        self.fill = self.family.hole_fill(config)
        self.inference = dataclasses.replace(config.inference)  # its own copy: settings fixed at construction
        if self.inference.mc_dropout:
            for module in dropout_layers(self.family, self.generator):
                module.train()  # the rest stays in eval mode (normalisation statistics fixed)

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "TrainedInpainter":
        config = cls.family.config(variant)
        generator, facts = load_trained(cls.family, variant, config)
        return cls(generator, config, run_facts=facts)

    @classmethod
    def check_params(cls, variant: VariantConfig) -> None:
        cls.family.config(variant)

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Before any prediction: the params are valid and the checkpoint loads into this network."""
        config = cls.family.config(variant)
        generator = load_generator(cls.family, variant, config)
        if config.inference.mc_dropout:
            dropout_layers(cls.family, generator)

    @torch.inference_mode()
    def predict(self, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """filled (N, 3, H, W) in -1..1, mask (N, 1, H, W) -> prediction (N, 3, H, W) in -1..1."""
        return averaged(lambda image, holes: self.family.generate(self.generator, image, holes), filled, mask,
                        self.inference.tta)

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        images = batch.masked_images if self.fill is None else [
            self.fill(image, mask) for image, mask in zip(batch.masked_images, batch.masks)]
        filled = torch.stack([to_tensor(image) for image in images])
        mask = torch.from_numpy(batch.masks[:, None].astype(np.float32))
        filled, mask = filled.to(self.device), mask.to(self.device)
        if not self.inference.mc_dropout:
            return to_image(self.predict(filled, mask))
        # image by image, so that a sample's dropout masks depend on its seed, not on its batch
        seed, samples = self.inference.sample_seed, range(self.inference.samples)
        return np.stack([
            mean_image([self._sample(filled[i:i + 1], mask[i:i + 1], seed_for(seed + k, image_id)) for k in samples])
            for i, image_id in enumerate(batch.image_ids)])

    def _sample(self, filled: torch.Tensor, mask: torch.Tensor, seed: int) -> np.ndarray:
        """One prediction of one image with dropout masks drawn from `seed`; uint8 (H, W, 3)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
            torch.manual_seed(seed)
            return to_image(self.predict(filled, mask))[0]
