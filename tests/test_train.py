"""pix2pix training: checkpoints, logs, best-by-validation, resume after a kill, and bad input.

Tiny networks (ngf 8, depth 4) on the small sample keep every run to seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoint import CheckpointError, read_checkpoint
from pipeline.cli import main as cli
from pipeline.config import load_variant
from pipeline.data.competition import CompetitionError, load_competition
from pipeline.leaderboard import Leaderboard
from pipeline.train import train

from tests.conftest import REPO, small_data_config
from tests.launch import run_with_timeout

TINY = dict(ngf=8, depth=4, ndf=8, norm="instance", dropout=False, hole_fill="telea", objective="gan",
            gan_loss="lsgan", train_batch_size=4, epochs=2, lr=0.001, mixed_precision="bf16",
            num_workers=0, max_minutes=0.0, log_every=2, checkpoint_every=4, seed=0)


def write_variant(root: Path, name: str, **params) -> Path:
    """configs-style YAML for a tiny pix2pix on the workspace's small sample; returns its path."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "method": "pix2pix", "batch_size": 4, "params": {**TINY, **params},
        "data": {"root": "data/sample", "truth": "data/sample-truth", "val_count": 6},
    }))
    return path


@pytest.fixture(scope="module")
def trained(sample_template, tmp_path_factory) -> Path:
    """A folder with the small sample and a tiny pix2pix trained 2 epochs on it (checkpoints, runs)."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(sample_template / "data", root / "data")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train(load_variant(write_variant(root, "tiny")), progress=False)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def trained_workspace(trained, workspace) -> Path:
    """The workspace (cwd) holding a copy of the trained run."""
    for folder in ("checkpoints", "runs"):
        shutil.copytree(trained / folder, workspace / folder)
    write_variant(workspace, "tiny")
    return workspace


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_training_keeps_the_best_checkpoint_and_submit_scores_it_as_validation_did(trained_workspace, capsys):
    ws = trained_workspace
    best = read_checkpoint(ws / "checkpoints/tiny/best.pt")
    last = read_checkpoint(ws / "checkpoints/tiny/last.pt")
    assert last["step"] == 2 * 10 and last["epoch"] == 2  # 42 training images, batch 4, drop_last
    for key in ("generator", "discriminator", "opt_g", "opt_d", "rng", "config"):
        assert key in last
    assert "opt_g" not in best and best["config"]["params"]["ngf"] == 8

    val = _scalars(ws / "runs/tiny", "val/rmse")
    assert [step for step, _ in val] == [10, 20]
    assert best["best_val_rmse"] == pytest.approx(min(v for _, v in val))
    assert {"loss/d_fake", "loss/g_adv", "loss/box_l1", "lr"} <= {t for t in _event_tags(ws / "runs/tiny")}

    # both checkpoints say what the run did, best.pt too though it was saved before the run ended
    for state in (best, last):
        facts = state["run"]
        assert (facts["steps"], facts["epochs"], facts["stop_reason"], facts["seed"]) == (20, 2.0, "finished", 0)
        assert 0 < facts["train_seconds"] < 600
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert last["run"]["git_commit"] == commit and last["run"]["git_dirty"] in (True, False)

    assert cli(["submit", "--variant", "tiny.yaml"]) == 0
    row = Leaderboard().read().iloc[-1]
    assert row["variant"] == "tiny" and row["run_dir"] == "runs/tiny"
    # submit reloads best.pt and scores the same validation boxes the training loop scored
    assert row["val_rmse"] == pytest.approx(best["best_val_rmse"], abs=2e-4)
    # ... and records the run behind it, and which file it was
    from pipeline.files import file_sha256

    assert (row["steps"], row["epochs"], row["stop_reason"], row["seed"]) == (20, 2.0, "finished", 0)
    assert row["checkpoint_sha256"] == file_sha256(ws / "checkpoints/tiny/best.pt")
    assert row["git_commit"] == commit and row["git_dirty"] in ("true", "false")
    assert row["train_seconds"] == best["run"]["train_seconds"]


def _event_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert events.Tags()["images"], "no image grid logged"
    return set(events.Tags()["scalars"])


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "--variant", "resume.yaml", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_a_killed_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(workspace):
    # depth 6 puts dropout in a decoder layer (the RNG matters); batch norm adds running stats
    params = dict(epochs=2, checkpoint_every=3, dropout=True, norm="batch", depth=6, hole_fill="mean")
    write_variant(workspace, "resume", **params)
    subprocess.run(_train_cmd(), check=True, env=_env(), capture_output=True, timeout=300)
    reference = read_checkpoint(workspace / "checkpoints/resume/last.pt")

    shutil.rmtree(workspace / "checkpoints")
    shutil.rmtree(workspace / "runs")

    last = workspace / "checkpoints/resume/last.pt"
    proc = subprocess.Popen(_train_cmd(), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill -9 as soon as the run has written its first checkpoint (step 3 of 20): it appears whole,
    # by rename, so it exists only once complete
    deadline = time.monotonic() + 240
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_checkpoint(last)
    killed_at = killed["step"]
    assert 0 < killed_at < reference["step"]
    assert killed["run"]["stop_reason"] == "interrupted" and killed["run"]["steps"] == killed_at

    done = subprocess.run(_train_cmd("--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming at step {killed_at}" in done.stdout
    resumed = read_checkpoint(last)
    assert resumed["step"] == reference["step"] and resumed["epoch"] == reference["epoch"]
    for key in ("generator", "discriminator"):
        for name, tensor in reference[key].items():
            assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resuming"
    assert resumed["opt_g"]["state"][0]["exp_avg"].equal(reference["opt_g"]["state"][0]["exp_avg"])
    assert resumed["best_val_rmse"] == reference["best_val_rmse"]
    # the training time of both sessions, the killed one's up to its checkpoint included
    assert resumed["run"]["stop_reason"] == "finished"
    assert resumed["run"]["train_seconds"] >= killed["run"]["train_seconds"] > 0


def test_l2_objective_trains_the_generator_alone_and_max_steps_keeps_the_schedule(workspace, capsys):
    write_variant(workspace, "l2", objective="l2", log_every=1, lr_decay=0.5)
    assert cli(["train", "--variant", "l2.yaml", "--max-steps", "3"]) == 0
    last = read_checkpoint(workspace / "checkpoints/l2/last.pt")
    assert last["step"] == 3 and "discriminator" not in last and "opt_d" not in last
    assert _scalars(workspace / "runs/l2", "loss/box_l2")
    # the schedule spans the 2 epochs (20 steps, decay over the last 10): stopping at step 3 is
    # early, so the learning rate never left its starting value
    assert [(step, pytest.approx(lr)) for step, lr in _scalars(workspace / "runs/l2", "lr")] == [
        (1, 0.001), (2, 0.001), (3, 0.001)]
    # the printed next step names a variant that `submit` finds: this YAML is not in configs/
    out = capsys.readouterr().out
    shown = out.split("next: python -m pipeline submit --variant ")[1].split()[0]
    assert shown == "l2.yaml" and load_variant(shown).name == "l2"


@pytest.mark.parametrize("argv, words", [
    (["--max-steps", "-5"], ["--max-steps -5", "at least 1"]),
    (["--epochs", "0"], ["--epochs 0", "at least 1"]),
    (["--workers", "-1"], ["--workers -1", "at least 0"]),
])
def test_bad_command_line_overrides_name_the_argument(workspace, capsys, argv, words):
    write_variant(workspace, "args")
    assert cli(["train", "--variant", "args.yaml", *argv]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not err.startswith("error: args.yaml")  # the file is not the culprit
    assert not (workspace / "checkpoints").exists() and not (workspace / "runs").exists()


def test_a_truncated_training_photo_stops_a_restart_before_it_removes_anything(trained_workspace, capsys):
    ws = trained_workspace
    photo = load_competition(small_data_config(ws)).train[0].path  # wherever the layout keeps them
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])  # the header survives, the scan does not
    kept = {p: p.read_bytes() for p in (ws / "checkpoints/tiny").iterdir()}
    logs = sorted(p.name for p in (ws / "runs/tiny").iterdir())
    assert cli(["train", "--variant", "tiny.yaml", "--restart"]) == 2
    err = capsys.readouterr().err
    assert str(photo.relative_to(ws)) in err and "cannot be decoded" in err and "download" in err
    assert {p: p.read_bytes() for p in (ws / "checkpoints/tiny").iterdir()} == kept
    assert sorted(p.name for p in (ws / "runs/tiny").iterdir()) == logs


def test_processes_stop_together_at_max_minutes_with_their_own_dropout_streams(workspace):
    # rank 0's clock runs 1000x fast: it alone passes max_minutes, after its first step
    write_variant(workspace, "ranks", objective="l2", max_minutes=0.01, epochs=3, train_batch_size=2)
    # a rank that trains on waits for one that stopped: never ends, and is killed
    done = run_with_timeout([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "tests/train_ranks.py"), "--variant", "ranks.yaml"], 240, _env(),
                            "two training processes stopping together")
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err[-3000:]
    assert "stopping at step 1: params.max_minutes=0.01 reached" in out + err
    assert out.count("decode check on rank") == 1  # the data is checked once, not by every rank
    last = read_checkpoint(workspace / "checkpoints/ranks/last.pt")
    assert last["step"] == 1
    rngs = last["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(trained_workspace, capsys):
    ws = trained_workspace
    assert cli(["submit", "--variant", "tiny.yaml", "--param", "checkpoint=nowhere/best.pt"]) == 2
    err = capsys.readouterr().err
    assert "nowhere/best.pt: no checkpoint there: the file does not exist" in err
    assert "CKPT" not in err and "checkpoint=<file>" not in err  # not: pass the option just passed

    corrupt = ws / "corrupt.pt"
    corrupt.write_bytes((ws / "checkpoints/tiny/best.pt").read_bytes()[:5000])  # a truncated copy
    assert cli(["submit", "--variant", "tiny.yaml", "--param", f"checkpoint={corrupt}"]) == 2
    err = capsys.readouterr().err
    # a file the user named: say what it is not, leave it alone (no "delete it")
    assert f"{corrupt}: not a checkpoint of this pipeline, or a damaged one" in err and "delete" not in err
    assert err.rstrip().endswith("(checkpoints/<variant>/).")  # the message reads to its end
    assert corrupt.read_bytes() == (ws / "checkpoints/tiny/best.pt").read_bytes()[:5000]
    notes = ws / "notes.txt"
    notes.write_text("my notes")
    assert cli(["submit", "--variant", "tiny.yaml", "--param", f"checkpoint={notes}"]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint of this pipeline" in err and "delete" not in err and notes.read_text() == "my notes"

    write_variant(ws, "wider", ngf=16)
    assert cli(["submit", "--variant", "wider.yaml", "--param", "checkpoint=checkpoints/tiny/best.pt"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/tiny/best.pt" in err and "ngf: checkpoint 8, config 16" in err
    assert not Path("submissions/wider.csv").exists()


@pytest.mark.parametrize("reason, quoted", [
    ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
     "miniz error. If you are seeing this error, there is a high likelihood that your checkpoint file is "
     "corrupted.", "PytorchStreamReader failed reading zip archive: failed finding central directory."),
    ("Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
     "steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) In PyTorch 2.6 ...",
     "Weights only load failed."),
    ("[Errno 22] Invalid argument", "[Errno 22] Invalid argument"),
    ("word " * 100, ("word " * 40).strip() + " ..."),
])
def test_a_damaged_checkpoint_is_quoted_to_the_end_of_a_sentence(reason, quoted):
    from pipeline.checkpoint import _first_sentence

    assert _first_sentence(reason) == quoted


def test_training_never_overwrites_a_run_it_was_not_told_to(trained_workspace, capsys, monkeypatch):
    ws = trained_workspace
    last = ws / "checkpoints/tiny/last.pt"
    before = last.read_bytes()
    assert cli(["train", "--variant", "tiny.yaml"]) == 2
    err = capsys.readouterr().err
    assert "train --variant tiny.yaml --resume`" in err and "train --variant tiny.yaml --restart`" in err
    assert "make" not in err  # a pip-installed package has no Makefile
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli(["train", "--variant", "tiny.yaml"]) == 2
    assert "`make train VARIANT=tiny.yaml RESUME=1`" in capsys.readouterr().err
    monkeypatch.delenv("PIPELINE_VIA")
    assert cli(["train", "--variant", "tiny.yaml", "--resume", "--param", "lr=0.01"]) == 2
    assert "lr: checkpoint 0.001, config 0.01" in capsys.readouterr().err
    write_variant(ws, "tiny", ngf=16)  # same name, another architecture
    assert cli(["train", "--variant", "tiny.yaml", "--resume"]) == 2
    assert "ngf" in capsys.readouterr().err
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(load_variant(ws / "tiny.yaml"), resume=True, progress=False)
    assert last.read_bytes() == b"not a checkpoint"
    last.write_bytes(before)
    assert cli(["train", "--variant", "tiny.yaml", "--resume", "--epochs", "2"]) == 2  # ngf 16 vs 8
    assert last.read_bytes() == before


def test_an_empty_training_folder_is_an_error_before_anything_is_written(workspace, capsys):
    for folder in (workspace / "data/sample/Dataset/Training_Data").iterdir():
        shutil.rmtree(folder)
    write_variant(workspace, "empty")
    with pytest.raises(CompetitionError, match="no training images"):
        train(load_variant(workspace / "empty.yaml"), progress=False)
    assert not (workspace / "checkpoints").exists() and not (workspace / "runs").exists()


# ---------------------------------------------------------------------------------------------
# The other families on the same loop

FAMILY_TINY = {
    "pconv": dict(width=4, max_width=8, depth=4, kernels="5,3", norm="none", loss="paper"),
    "glcic": dict(width=4, d_width=4, norm="none", hole_fill="telea", residual=True, completion_epochs=1,
                  discriminator_epochs=1, joint_mse="global"),
}


@pytest.mark.parametrize("method", sorted(FAMILY_TINY))
def test_every_family_trains_and_submits_through_the_shared_loop(workspace, method):
    shared = {k: TINY[k] for k in ("train_batch_size", "lr", "mixed_precision", "num_workers", "log_every",
                                   "checkpoint_every", "seed")}
    name, epochs = f"{method}-tiny", 3 if method == "glcic" else 1  # glcic: one epoch per phase
    (workspace / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "method": method, "batch_size": 6,
        "params": {**shared, "mixed_precision": "no", "epochs": epochs, **FAMILY_TINY[method]},
        "data": {"root": "data/sample", "truth": "data/sample-truth", "val_count": 6},
    }))
    assert cli(["train", "--variant", f"{name}.yaml"]) == 0
    best, last = (read_checkpoint(workspace / f"checkpoints/{name}/{f}.pt") for f in ("best", "last"))
    assert last["step"] == 10 * epochs and last["epoch"] == epochs and "opt_g" in last
    assert ("discriminator" in last) == (method == "glcic")
    val = _scalars(workspace / f"runs/{name}", "val/rmse")
    assert [step for step, _ in val] == [10, 20, 30][:epochs]
    if method == "glcic":  # phases: completion (epoch 0), discriminator (1), joint (2)
        assert [step for step, _ in _scalars(workspace / f"runs/{name}", "loss/mse")] == [2, 4, 6, 8, 10, 22, 24, 26, 28, 30]
        assert [step for step, _ in _scalars(workspace / f"runs/{name}", "loss/g_adv")] == [22, 24, 26, 28, 30]

    assert cli(["submit", "--variant", f"{name}.yaml"]) == 0
    row = Leaderboard().read().iloc[-1]
    assert row["variant"] == name and row["method"] == method
    assert row["val_rmse"] == pytest.approx(best["best_val_rmse"], abs=2e-4)  # submit scores what validation scored
    if method == "glcic":
        assert '"joint_mse": "global"' in row["config"]  # the switch shows on the leaderboard


def test_every_shipped_trainable_config_parses_with_its_family():
    from pipeline.train import TRAINABLE, trainable_family

    seen = set()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        variant = load_variant(path) if path.name != "sd-prompts.yaml" else None
        if variant is not None and variant.method in TRAINABLE:
            trainable_family(variant).config(variant)
            seen.add(variant.method)
    assert seen == set(TRAINABLE)


def test_the_benchmark_builds_the_sample_it_needs(tmp_path):
    import importlib.util

    from pipeline.config import data_config
    from pipeline.data.competition import load_competition

    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "benchmarks/train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = data_config({"root": tmp_path / "data/sample", "truth": tmp_path / "data/sample-truth", "val_count": 2})
    assert bench.ensure_sample(cfg, train_per_photo=1, test_per_photo=1) is True
    assert load_competition(cfg).train
    assert bench.ensure_sample(cfg, train_per_photo=1, test_per_photo=1) is False  # there: left alone


def test_stop_reason_says_why_training_stops_and_reads_the_clock_only_after_a_step():
    from types import SimpleNamespace

    from pipeline.inpainters.trainable import TrainParams
    from pipeline.train import stop_reason

    one_process = SimpleNamespace(num_processes=1)
    run = SimpleNamespace(hp=TrainParams(max_steps=5), step=3, schedule_steps=10, out_of_time=False,
                          accelerator=one_process, started=time.perf_counter())
    assert stop_reason(run) is None
    run.step = 5
    assert stop_reason(run) == "max_steps"
    run.hp, run.step = TrainParams(), 10
    assert stop_reason(run) == "finished"

    run.hp, run.step, run.started = TrainParams(max_minutes=1.0), 3, time.perf_counter() - 120
    assert stop_reason(run) is None  # between epochs the clock is not read
    assert stop_reason(run, check_clock=True) == "max_minutes"
    run.step = 10
    assert stop_reason(run) == "max_minutes"  # out of time wins over finished: the decision stands


# ---------------------------------------------------------------------------------------------
# Precision and gradient accumulation

GPUS = {"T4": ("Tesla T4", (7, 5)), "P100": ("Tesla P100-PCIE-16GB", (6, 0)), "V100": ("Tesla V100-SXM2-16GB", (7, 0)),
        "A100": ("NVIDIA A100-SXM4-40GB", (8, 0)), "L4": ("NVIDIA L4", (8, 9))}


@pytest.mark.parametrize("device, requested, expected", [
    ("T4", "auto", "fp16"), ("P100", "auto", "fp16"), ("V100", "auto", "fp16"), ("A100", "auto", "bf16"),
    ("L4", "auto", "bf16"), ("cpu+bf16", "auto", "bf16"), ("cpu", "auto", "no"), ("mps", "auto", "no"),
    ("A100", "bf16", "bf16"), ("cpu", "bf16", "no"), ("cpu+bf16", "bf16", "bf16"), ("T4", "fp16", "fp16"),
    ("A100", "fp16", "fp16"), ("cpu", "fp16", "fp16"), ("T4", "no", "no"), ("cpu+bf16", "no", "no"),
])
def test_precision_follows_what_the_device_has_natively(monkeypatch, device, requested, expected):
    from pipeline.train import choose_precision

    name, capability = GPUS.get(device, ("", (0, 0)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: device == "cpu+bf16")
    kind = "cuda" if name else device.split("+")[0]
    precision, why = choose_precision(requested, torch.device(kind), "x.yaml")
    assert precision == expected
    if requested == "auto" and kind == "cuda":
        assert name in why and f"{capability[0]}.{capability[1]}" in why  # printed and logged: which GPU, why


@pytest.mark.parametrize("device", ["T4", "P100", "V100"])
def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(monkeypatch, device):
    from pipeline.config import ConfigError
    from pipeline.train import choose_precision

    name, capability = GPUS[device]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(ConfigError) as error:
        choose_precision("bf16", torch.device("cuda"), "configs/pix2pix-cpu.yaml")
    message = str(error.value)
    assert message.startswith("configs/pix2pix-cpu.yaml: params.mixed_precision: bf16")
    assert name in message and "emulated, slower than fp32" in message and "auto" in message


def test_fp16_on_the_cpu_autocasts_to_fp16_with_a_loss_scaler():
    from pipeline.train import StepScaler, _accelerator

    accelerator = _accelerator("fp16")
    assert accelerator.device.type == "cpu" and isinstance(accelerator.scaler, StepScaler)
    conv = torch.nn.Conv2d(3, 4, 3)
    with accelerator.autocast():
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float16
    x = torch.randn(1, 3, 8, 8)
    plain = torch.autograd.grad(conv(x).square().mean(), conv.bias)[0]
    accelerator.backward(conv(x).square().mean())  # through the scaler
    assert torch.allclose(conv.bias.grad, plain * 65536) and accelerator.scaler.get_scale() == 65536


def test_fp16_with_accumulation_resumes_to_the_same_weights_and_loss_scale(workspace):
    # fp16 on the CPU (a GradScaler, as on a T4) and two optimizers: G and D; 2 batches per
    # optimizer step; batch norm's running stats. ngf/ndf 4 and batch 1: CPU fp16 backward is slow
    params = dict(mixed_precision="fp16", grad_accum_steps=2, train_batch_size=1, ngf=4, ndf=4, norm="batch",
                  hole_fill="mean", checkpoint_every=2, log_every=1)
    write_variant(workspace, "resume", **params)
    run = subprocess.run(_train_cmd("--max-steps", "4"), env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "42 images, 21 steps of 2 batches/epoch" in run.stdout and "precision fp16" in run.stdout
    reference = read_checkpoint(workspace / "checkpoints/resume/last.pt")
    assert reference["step"] == 4 and reference["batches_done"] == 8 and reference["precision"] == "fp16"
    assert [step for step, _ in _scalars(workspace / "runs/resume", "loss/box_l1")] == [1, 2, 3, 4]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workspace / "runs/resume"))
    events.Reload()
    logged = events.Tensors("precision/text_summary")[0].tensor_proto.string_val[0].decode()
    assert logged.startswith("fp16 (as configured: fp16 autocast with a loss scaler on the CPU")

    shutil.rmtree(workspace / "checkpoints")
    shutil.rmtree(workspace / "runs")
    last = workspace / "checkpoints/resume/last.pt"
    proc = subprocess.Popen(_train_cmd("--max-steps", "4"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not last.exists():  # the first last.pt: step 2
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_checkpoint(last)
    assert 0 < killed["step"] < 4 and killed["batches_done"] == 2 * killed["step"]
    # the scale backed off from its initial 65536 (fp16 overflowed), so a scaler that restarts
    # from 65536 on resume would skip steps the uninterrupted run took, or end on another scale
    assert killed["scaler"]["scale"] < 65536

    from pipeline.train import build_networks, plan, restore, start_accelerator

    restored = plan(load_variant(workspace / "resume.yaml"), resume=True, restart=False)
    start_accelerator(restored)
    build_networks(restored)
    restore(restored)
    assert restored.accelerator.scaler.state_dict() == killed["scaler"]

    done = subprocess.run(_train_cmd("--max-steps", "4", "--resume"), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming at step {killed['step']}" in done.stdout
    resumed = read_checkpoint(last)
    assert resumed["scaler"] == reference["scaler"] and resumed["step"] == 4
    # the loss scale above is exact; the weights within fp16's rounding: CPU fp16 kernels were once
    # seen to differ in the last bits between two runs of the same steps (a full-suite run), so
    # bit-identity is asserted for fp32/bf16 resumes (the kill-and-resume test), not here
    for key in ("generator", "discriminator", "opt_g", "opt_d"):
        assert _same(reference[key], resumed[key], atol=1e-3), f"{key} differs after resuming"


def _same(a, b, atol: float = 0.0) -> bool:
    """Nested dicts / lists of tensors and numbers, bit-identical (atol 0) or within atol."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], atol) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if atol and a.is_floating_point():
            return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=atol)
        return torch.equal(a, b)
    return a == b


