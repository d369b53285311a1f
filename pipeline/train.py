"""`python -m pipeline train`: one training loop for every trainable family, on HF Accelerate,
the same on the CPU, one GPU or several. A family (pipeline/inpainters/trainable.py) brings its
networks, losses and step; this module brings data, precision, checkpoints, exact resume,
TensorBoard (and MLflow or W&B where named) through accelerate's trackers, validation and the
best checkpoint.

Scalar tags, the same in every tracker: loss/<name> (the family's losses), lr, time/images_per_s
(every log_every steps), val/rmse (each validation); TensorBoard also holds the image grid
val/masked|fill|prediction|truth, the text `precision` and hparams with hparam/best_val_rmse.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipeline.checkpoint import (UNFINISHED, CheckpointError, check_same_config, load_state_dict, read_checkpoint,
                                 save_checkpoint, source_version, stamp_run_facts)
from pipeline.config import ConfigError, VariantConfig
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, read_image
from pipeline.data.dataset import AugmentConfig, BoxInpaintingDataset, to_image
from pipeline.devices import describe, execution_device, native_bf16
from pipeline.inpainters.base import inpainter_class
from pipeline.inpainters.trainable import CHECKPOINT_DIR, Family, TrainableConfig, set_lr

RUNS_DIR = Path("runs")
TRAINABLE = ("pix2pix", "pconv", "glcic", "torchscript")
# params that may change between a run and its resumption; any other difference is another run
RESUMABLE_CHANGES = ("epochs", "max_steps", "max_minutes", "num_workers", "threads", "log_every",
                     "checkpoint_every", "val_every", "checkpoint", "tta", "mc_dropout", "samples",
                     "sample_seed", "compile", "deterministic", "trackers")
GRID_IMAGES = 4  # validation images shown in TensorBoard
# params.trackers' names (accelerate's): the module it imports, and what to install for it
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb")}


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    best_val_rmse: float | None  # 0..1 scale, on the fixed validation boxes
    last_val_rmse: float | None
    seconds: float
    stop_reason: str  # finished | max_steps | max_minutes (train.stop_reason)
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


def check_training_images(records: list[ImageRecord], size: int, progress: bool = True) -> None:
    """Decode every training and validation photo (threads: OpenCV releases the GIL) so that a
    damaged file stops the run here, naming it, and not in the first batch of a loader worker."""
    def problem(record: ImageRecord) -> str | None:
        try:
            read_image(record.path, size)
        except CompetitionError as exc:
            return str(exc)
        return None

    local_main = os.environ.get("LOCAL_RANK", "0") == "0"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = [p for p in tqdm(pool.map(problem, records), total=len(records), desc="decode check",
                                    unit="img", disable=not (progress and local_main), leave=False) if p]
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CompetitionError(
            f"{len(problems)} training image(s) cannot be decoded (truncated or damaged):\n  {shown}\n"
            "Replace them (download the competition again) or delete them, then train again; "
            "no checkpoint or log was touched")


# ---------------------------------------------------------------------------------------------
# RNG states, as tensors and plain numbers so checkpoints load with weights_only=True


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random streams: Python's, NumPy's, torch's CPU generator and, on a CUDA
    `device`, that one GPU's generator (not every visible GPU's: a run may resume on fewer)."""
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `state` (from rng_state); its CUDA stream goes onto this process's CUDA `device`
    (none on the CPU). Older checkpoints hold every visible GPU's stream: the device's own is taken."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # torch.cuda.get_rng_state_all() of an older checkpoint
        index = (device.index or 0) if device is not None else 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def own_rng_state(saved: dict[int, dict] | list[dict], rank: int, processes: int) -> tuple[dict | None, str | None]:
    """(this process's state among those a checkpoint saved, keyed by rank, or None; a note when
    the checkpoint was saved by another number of processes).

    Resumed on fewer processes, rank r continues rank r's streams and the others' end; on more,
    the new ranks keep the streams seeded for them (seed + rank). Either way the data is split
    another way, so such a run is not the uninterrupted one, only a sensible continuation.
    """
    states = dict(enumerate(saved)) if isinstance(saved, list) else saved  # a list: older checkpoints
    note = None
    if len(states) != processes:
        kept = min(len(states), processes)
        note = (f"saved by {len(states)} process(es), this run has {processes}: ranks 0..{kept - 1} continue "
                f"their saved random streams" + (f", ranks {kept}..{processes - 1} start from the seed"
                                                 if processes > kept else ""))
    return states.get(rank), note


