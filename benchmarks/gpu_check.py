"""One prepared check of the GPU path (`make gpu-check`): one table, also written as JSON.

    .venv/bin/python benchmarks/gpu_check.py                       # ~8 minutes on one GPU
    .venv/bin/python benchmarks/gpu_check.py --json out.json --steps 10

On a GPU, for each GPU config (pix2pix, unet-l2, pconv, glcic): `--steps` (50) training steps with
the config's own precision and with fp16 forced (images/s, peak GPU memory, every logged loss
finite); one config again with `compile: true`; a resume round trip (N steps, save, resume for N
more: the weights against an uninterrupted 2N-step run); the training loader's images/s with the
config's `num_workers`; predict + submit on the sample with the round trip's checkpoint; the tiny
Stable Diffusion pipeline (tests/tiny_sd.py) in fp16.

Without a GPU it says so and runs the same code on the CPU for 2 steps, with the networks shrunk
(`--tiny`, the default there), fp16 as the trainer then runs it (fp32 where the CPU path has no
fp16), and no torch.compile row (`--compile` adds it: minutes of C++ builds); it exits 0 unless a
check fails: `make test` runs it that way (tests/test_gpu_check.py).

Everything goes through the trainer's and submit's public entry points (pipeline.train.train,
pipeline.submit.submit_variant), in a scratch working folder; only the JSON is written outside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

CONFIGS = ("pix2pix", "unet-l2", "pconv", "glcic")
COMPILE_CONFIG = "unet-l2"
# --tiny: each family's widths cut down so a CPU takes seconds per step
TINY = {"pix2pix": {"ngf": 4, "ndf": 4}, "pconv": {"width": 4, "max_width": 8}, "glcic": {"width": 4, "d_width": 4}}


def config_variant(name: str, data: str | None, tiny: bool, label: str, **params):
    """configs/<name>.yaml (data root absolute, `data` over it) renamed `<name>-<label>`, params over it."""
    from pipeline.config import load_variant

    variant = load_variant(REPO / "configs" / f"{name}.yaml", data_root=data)
    root, truth = variant.data.root, variant.data.truth
    variant = dataclasses.replace(
        variant, name=f"{name}-{label}",
        data=dataclasses.replace(variant.data, root=(REPO / root).resolve() if not root.is_absolute() else root,
                                 truth=(REPO / truth).resolve() if truth and not truth.is_absolute() else truth))
    extra = {"max_minutes": 0.0, "log_every": 1, **params}
    if tiny:
        extra = {**TINY[variant.method], "train_batch_size": 2, **extra}
        variant = dataclasses.replace(variant, batch_size=4)
    return dataclasses.replace(variant, params={**variant.params, **extra})


def logged(run_dir: Path) -> tuple[list[float], list[float]]:
    """(every loss/* scalar, every time/images_per_s) the run wrote to TensorBoard, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    losses = [e.value for tag in tags if tag.startswith("loss/") for e in events.Scalars(tag)]
    rates = [e.value for e in events.Scalars("time/images_per_s")] if "time/images_per_s" in tags else []
    return losses, rates


def train_row(variant, steps: int, cuda: bool, **kwargs) -> dict:
    """Train `variant` for `steps` steps from scratch: images/s, peak memory, finite losses."""
    from pipeline.train import train

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(variant, max_steps=steps, restart=True, progress=False, **kwargs)
    losses, rates = logged(result.run_dir)
    # the trainer's own figure at each step (log_every 1), the first (warm-up, autotuning) left out
    rate = statistics.median(rates[1:] or rates) if rates else float("nan")
    return {"steps": result.steps, "images_per_s": round(rate, 1),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "losses": len(losses), "finite": bool(losses) and all(math.isfinite(v) for v in losses),
            "val_rmse": result.last_val_rmse, "ok": bool(losses) and all(math.isfinite(v) for v in losses)}


def resume_row(data, tiny: bool, steps: int) -> dict:
    """unet-l2: `steps` steps, then resumed for `steps` more, against 2 x `steps` uninterrupted."""
    from pipeline.checkpoint import read_checkpoint
    from pipeline.train import train

    whole = config_variant(COMPILE_CONFIG, data, tiny, "whole")
    split = config_variant(COMPILE_CONFIG, data, tiny, "split")
    a = train(whole, max_steps=2 * steps, restart=True, progress=False)
    train(split, max_steps=steps, restart=True, progress=False)
    b = train(split, max_steps=2 * steps, resume=True, progress=False)
    wa, wb = read_checkpoint(a.last)["generator"], read_checkpoint(b.last)["generator"]
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    # CPU: bit-identical; CUDA: cuDNN's autotuned kernels are not deterministic
    ok = b.steps == a.steps and (diff == 0.0 if not torch.cuda.is_available() else diff < 1e-2)
    return {"steps": f"{steps}+{steps} vs {2 * steps}", "max_weight_diff": diff, "ok": ok, "checkpoint": str(b.best)}


def loader_row(variant, batches: int) -> dict:
    """The training loader `train` builds for `variant`, its own num_workers: images/s."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loader import loader_rate, training_loader

    from pipeline.data.competition import load_competition
    from pipeline.train import loader_workers

    workers = loader_workers(variant.params.get("num_workers", 2), 1)
    loader = training_loader(variant, load_competition(variant.data), None, workers)
    rate = loader_rate(loader, batches)
    return {"workers": workers, "images_per_s": round(rate, 1),
            "per_worker": round(rate / max(workers, 1), 1), "ok": rate > 0}


def submit_row(variant, checkpoint: str) -> dict:
    """predict + submit on the sample with `checkpoint`: the CSV validated, the leaderboard row."""
    from pipeline.data.competition import load_competition
    from pipeline.inpainters.base import preflight
    from pipeline.leaderboard import Leaderboard
    from pipeline.submit import submit_variant

    if checkpoint:
        variant = dataclasses.replace(variant, params={**variant.params, "checkpoint": checkpoint})
    preflight(variant)
    start = time.perf_counter()
    entry = submit_variant(variant, load_competition(variant.data), Leaderboard())
    return {"seconds": round(time.perf_counter() - start, 1), "val_rmse": entry.get("val_rmse"),
            "rows": entry.get("rows"), "ok": bool(entry.get("rows"))}


def sd_row(data, cuda: bool) -> dict:
    """The tiny SD pipeline through submit, fp16 at 512 on CUDA (fp32 at 128 on the CPU), 2 denoising steps."""
    from pipeline.config import load_variant
    from tests.tiny_sd import build_tiny_inpaint_pipeline

    model = build_tiny_inpaint_pipeline(Path("tiny-sd"))
    variant = load_variant(REPO / "configs" / "sd.yaml", data_root=data)
    root, truth = variant.data.root, variant.data.truth
    variant = dataclasses.replace(
        variant, name="sd-tiny", data=dataclasses.replace(
            variant.data, root=(REPO / root).resolve() if not root.is_absolute() else root,
            truth=(REPO / truth).resolve() if truth and not truth.is_absolute() else truth),
        params={**variant.params, "model": str(model.resolve()), "steps": 2, "dtype": "fp16" if cuda else "fp32",
                                        "size": 512 if cuda else 128})  # 128 on a CPU: seconds, not a minute
    row = submit_row(variant, "")
    row.pop("val_rmse", None)  # a random tiny model's score says nothing
    return {"dtype": variant.params["dtype"], **row}


def run_checks(args) -> list[dict]:
    cuda = torch.cuda.is_available()
    steps = args.steps or (50 if cuda else 2)
    tiny = not cuda if args.tiny is None else args.tiny
    rows: list[dict] = []

    def check(name: str, what: str, fn, *fn_args, **fn_kwargs) -> None:
        start = time.perf_counter()
        try:
            row = fn(*fn_args, **fn_kwargs)
        except Exception as exc:  # one failed check is a row, the others still run
            traceback.print_exc()
            row = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        row = {"check": name, "what": what, **row, "wall_s": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"[{'ok' if row['ok'] else 'FAIL'}] {name} {what} ({row['wall_s']} s)", flush=True)

    for name in args.configs.split(","):
        own = config_variant(name, args.data, tiny, "own")
        check(name, f"train {steps} steps, precision {own.params.get('mixed_precision', 'no')} (config)",
              train_row, own, steps, cuda)
        check(name, f"train {steps} steps, precision fp16", train_row,
              config_variant(name, args.data, tiny, "fp16", mixed_precision="fp16"), steps, cuda)
        check(name, "loader, config's workers", loader_row, own, args.loader_batches)
    if args.compile if args.compile is not None else cuda:
        check(COMPILE_CONFIG, f"train {steps} steps, compile: true", train_row,
              config_variant(COMPILE_CONFIG, args.data, tiny, "compile", compile=True), steps, cuda)
    else:  # inductor's C++ build takes minutes on a CPU
        rows.append({"check": COMPILE_CONFIG, "what": "compile: true (skipped on the CPU; --compile runs it)",
                     "ok": True, "wall_s": 0.0})
    resume_steps = max(1, steps // 2)
    check(COMPILE_CONFIG, "resume round trip", resume_row, args.data, tiny, resume_steps)
    trip = rows[-1].get("checkpoint")
    if trip:
        check(COMPILE_CONFIG, "predict + submit on the sample", submit_row,
              config_variant(COMPILE_CONFIG, args.data, tiny, "split"), trip)
    check("sd", "tiny SD pipeline through submit", sd_row, args.data, cuda)
    return rows


def print_table(rows: list[dict]) -> None:
    keys = ("images_per_s", "peak_gb", "finite", "workers", "per_worker", "max_weight_diff", "seconds", "dtype", "error")
    print(f"\n{'':4} {'config':8} {'check':44} {'wall s':>7}  details")
    for row in rows:
        details = ", ".join(f"{k} {row[k]}" for k in keys if row.get(k) is not None)
        print(f"{'ok' if row['ok'] else 'FAIL':4} {row['check']:8} {row['what']:44} {row['wall_s']:7.1f}  {details}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "submissions" / "gpu-check.json"), help="where the table goes as JSON")
    parser.add_argument("--data", help="competition folder (default: each config's data.root, the sample)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per row (default: 50 on a GPU, 2 on the CPU)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated GPU configs")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches per config")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="the compile: true row (default: on a GPU only)")
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="shrink the networks (default: on without a GPU)")
    args = parser.parse_args()
    if args.data:
        args.data = str(Path(args.data).resolve())
    cuda = torch.cuda.is_available()
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print("NO GPU FOUND: running the same checks on the CPU for 2 steps with tiny networks "
              "(fp16 as the CPU trainer runs it); the figures say nothing about a GPU")
    if args.data is None:
        from benchmarks.train_step import ensure_sample

        os.chdir(REPO)
        ensure_sample()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    cwd = os.getcwd()
    os.chdir(work)  # checkpoints/, runs/, submissions/ of these throw-away runs
    try:
        rows = run_checks(args)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    failed = [r for r in rows if not r["ok"]]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
                               "seconds": round(time.perf_counter() - started, 1), "rows": rows}, indent=1))
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed in {time.perf_counter() - started:.0f} s; table: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
