"""`python -m pipeline train`: the training loop of the trainable inpainters, on HF Accelerate.

The same code runs on the CPU, one GPU, and several GPUs or nodes (`accelerate launch -m pipeline
train ...`): Accelerate places the networks and batches, wraps them for data parallelism and
applies the config's mixed precision; files and logs are written by the main process only.

    checkpoints/<variant>/last.pt   the whole run state, saved every `checkpoint_every` steps and
                                    at every epoch end: `--resume` continues from it
    checkpoints/<variant>/best.pt   the generator with the best validation RMSE so far
    runs/<variant>/                 TensorBoard: losses, validation RMSE, image grids

Every random draw comes from the seed: batch order from (seed, epoch), boxes and augmentation from
(seed, epoch, index), dropout from the torch RNG saved in the checkpoint. A resumed run skips
exactly the batches already done, so it ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipeline.checkpoint import (CheckpointError, check_same_config, load_state_dict, read_checkpoint,
                                 save_checkpoint)
from pipeline.config import ConfigError, VariantConfig
from pipeline.data.competition import load_competition
from pipeline.data.dataset import AugmentConfig, BoxInpaintingDataset, to_image
from pipeline.inpainters import pix2pix as p2p

RUNS_DIR = Path("runs")
TRAINABLE = ("pix2pix",)
# params that may change between a run and its resumption; any other difference is another run
RESUMABLE_CHANGES = ("epochs", "max_steps", "max_minutes", "num_workers", "threads", "log_every",
                     "checkpoint_every", "val_every", "checkpoint", "tta_flip", "compile")
GRID_IMAGES = 4  # validation images shown in TensorBoard


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    best_val_rmse: float | None  # 0..1 scale, on the fixed validation boxes
    last_val_rmse: float | None
    seconds: float
    best: Path
    last: Path
    run_dir: Path
    is_main_process: bool = True


# ---------------------------------------------------------------------------------------------
# Data: the epoch travels with each index, so persistent workers draw that epoch's boxes


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation of range(n) fixed by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, 7, self.epoch]).permutation(self.n)  # 7: apart from the boxes' streams
        return iter([(self.epoch, int(i)) for i in order])


class EpochDataset(Dataset):
    """Items of a BoxInpaintingDataset addressed by (epoch, index)."""

    def __init__(self, dataset: BoxInpaintingDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # each worker is one core's worth of work; OpenCV's pool would oversubscribe


# ---------------------------------------------------------------------------------------------
# One optimisation step: the body of the loop (and what benchmarks/train_step.py times)


class Pix2PixStep:
    """One step of the configured objective on a batch, through `accelerator` (precision, DDP).

    The batch is the loader's dict on the device: masked_image (the hole already filled), mask
    and target, float NCHW. Returns the step's losses (0-dim tensors) by TensorBoard tag.
    """

    def __init__(self, accelerator, hp: p2p.TrainParams, generator, opt_g, discriminator=None, opt_d=None):
        self.accelerator, self.hp = accelerator, hp
        self.generator, self.opt_g = generator, opt_g
        self.discriminator, self.opt_d = discriminator, opt_d
        # G's adversarial term goes through the bare module: no DDP hooks, no gradients for D
        self.plain_d = accelerator.unwrap_model(discriminator) if discriminator is not None else None

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.opt_g, self.opt_d):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = lr

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        acc, hp = self.accelerator, self.hp
        filled, mask, target = batch["masked_image"], batch["mask"], batch["target"]
        if hp.channels_last:  # activations follow the input's layout; weights stay contiguous for the fused step
            filled, mask, target = (t.contiguous(memory_format=torch.channels_last) for t in (filled, mask, target))
        g_input = p2p.generator_input(filled, mask)
        with acc.autocast():
            prediction = self.generator(g_input, filled)
        if self.discriminator is None:  # l1 / l2: reconstruction of the box pixels only
            loss_g = p2p.box_loss(prediction, target, mask, hp.objective)
            logs = {f"loss/box_{hp.objective}": loss_g}
        else:
            # the pipeline keeps only box pixels, so D judges the photo with generated boxes pasted in
            composited = prediction * mask + target * (1 - mask)
            with acc.no_sync(self.discriminator):  # summed locally, synced by the second backward
                with acc.autocast():
                    real_logits = self.discriminator(torch.cat([g_input, target], dim=1))
                acc.backward(0.5 * p2p.gan_loss(real_logits, True, hp.gan_loss))
            with acc.autocast():
                fake_logits = self.discriminator(torch.cat([g_input, composited.detach()], dim=1))
            loss_fake = p2p.gan_loss(fake_logits, False, hp.gan_loss)
            acc.backward(0.5 * loss_fake)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)

            self.plain_d.requires_grad_(False)  # the graph below then holds no D weight gradients
            with acc.autocast():
                adv_logits = self.plain_d(torch.cat([g_input, composited], dim=1))
            self.plain_d.requires_grad_(True)
            loss_adv = p2p.gan_loss(adv_logits, True, hp.gan_loss)
            loss_l1 = p2p.box_loss(prediction, target, mask, "l1")
            loss_g = loss_adv + hp.lambda_l1 * loss_l1
            logs = {"loss/d_fake": loss_fake, "loss/g_adv": loss_adv, "loss/box_l1": loss_l1}
        acc.backward(loss_g)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        return logs


# ---------------------------------------------------------------------------------------------
# RNG states, as tensors and plain numbers so checkpoints load with weights_only=True


def rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Validation: RMSE on the fixed validation boxes, computed exactly as `score` does (uint8 pixels)


@torch.no_grad()
def validate(generator, loader, accelerator, grid_images: int = 0) -> tuple[float, np.ndarray | None]:
    """(RMSE on the 0..1 scale over all box pixels, uint8 grid image or None).

    Runs in fp32 and eval mode, so it matches what `submit` scores from best.pt.
    """
    generator.eval()
    sse, count, grid_rows = [], [], []
    for batch in loader:
        filled, mask, target = batch["masked_image"], batch["mask"], batch["target"]
        prediction = generator(p2p.generator_input(filled, mask), filled)
        composited = torch.where(mask.bool(), prediction.float(), target)
        diff = (to_image(composited).astype(np.float64) - to_image(target).astype(np.float64))
        per_image = torch.tensor(np.square(diff).sum(axis=(1, 2, 3)), device=mask.device)
        sse.append(accelerator.gather_for_metrics(per_image))
        count.append(accelerator.gather_for_metrics(mask.sum(dim=(1, 2, 3)) * 3))
        if len(grid_rows) < grid_images:
            masked = torch.where(mask.bool(), -1.0, target)  # what a test image shows
            for columns in zip(*(to_image(t) for t in (masked, filled, composited, target))):
                grid_rows.append(np.concatenate(columns, axis=1))
    generator.train()
    total_sse = torch.cat(sse).double().sum().item()
    total_count = torch.cat(count).double().sum().item()
    grid = np.concatenate(grid_rows[:grid_images], axis=0) if grid_rows else None
    return math.sqrt(total_sse / total_count) / 255.0, grid


# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, total_steps: int, decay: float) -> float:
    """1 until the last `decay` fraction of the run, then linearly down to 0 at total_steps."""
    decay_steps = decay * total_steps
    if decay_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, (total_steps - step) / decay_steps))


def cpu_threads(requested: int, workers: int, local_processes: int) -> int:
    """Torch threads for one training process on the CPU: its share of the cores, less one per
    loader worker, since a thread that waits on a busy core stalls all the others at each op."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local_processes - workers)