def test_batch_4_equals_batch_2_accumulated_twice_and_steps_count_updates(workspace):
    # no batch norm (instance norm is per image), no dropout: the 4 images give the same gradient
    # either way, up to float summation order. Adam's first update is about lr x sign(gradient),
    # so a weight whose gradient is near 0 may move a little differently: within 0.1 x lr here,
    # where batch 2 alone (half the images) moves weights by up to 2 x lr
    updated = {}
    for name, batch, accum in (("b4", 4, 1), ("b2x2", 2, 2), ("b2", 2, 1)):
        write_variant(workspace, name, objective="l2", norm="instance", dropout=False, hole_fill="mean",
                      mixed_precision="no", train_batch_size=batch, grad_accum_steps=accum)
        train(load_variant(workspace / f"{name}.yaml"), max_steps=1, progress=False)
        updated[name] = read_checkpoint(workspace / f"checkpoints/{name}/last.pt")["generator"]

    def largest_difference(a, b):
        return max((a[key] - b[key]).abs().max().item() for key in a if a[key].is_floating_point())

    lr = TINY["lr"]
    assert largest_difference(updated["b4"], updated["b2x2"]) < 0.1 * lr
    assert largest_difference(updated["b4"], updated["b2"]) > lr

    # 8 training images, batches of 2, 3 per step: 1 step an epoch, the 4th batch left out; the
    # step counter, the schedule, logs, validation and the epoch's end count optimizer steps
    path = write_variant(workspace, "accum", objective="l2", hole_fill="mean", mixed_precision="no",
                         train_batch_size=2, grad_accum_steps=3, log_every=1, lr_decay=1.0)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val_count"] = 40  # of the sample's 48 images
    path.write_text(yaml.safe_dump(raw))
    train(load_variant(path), progress=False)
    last = read_checkpoint(workspace / "checkpoints/accum/last.pt")
    assert (last["step"], last["epoch"], last["batches_done"]) == (2, 2, 0)
    assert [step for step, _ in _scalars(workspace / "runs/accum", "val/rmse")] == [1, 2]
    assert [(step, pytest.approx(lr)) for step, lr in _scalars(workspace / "runs/accum", "lr")] == [
        (1, TINY["lr"]), (2, TINY["lr"] / 2)]  # decays over the 2 steps: lr at step 0, then half


def test_a_run_saved_before_grad_accum_steps_and_precision_existed_resumes(trained_workspace):
    from pipeline.checkpoint import save_checkpoint

    last = trained_workspace / "checkpoints/tiny/last.pt"
    state = read_checkpoint(last)
    del state["config"]["params"]["grad_accum_steps"], state["precision"]
    save_checkpoint(last, state)
    result = train(load_variant(trained_workspace / "tiny.yaml"), resume=True, progress=False)
    assert result.steps == 20 and result.epochs_done == 2  # nothing left to train, and no refusal