# ---------------------------------------------------------------------------------------------
# Validation: RMSE on the fixed validation boxes, computed exactly as `score` does (uint8 pixels)


@torch.no_grad()
def validate(family: Family, generator, loader, accelerator, grid_images: int = 0) -> tuple[float, np.ndarray | None]:
    """(RMSE on the 0..1 scale over all box pixels, uint8 grid image or None).

    Runs in fp32 and eval mode, so it matches what `submit` scores from best.pt.
    """
    generator.eval()
    sse, count, grid_rows = [], [], []
    for batch in loader:
        filled, mask, target = batch["model_input"], batch["mask"], batch["target"]
        prediction = family.generate(generator, filled, mask)
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
# Small pieces of the setup


def lr_factor(step: int, total_steps: int, decay: float) -> float:
    """1 until the last `decay` fraction of the run, then linearly down to 0 at total_steps."""
    decay_steps = decay * total_steps
    if decay_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, (total_steps - step) / decay_steps))


def _cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads(requested: int, workers: int, local_processes: int) -> int:
    """Torch threads for one training process on the CPU: its share of the cores, less one per
    loader worker, since a thread that waits on a busy core stalls all the others at each op."""
    if requested:
        return requested
    return max(1, _cores() // local_processes - workers)


def loader_workers(requested: int | str, local_processes: int) -> int:
    """Loader processes for one training process: `requested`, or for "auto" its share of the
    cores less one for the process itself (4 Kaggle cores, one GPU: 3 workers)."""
    if requested != "auto":
        return int(requested)
    return max(0, _cores() // local_processes - 1)


def _local_processes(accelerator) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def _any(accelerator, flag: bool) -> bool:
    """True on every process if `flag` is True on any (a no-op for one process)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())


def choose_precision(requested: str, device: torch.device, where: str) -> tuple[str, str]:
    """(the precision to train in: no / bf16 / fp16, why) for params.mixed_precision `requested` on
    `device`. auto: bf16 where the device has it natively, fp16 with a loss scaler on a CUDA GPU
    without it, else fp32. `where` (the config file) starts the ConfigError for bf16 on a GPU
    that only emulates it."""
    native = native_bf16(device)
    if requested == "auto":
        if native:
            return "bf16", f"auto: {describe(device)} has native bf16"
        if device.type == "cuda":
            return "fp16", f"auto: {describe(device)} has no native bf16; fp16 with a loss scaler"
        return "no", f"auto: {describe(device)} has no native bf16 (avx512_bf16 / AMX on a CPU); fp32"
    if requested == "bf16" and not native and device.type == "cuda":
        raise ConfigError(f"{where}: params.mixed_precision: bf16: {describe(device)} has no native bf16 "
                          "(compute capability 8.0 and up has), so bf16 would run emulated, slower than fp32; "
                          "use auto (here: fp16 with a loss scaler), fp16, or no (fp32)")
    if requested == "bf16" and not native and device.type == "cpu":
        return "no", "this CPU has no native bf16 (avx512_bf16 / AMX); training in fp32 instead of bf16"
    if requested == "fp16" and device.type == "cpu":
        return "fp16", ("as configured: fp16 autocast with a loss scaler on the CPU "
                        "(slower than bf16 or fp32; for tests)")
    return requested, "as configured"


class StepScaler(torch.amp.GradScaler):
    """fp16's loss scaler, changing its scale only once every optimizer has stepped (`step_done`).

    accelerate calls update() after each optimizer's step; with two (GAN) and accumulated
    gradients, the generator's earlier micro-batches would then be unscaled by a scale that the
    discriminator's step changed after their backward.
    """

    def update(self, new_scale=None) -> None:
        if new_scale is not None:
            super().update(new_scale)

    def step_done(self) -> None:
        super().update()


def _accelerator(precision: str, grad_accum_steps: int = 1, log_with: list[str] | None = None):
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import GradientAccumulationPlugin

    # accelerate keeps one precision per process; a single process may train variants in turn
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != precision and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()
    # cpu=True on a machine without an accelerator lets torchrun / accelerate launch run several CPU processes (gloo)
    cpu = execution_device(per_process=False).type == "cpu"
    # the trainer feeds whole groups of batches, so accelerate need not close a group at an epoch's end
    accumulation = GradientAccumulationPlugin(num_steps=grad_accum_steps, sync_with_dataloader=False)
    # non_blocking: batches copied from the loader's pinned memory while the GPU still computes
    # log_with: TensorBoard writes under project_dir/<variant> = runs/<variant>/
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu, gradient_accumulation_plugin=accumulation,
                              dataloader_config=DataLoaderConfiguration(non_blocking=True),
                              log_with=log_with or None, project_dir=str(RUNS_DIR))
    if precision == "fp16":
        # accelerate (1.15) gives fp16 on the CPU neither autocast nor a scaler (it trains in fp32
        # without a word); torch has both. On a GPU its scaler is swapped for one that waits for
        # every optimizer (before prepare(), which hands the scaler to the optimizers).
        accelerator.native_amp = True
        accelerator.scaler = StepScaler(accelerator.device.type)
    return accelerator


def trainable_family(variant: VariantConfig) -> Family:
    if variant.method not in TRAINABLE:
        raise ConfigError(f"{variant.source or variant.name}: method {variant.method!r} is not trainable; "
                          f"trainable methods: {', '.join(TRAINABLE)}")
    return inpainter_class(variant).family


def trackers(variant: VariantConfig, names: str) -> list[str]:
    """params.trackers (`names`, comma-separated) as accelerate's log_with; ConfigError naming the
    param, the config file and what to install when one is unknown or not installed."""
    from pipeline.config import param_where

    where = param_where(variant, "trackers")
    if "trackers" in variant.overrides:
        where += f" (over {variant.source or variant.name})"
    chosen = list(dict.fromkeys(name.strip().lower() for name in str(names).split(",") if name.strip()))
    if not chosen:
        raise ConfigError(f"{where}: names no tracker; use one or more of {', '.join(TRACKERS)}, comma-separated")
    for name in chosen:
        if name not in TRACKERS:
            raise ConfigError(f"{where}: {name!r} is not a tracker this pipeline logs to; "
                              f"use one or more of {', '.join(TRACKERS)}, comma-separated")
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{where}: {name} is not installed in this Python ({sys.executable}): "
                              f"`pip install {package}`, or leave it out of params.trackers")
    if ("mlflow" in chosen and not os.environ.get("MLFLOW_TRACKING_URI")
            and importlib.util.find_spec("sqlalchemy") is None):
        # mlflow's default store is sqlite:///mlflow.db, which mlflow-skinny cannot open
        raise ConfigError(f"{where}: mlflow needs a place to write: set MLFLOW_TRACKING_URI (a server's "
                          "http://host:port, or MLFLOW_ALLOW_FILE_STORE=true with file:runs/mlruns), or "
                          "`pip install mlflow` for its default sqlite:///mlflow.db")
    return chosen


def with_overrides(variant: VariantConfig, **overrides: int | None) -> VariantConfig:
    """`variant` with the command line's --epochs / --max-steps / --workers over its params;
    a bad value is an error naming the argument, not the YAML file."""
    minimum = {"epochs": 1, "max_steps": 1, "num_workers": 0}
    for key, value in overrides.items():
        if value is not None and value < minimum[key]:
            flag = "--workers" if key == "num_workers" else f"--{key.replace('_', '-')}"
            raise ConfigError(f"{flag} {value}: must be at least {minimum[key]} (it overrides params.{key} "
                              f"of {variant.source or variant.name} for this run)")
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(variant, params={**variant.params, **given})


@dataclass
class Run:
    """One training run: its config, its files, its networks and where it stands."""

    variant: VariantConfig
    family: Family
    config: TrainableConfig
    params: dict[str, Any]  # every param, defaults filled in: what checkpoints store
    last_path: Path
    best_path: Path
    run_dir: Path
    state: dict[str, Any] | None = None  # last.pt when resuming
    accelerator: Any = None
    nets: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained on
    best_rmse: float = math.inf
    last_rmse: float | None = None
    # this session only (not in last.pt)
    writer: Any = None  # TensorBoard's SummaryWriter, on the main process where it is a tracker
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # params.trackers, checked
    schedule_steps: int = 0  # the steps of all epochs: the learning rate falls over them
    total_steps: int = 0  # where training ends: schedule_steps, or max_steps when that comes first
    started: float = 0.0  # time.perf_counter() when the first step began
    out_of_time: bool = False  # some process passed max_minutes (decided after each step)
    validated_at: int = -1  # the step of the last validation
    precision: str = "no"  # what mixed_precision resolved to on this machine: no / bf16 / fp16 ...
    precision_why: str = ""  # ... and why
    steps_per_epoch: int = 1  # optimizer steps in one epoch (set by `schedule`)
    seconds_before: float = 0.0  # training seconds of the sessions before this one (a resumed run)
    source: tuple[str | None, bool | None] = (None, None)  # (git commit, dirty) of the code training

    @property
    def hp(self):
        return self.config.train

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def facts(self, stop_reason: str) -> dict[str, Any]:
        """What this run has actually done so far: checkpoint.RUN_FACTS, stored as each checkpoint's "run"."""
        commit, dirty = self.source
        return {"steps": self.step, "epochs": self.step / max(1, self.steps_per_epoch),
                "stop_reason": stop_reason, "train_seconds": round(self.seconds_before + self.seconds(), 1),
                "git_commit": commit, "git_dirty": dirty, "seed": self.hp.seed}

    def seconds(self) -> float:
        """Training time of this session so far (0 before the first step)."""
        return time.perf_counter() - self.started if self.started else 0.0

    def checkpoint(self, full: bool, facts: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """best.pt holds the generator; last.pt everything a resumed run needs (None off the main process)."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        # every process's dropout streams, its own GPU's included, keyed by rank
        rngs = dict(enumerate(gather_object([rng_state(acc.device)]))) if full else None
        if not self.main:
            return None
        config = self.variant.to_dict()
        config["params"] = self.params
        out = {"config": config, "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
               "last_val_rmse": self.last_rmse, "best_val_rmse": None if math.isinf(self.best_rmse) else self.best_rmse,
               "run": facts or self.facts(UNFINISHED)}
        for name, net in self.nets.items() if full else [("generator", self.nets["generator"])]:
            out[name] = acc.unwrap_model(net, keep_torch_compile=False).state_dict()
        if full:
            out.update({key: opt.state_dict() for key, opt in self.optimizers.items()})
            out.update(rng=rngs, scaler=acc.scaler.state_dict() if acc.scaler else None, precision=self.precision)
        return out

    def save(self, path: Path, full: bool, facts: dict[str, Any] | None = None) -> None:
        """`facts`: the run's (Run.facts), by default those of a run still going."""
        checkpoint = self.checkpoint(full, facts)  # every process takes part (it gathers the RNG states)
        if checkpoint is not None:
            save_checkpoint(path, checkpoint)


# ---------------------------------------------------------------------------------------------
# The setup, step by step


def plan(variant: VariantConfig, resume: bool, restart: bool) -> Run:
    """Check everything about the config and the checkpoints before a single file is touched."""
    if resume and restart:
        raise ConfigError("--resume continues the last run, --restart replaces it: pass one of them")
    family = trainable_family(variant)
    config = family.config(variant)
    family.check_trainable(variant, config)
    params = config.params()
    ckpt_dir = CHECKPOINT_DIR / variant.name
    run = Run(variant, family, config, params, ckpt_dir / "last.pt", ckpt_dir / "best.pt", RUNS_DIR / variant.name)
    run.source = source_version()  # the code that trains, as it is now
    run.trackers = trackers(variant, run.hp.trackers)
    if resume:
        run.state = read_checkpoint(run.last_path, hint="Nothing to resume: train without --resume first.")
        resumable = [k for k in params if k not in RESUMABLE_CHANGES]
        run.state["config"]["params"].setdefault("grad_accum_steps", 1)  # a run saved before the param existed
        check_same_config(run.last_path, run.state, variant, params, resumable, "training setup")
    elif run.last_path.exists() and not restart:
        from pipeline.next_step import NextStep, variant_word

        again = {"variant": variant_word(variant)}
        raise CheckpointError(f"{run.last_path} exists from an earlier run: continue it with "
                              f"`{NextStep('train', {**again, 'resume': True})}`, or replace it with "
                              f"`{NextStep('train', {**again, 'restart': True})}`")
    return run


def load_data(run: Run, progress: bool) -> Competition:
    """The competition's manifest, with every training photo decoded once (a damaged one stops
    here): by one process per machine, the others waiting for it (load_competition_once)."""
    from pipeline.predict import load_competition_once

    def check(competition: Competition) -> None:
        if not competition.val:
            raise ConfigError(f"{run.variant.source or run.variant.name}: data.val_count is 0; training needs the "
                              "validation split to choose best.pt")
        hp = run.hp
        if len(competition.train) < hp.train_batch_size * hp.grad_accum_steps:
            raise ConfigError(f"{competition.root}: {len(competition.train)} training images, fewer than one "
                              f"optimizer step's params.train_batch_size={hp.train_batch_size} x "
                              f"grad_accum_steps={hp.grad_accum_steps}")
        check_training_images(competition.train + competition.val, run.variant.data.image_size, progress)

    return load_competition_once(run.variant.data, check)


def deterministic_kernels(enabled: bool) -> None:
    """params.deterministic: the same weights from the same run on CUDA too. cuDNN's autotuning
    (benchmark) picks kernels by timing them and several CUDA kernels add with atomics in no fixed
    order, so without this a GPU run and its resumption differ in the last bits (and then more).
    On: only deterministic kernels (an op without one raises, naming it), no autotuning, and
    cuBLAS given a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts: call this
    before any CUDA work). Off: torch's defaults, cuDNN autotuning on."""
    if enabled and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def start_accelerator(run: Run) -> str:
    """Accelerate with the precision this machine can run and the run's gradient accumulation;
    threads; returns the precision (printed with the reason by `schedule`)."""
    device = execution_device(per_process=False)
    where = run.variant.source or run.variant.name
    run.precision, run.precision_why = choose_precision(run.hp.mixed_precision, device, where)
    run.accelerator = _accelerator(run.precision, run.hp.grad_accum_steps, run.trackers)
    if run.accelerator.device.type == "cpu":
        local = _local_processes(run.accelerator)
        torch.set_num_threads(cpu_threads(run.hp.threads, loader_workers(run.hp.num_workers, local), local))
    return run.precision


def build_loaders(run: Run, competition: Competition) -> tuple[DataLoader, DataLoader, int]:
    """(training loader, validation loader, training images): the family's hole fill runs in the workers."""
    hp, data = run.hp, run.variant.data
    fill = run.family.hole_fill(run.config)
    augment = AugmentConfig(jitter=hp.jitter, flip=hp.flip, colour=hp.colour, jpeg=hp.jpeg,
                            jpeg_quality=(hp.jpeg_quality_low, hp.jpeg_quality_high))
    train_set = BoxInpaintingDataset(competition.train, data, augment, fill, seed=hp.seed)
    workers = loader_workers(hp.num_workers, _local_processes(run.accelerator))
    pin = torch.cuda.is_available()  # page-locked batches: the copy to the GPU runs asynchronously
    loader = DataLoader(
        EpochDataset(train_set), batch_size=hp.train_batch_size, sampler=EpochSampler(len(train_set), hp.seed),
        drop_last=True, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
        worker_init_fn=_worker_init, prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(hp.seed),  # keeps the loader's seed draw off the global RNG
    )
    val_set = BoxInpaintingDataset(competition.val, data, None, fill)
    val_loader = DataLoader(val_set, batch_size=run.variant.batch_size, num_workers=min(workers, 1), pin_memory=pin,
                            generator=torch.Generator().manual_seed(hp.seed))
    return loader, val_loader, len(train_set)


def build_networks(run: Run) -> None:
    """The family's networks and optimizers, the same on every process (seeded alike)."""
    from accelerate.utils import set_seed

    set_seed(run.hp.seed)
    run.nets = run.family.build(run.config)
    run.optimizers = run.family.optimizers(run.config, run.nets)


def restore(run: Run) -> None:
    """Weights, optimizer states, the fp16 loss scale and the position from last.pt (before
    accelerate wraps anything)."""
    state, path = run.state, run.last_path
    for key, target in [*run.nets.items(), *run.optimizers.items()]:
        if key not in state:
            raise CheckpointError(f"{path}: has no {key}; it comes from another model or objective")
        if isinstance(target, nn.Module):
            load_state_dict(path, target, state[key], key)
        else:
            target.load_state_dict(state[key])
    scaler = run.accelerator.scaler  # fp16's loss scale (accelerate made it with the accelerator)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if state.get("precision", run.precision) != run.precision and run.main:
        print(f"note: {path} trained in {state['precision']}; this run goes on in {run.precision}")
    run.step, run.epoch, run.batches_done = state["step"], state["epoch"], state["batches_done"]
    run.validated_at = run.step  # a resumed run that takes no step has nothing new to score
    run.best_rmse = state["best_val_rmse"] if state["best_val_rmse"] is not None else math.inf
    run.last_rmse = state["last_val_rmse"]
    run.seconds_before = float((state.get("run") or {}).get("train_seconds") or 0.0)


def prepare(run: Run, loader: DataLoader, val_loader: DataLoader) -> tuple[DataLoader, DataLoader]:
    """Accelerate wraps networks, optimizers and loaders; returns the prepared loaders."""
    acc = run.accelerator
    names, keys = list(run.nets), list(run.optimizers)
    prepared = acc.prepare(*run.nets.values(), *run.optimizers.values(), loader, val_loader)
    run.nets = dict(zip(names, prepared[:len(names)]))
    run.optimizers = dict(zip(keys, prepared[len(names):len(names) + len(keys)]))
    # prepare() autocasts every forward; undo that so the step's autocast blocks are the only ones
    # and validation runs in fp32 like `submit`
    for net in run.nets.values():
        acc.unwrap_model(net, keep_fp32_wrapper=False)
    if run.hp.compile:  # after DDP wrapping, as torch.compile wants it
        run.nets = {name: torch.compile(net) for name, net in run.nets.items()}
    return prepared[-2], prepared[-1]


def seed_processes(run: Run) -> None:
    """Dropout draws: each process its own stream (a resumed run: the streams it saved)."""
    from accelerate.utils import set_seed

    acc = run.accelerator
    set_seed(run.hp.seed, device_specific=True)  # seed + process index
    if run.state is None:
        return
    own, note = own_rng_state(run.state["rng"], acc.process_index, acc.num_processes)
    if own is not None:
        set_rng_state(own, acc.device)
    if note and run.main:
        print(f"note: {run.last_path} was {note}")


def run_config(run: Run) -> dict[str, Any]:
    """The run's params and facts as flat scalars: hparams of TensorBoard, params of MLflow / W&B."""
    commit, dirty = run.source
    return ({k: v for k, v in run.params.items() if isinstance(v, (int, float, str, bool))}
            | {"precision": run.precision, "git_commit": commit or "", "git_dirty": "" if dirty is None else dirty})


def open_logs(run: Run, restart: bool):
    """Start accelerate's trackers (main process only), after a restart has removed the old run's
    files; returns TensorBoard's SummaryWriter (None where it is not a tracker)."""
    if not run.main:
        return None
    if restart:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        for path in (run.last_path, run.best_path):
            path.unlink(missing_ok=True)
    acc = run.accelerator
    acc.init_trackers(run.variant.name, init_kwargs={
        # purge_step drops what a killed run logged after its last checkpoint
        "tensorboard": {"purge_step": run.step if run.state is not None else None},
        "wandb": {"dir": str(run.run_dir), "name": run.variant.name},  # offline runs kept beside the events
    })
    for name in run.trackers:
        if name != "tensorboard":  # TensorBoard's hparams come at the end, with the best score
            acc.get_tracker(name).store_init_configuration(run_config(run))
    return acc.get_tracker("tensorboard", unwrap=True) if "tensorboard" in run.trackers else None


def schedule(run: Run, batches: int, images: int, precision: str) -> None:
    """Where the learning rate falls to 0 and where training ends, in optimizer steps (`batches`
    per epoch, grad_accum_steps each); says so, and the precision, on the main process."""
    hp = run.hp
    steps_per_epoch = batches // hp.grad_accum_steps  # batches left over would not fill a step
    run.steps_per_epoch = steps_per_epoch
    run.schedule_steps = hp.epochs * steps_per_epoch  # the learning rate follows the epochs ...
    run.total_steps = min(run.schedule_steps, hp.max_steps or run.schedule_steps)  # ... max_steps only stops early
    if run.main:
        acc, variant, early = run.accelerator, run.variant, run.total_steps < run.schedule_steps
        accum = f" of {hp.grad_accum_steps} batches" if hp.grad_accum_steps > 1 else ""
        print(f"training {variant.name} ({variant.method}): {images} images, {steps_per_epoch} steps{accum}/epoch x "
              f"{hp.epochs} epochs" + (f" (stopping at step {run.total_steps})" if early else "")
              + f", {acc.num_processes} process(es) on {acc.device}, precision {precision} ({run.precision_why})"
              + (f", resuming at step {run.step}" if run.state is not None else ""))
        if run.writer is not None:
            run.writer.add_text("precision", f"{precision} ({run.precision_why})", run.step)


# ---------------------------------------------------------------------------------------------
# The loop: an epoch at a time until `stop_reason` gives one


@dataclass
class Meter:
    """The console bar, and the images trained on since the last logged step."""

    bar: tqdm
    since: float = field(default_factory=time.perf_counter)
    images: int = 0

    def images_per_s(self) -> float:
        """Throughput since the last call (or the start); starts the next window."""
        rate = self.images / (time.perf_counter() - self.since)
        self.since, self.images = time.perf_counter(), 0
        return rate


def stop_reason(run: Run, check_clock: bool = False) -> str | None:
    """Why training stops here, or None to go on: max_minutes (some process ran out of time),
    finished (every epoch's steps done), max_steps (params.max_steps came first).

    check_clock (after each step, on every process alike): read the clock; any process past
    max_minutes stops them all at this step.
    """
    hp = run.hp
    if check_clock and hp.max_minutes:
        run.out_of_time = _any(run.accelerator, time.perf_counter() - run.started > 60 * hp.max_minutes)
    if run.out_of_time:
        return "max_minutes"
    if run.step >= run.schedule_steps:
        return "finished"
    if hp.max_steps and run.step >= hp.max_steps:
        return "max_steps"
    return None


def validate_and_keep_best(run: Run, val_loader: DataLoader) -> None:
    """Validation RMSE (and the image grid) to TensorBoard; best.pt when it is the best so far."""
    main = run.main
    run.last_rmse, grid = validate(run.family, run.nets["generator"], val_loader, run.accelerator,
                                   GRID_IMAGES if main else 0)
    run.validated_at = run.step
    run.accelerator.log({"val/rmse": run.last_rmse}, step=run.step)  # the main process's trackers
    if main and run.writer is not None:
        if grid is not None:
            run.writer.add_image("val/masked|fill|prediction|truth", grid, run.step, dataformats="HWC")
    if run.last_rmse < run.best_rmse:
        run.best_rmse = run.last_rmse
        run.save(run.best_path, full=False)


def log_scalars(run: Run, meter: Meter, losses: dict[str, torch.Tensor], lr: float) -> None:
    """The step's losses (the mean over processes), throughput and lr to TensorBoard and the bar."""
    images_per_s = meter.images_per_s()
    values = {k: run.accelerator.reduce(v.detach().float(), "mean").item() for k, v in losses.items()}
    if run.main:
        run.accelerator.log(values | {"time/images_per_s": images_per_s, "lr": lr}, step=run.step)
        meter.bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in values.items()}
                              | ({"val": f"{run.last_rmse:.4f}"} if run.last_rmse is not None else {}))


def train_epoch(run: Run, loader: DataLoader, val_loader: DataLoader, step: Callable, meter: Meter) -> None:
    """The batches of epoch `run.epoch` not yet done: one `step` each, the optimizers stepping
    every grad_accum_steps batches (an optimizer step is a training step: logs and last.pt on
    their schedule), until the epoch's whole steps are done or `stop_reason` gives one. A whole
    epoch ends with a validation (when due, and always at the last step) and last.pt at the next
    epoch's start."""
    acc, hp, accum = run.accelerator, run.hp, run.hp.grad_accum_steps
    whole = len(loader) // accum * accum  # the epoch's batches that fill optimizer steps
    loader.set_epoch(run.epoch)  # the prepared loader hands the epoch to our sampler
    batches = acc.skip_first_batches(loader, run.batches_done) if run.batches_done else loader
    if run.batches_done:
        batches.set_epoch(run.epoch)
    summed: dict[str, torch.Tensor] = {}  # the losses of the step's batches so far
    for batch in batches:
        if run.batches_done == whole:  # the batches left would not fill an optimizer step
            break
        lr = hp.lr * lr_factor(run.step, run.schedule_steps, hp.lr_decay)  # from the step alone: resumes exactly
        set_lr(run.optimizers, lr)
        with acc.accumulate(*run.nets.values()):  # backward scales by 1/accum; optimizers step on the last batch
            losses = step(batch, run.epoch)
        summed = {key: value.detach() + summed.get(key, 0) for key, value in losses.items()}
        run.batches_done += 1
        meter.images += batch["target"].shape[0] * acc.num_processes
        if run.batches_done % accum:
            continue
        if acc.scaler is not None:
            acc.scaler.step_done()  # fp16: the loss scale moves once every optimizer has stepped

        run.step += 1
        meter.bar.update(1)
        if run.step % hp.log_every == 0 or run.step == run.total_steps:
            log_scalars(run, meter, {key: value / accum for key, value in summed.items()}, lr)
        summed = {}
        if stop_reason(run, check_clock=True):
            break
        if run.step % hp.checkpoint_every == 0:
            run.save(run.last_path, full=True)
    if run.batches_done == whole and not run.out_of_time:  # a whole epoch: validate, then move the position on
        if (run.epoch + 1) % hp.val_every == 0 or run.step >= run.total_steps:
            validate_and_keep_best(run, val_loader)
        run.epoch, run.batches_done = run.epoch + 1, 0
        run.save(run.last_path, full=True)


def finish(run: Run, reason: str, val_loader: DataLoader, meter: Meter) -> TrainResult:
    """Score where training stopped (unless an epoch's end just did), save last.pt, close the logs."""
    acc = run.accelerator
    if reason == "max_minutes" and run.main:
        tqdm.write(f"stopping at step {run.step}: params.max_minutes={run.hp.max_minutes} reached")
    if run.validated_at != run.step:  # stopped mid-epoch (max_steps, max_minutes)
        validate_and_keep_best(run, val_loader)
    facts = run.facts(reason)  # final: both checkpoints say the same
    run.save(run.last_path, full=True, facts=facts)
    if run.main and run.best_path.is_file():
        stamp_run_facts(run.best_path, facts)
    meter.bar.close()
    acc.wait_for_everyone()
    if run.main and run.writer is not None:
        run.writer.add_hparams(run_config(run), {"hparam/best_val_rmse": run.best_rmse}, run_name=".")
    for name in run.trackers if run.main and not math.isinf(run.best_rmse) else []:
        if name != "tensorboard":  # TensorBoard has it in its hparams
            acc.get_tracker(name).log({"hparam/best_val_rmse": run.best_rmse}, step=run.step)
    acc.end_training()  # closes every tracker
    best = None if math.isinf(run.best_rmse) else run.best_rmse
    return TrainResult(run.step, run.epoch, best, run.last_rmse, run.seconds(), reason,
                       run.best_path, run.last_path, run.run_dir, run.main)


# ---------------------------------------------------------------------------------------------


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
    # 1. check the config and the checkpoints (no file touched yet), then build the run
    variant = with_overrides(variant, epochs=epochs, max_steps=max_steps, num_workers=num_workers)
    run = plan(variant, resume, restart)
    deterministic_kernels(run.hp.deterministic)  # before anything starts CUDA
    competition = load_data(run, progress)
    precision = start_accelerator(run)
    loader, val_loader, images = build_loaders(run, competition)
    build_networks(run)
    if run.state is not None:
        restore(run)
    loader, val_loader = prepare(run, loader, val_loader)
    step = run.family.make_step(run.config, run.accelerator, run.nets, run.optimizers)
    seed_processes(run)
    run.writer = open_logs(run, restart)
    schedule(run, len(loader), images, precision)

    # 2. train, an epoch at a time
    run.started = time.perf_counter()
    bar = tqdm(total=run.total_steps, initial=run.step, desc=f"train {variant.name}", unit="step",
               disable=not (progress and run.accelerator.is_local_main_process))
    meter = Meter(bar)
    while (reason := stop_reason(run)) is None:
        train_epoch(run, loader, val_loader, step, meter)

    # 3. score where it stopped, save, close the logs
    return finish(run, reason, val_loader, meter)