def _any(accelerator, flag: bool) -> bool:
    """True on every process if `flag` is True on any (a no-op for one process)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())


def _checkpoint_config(variant: VariantConfig, params: dict[str, Any]) -> dict[str, Any]:
    config = variant.to_dict()
    config["params"] = params
    return config


def _mixed_precision(requested: str) -> tuple[str, str | None]:
    """The precision this machine can run, and a note when it differs from the config's."""
    if requested == "fp16" and not torch.cuda.is_available():
        return "no", "fp16 needs a GPU; training in fp32"
    if requested == "bf16" and not torch.cuda.is_available() and not torch.backends.mkldnn.is_available():
        return "no", "this CPU build has no oneDNN for bf16; training in fp32"
    if requested == "bf16" and not torch.cuda.is_available() and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "no", "this CPU has no native bf16 (avx512_bf16 / AMX); training in fp32"
    return requested, None


def _accelerator(precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process; a single process may train variants in turn
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()
    # cpu=True on a machine without an accelerator lets torchrun / accelerate launch run several CPU processes (gloo)
    cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return Accelerator(mixed_precision=precision, cpu=cpu)


def train(
    variant: VariantConfig,
    resume: bool = False,
    restart: bool = False,
    epochs: int | None = None,
    max_steps: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `variant` (a trainable method) on its competition's training split.

    resume: continue checkpoints/<variant>/last.pt. restart: start over, deleting that run's
    checkpoints and TensorBoard folder. Neither, with a last.pt present: CheckpointError.
    epochs / max_steps / num_workers override the variant's params for this run.
    """
    from accelerate.utils import gather_object, set_seed

    if resume and restart:
        raise ConfigError("--resume continues the last run, --restart replaces it: pass one of them")
    if variant.method not in TRAINABLE:
        raise ConfigError(f"{variant.source or variant.name}: method {variant.method!r} is not trainable; "
                          f"trainable methods: {', '.join(TRAINABLE)}")
    overrides = {"epochs": epochs, "max_steps": max_steps, "num_workers": num_workers}
    variant = dataclasses.replace(variant, params={**variant.params, **{k: v for k, v in overrides.items() if v is not None}})
    config = p2p.pix2pix_config(variant)
    net, hp = config.network, config.train
    params = p2p.resolved_params(config)
    ckpt_dir = p2p.CHECKPOINT_DIR / variant.name
    last_path, best_path, run_dir = ckpt_dir / "last.pt", ckpt_dir / "best.pt", RUNS_DIR / variant.name

    # --- check everything that can be wrong before a single file is touched
    state = None
    if resume:
        state = read_checkpoint(last_path, hint="Nothing to resume: train without --resume first.")
        resumable = [k for k in params if k not in RESUMABLE_CHANGES]
        check_same_config(last_path, state, variant, params, resumable, "training setup")
    elif last_path.exists() and not restart:
        raise CheckpointError(f"{last_path} exists from an earlier run: pass --resume (make train RESUME=1) "
                              "to continue it, or --restart (make train RESTART=1) to replace it")
    competition = load_competition(variant.data)
    if not competition.val:
        raise ConfigError(f"{variant.source or variant.name}: data.val_count is 0; training needs the "
                          "validation split to choose best.pt")
    if len(competition.train) < hp.train_batch_size:
        raise ConfigError(f"{competition.root}: {len(competition.train)} training images, fewer than "
                          f"params.train_batch_size={hp.train_batch_size}")

    precision, note = _mixed_precision(hp.mixed_precision)
    accelerator = _accelerator(precision)
    main = accelerator.is_main_process
    if note and main:
        print(f"note: {note}")
    set_seed(hp.seed)
    if accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(cpu_threads(hp.threads, hp.num_workers, local))
    torch.backends.cudnn.benchmark = True

    # --- data
    fill = p2p.HoleFill(net.hole_init)
    augment = AugmentConfig(jitter=hp.jitter, flip=hp.flip, colour=hp.colour, jpeg=hp.jpeg,
                            jpeg_quality=(hp.jpeg_quality_low, hp.jpeg_quality_high))
    train_set = BoxInpaintingDataset(competition.train, variant.data, augment, fill, seed=hp.seed)
    sampler = EpochSampler(len(train_set), hp.seed)
    workers = hp.num_workers
    loader = DataLoader(
        EpochDataset(train_set), batch_size=hp.train_batch_size, sampler=sampler, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init, prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(hp.seed),  # keeps the loader's seed draw off the global RNG
    )
    val_set = BoxInpaintingDataset(competition.val, variant.data, None, fill)
    val_loader = DataLoader(val_set, batch_size=variant.batch_size, num_workers=min(workers, 1),
                            generator=torch.Generator().manual_seed(hp.seed))

    # --- networks and optimisers
    generator = p2p.build_generator(net)
    gan = hp.objective == "gan"
    discriminator = p2p.build_discriminator(net) if gan else None
    adam = dict(lr=hp.lr, betas=(hp.beta1, hp.beta2), fused=True)  # one pass over the weights, not six
    opt_g = torch.optim.Adam(generator.parameters(), **adam)
    opt_d = torch.optim.Adam(discriminator.parameters(), **adam) if gan else None
    step, epoch, batches_done, best_rmse, last_rmse = 0, 0, 0, math.inf, None
    if state is not None:
        load_state_dict(last_path, generator, state["generator"], "generator")
        opt_g.load_state_dict(state["opt_g"])
        if gan:
            load_state_dict(last_path, discriminator, state["discriminator"], "discriminator")
            opt_d.load_state_dict(state["opt_d"])
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        best_rmse = state["best_val_rmse"] if state["best_val_rmse"] is not None else math.inf
        last_rmse = state["last_val_rmse"]
    if gan:
        generator, discriminator, opt_g, opt_d, loader, val_loader = accelerator.prepare(
            generator, discriminator, opt_g, opt_d, loader, val_loader)
    else:
        generator, opt_g, loader, val_loader = accelerator.prepare(generator, opt_g, loader, val_loader)
    # prepare() autocasts every forward; undo that so the loop's autocast blocks are the only ones
    # and validation runs in fp32 like `submit`
    for model in (generator, discriminator) if gan else (generator,):
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if hp.compile:  # after DDP wrapping, as torch.compile wants it
        generator = torch.compile(generator)
        discriminator = torch.compile(discriminator) if gan else None
    step_fn = Pix2PixStep(accelerator, hp, generator, opt_g, discriminator, opt_d)
    if state is not None:
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == accelerator.num_processes:
            set_rng_state(rngs[accelerator.process_index])
        elif main:
            print(f"note: {last_path} was saved by {len(rngs)} process(es), this run has "
                  f"{accelerator.num_processes}: dropout draws restart from the seed")

    steps_per_epoch = len(loader)
    total_steps = hp.epochs * steps_per_epoch
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)

    def save(path: Path, full: bool) -> None:
        """best.pt holds the generator; last.pt everything a resumed run needs."""
        rngs = gather_object([rng_state()]) if full else None  # every process's dropout stream
        if not main:
            return
        checkpoint = {"config": _checkpoint_config(variant, params), "step": step, "epoch": epoch,
                      "batches_done": batches_done, "last_val_rmse": last_rmse,
                      "best_val_rmse": None if math.isinf(best_rmse) else best_rmse,
                      "generator": accelerator.unwrap_model(generator, keep_torch_compile=False).state_dict()}
        if full:
            checkpoint.update(opt_g=opt_g.state_dict(), rng=rngs,
                              scaler=accelerator.scaler.state_dict() if accelerator.scaler else None)
            if gan:
                checkpoint.update(discriminator=accelerator.unwrap_model(discriminator, keep_torch_compile=False).state_dict(),
                                  opt_d=opt_d.state_dict())
        save_checkpoint(path, checkpoint)

    writer = None
    if main:
        if restart:
            shutil.rmtree(run_dir, ignore_errors=True)
            for path in (last_path, best_path):
                path.unlink(missing_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops what a killed run logged after its last checkpoint
        writer = SummaryWriter(str(run_dir), purge_step=step if state is not None else None)
        print(f"training {variant.name}: {len(train_set)} images, {steps_per_epoch} steps/epoch x "
              f"{hp.epochs} epochs" + (f" (max {hp.max_steps} steps)" if hp.max_steps else "")
              + f", {accelerator.num_processes} process(es) on {accelerator.device}, precision {precision}"
              + (f", resuming at step {step}" if state is not None else ""))

    def run_validation() -> None:
        nonlocal best_rmse, last_rmse
        last_rmse, grid = validate(generator, val_loader, accelerator, GRID_IMAGES if main else 0)
        if main:
            writer.add_scalar("val/rmse", last_rmse, step)
            if grid is not None:
                writer.add_image("val/masked|fill|prediction|truth", grid, step, dataformats="HWC")
        if last_rmse < best_rmse:
            best_rmse = last_rmse
            save(best_path, full=False)

    # --- the loop
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {variant.name}", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    window_start, window_images = time.perf_counter(), 0
    validated_at = step if state is not None else -1
    out_of_time = False
    while step < total_steps:
        loader.set_epoch(epoch)  # the prepared loader hands the epoch to our sampler
        batches = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
        if batches_done:
            batches.set_epoch(epoch)
        for batch in batches:
            lr = hp.lr * lr_factor(step, total_steps, hp.lr_decay)  # from the step alone: resumes exactly
            step_fn.set_lr(lr)
            logs = step_fn(batch)

            step += 1
            batches_done += 1
            window_images += batch["target"].shape[0] * accelerator.num_processes
            bar.update(1)
            if step % hp.log_every == 0 or step == total_steps:
                values = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in logs.items()}
                if main:
                    elapsed = time.perf_counter() - window_start
                    for key, value in values.items():
                        writer.add_scalar(key, value, step)
                    writer.add_scalar("time/images_per_s", window_images / elapsed, step)
                    writer.add_scalar("lr", lr, step)
                    bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in values.items()}
                                    | ({"val": f"{last_rmse:.4f}"} if last_rmse is not None else {}))
                window_start, window_images = time.perf_counter(), 0
            if hp.max_minutes and not out_of_time and time.perf_counter() - started > 60 * hp.max_minutes:
                out_of_time = True  # checked on every process alike below, so all stop at the same step
            if step >= total_steps or (hp.max_minutes and _any(accelerator, out_of_time)):
                break
            if step % hp.checkpoint_every == 0:
                save(last_path, full=True)
        if out_of_time:
            if main:
                tqdm.write(f"stopping at step {step}: params.max_minutes={hp.max_minutes} reached")
            break
        if batches_done == steps_per_epoch:  # a whole epoch: validate, then move the position on
            if (epoch + 1) % hp.val_every == 0 or step >= total_steps:
                run_validation()
                validated_at = step
            epoch, batches_done = epoch + 1, 0
            save(last_path, full=True)
    if validated_at != step:  # stopped mid-epoch (max_steps): score where it stopped
        run_validation()
        save(last_path, full=True)
    bar.close()
    accelerator.wait_for_everyone()
    if main:
        writer.add_hparams({k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))},
                           {"hparam/best_val_rmse": best_rmse}, run_name=".")
        writer.close()
    accelerator.end_training()
    return TrainResult(step, epoch, None if math.isinf(best_rmse) else best_rmse, last_rmse,
                       time.perf_counter() - started, best_path, last_path, run_dir, main)
