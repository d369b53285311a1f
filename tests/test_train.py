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
from pipeline.data.competition import CompetitionError
from pipeline.leaderboard import Leaderboard
from pipeline.train import train

from tests.conftest import REPO

TINY = dict(ngf=8, depth=4, ndf=8, norm="instance", dropout=False, hole_init="telea", objective="gan",
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

    assert cli(["submit", "--variant", "tiny.yaml"]) == 0
    row = Leaderboard().read().iloc[-1]
    assert row["variant"] == "tiny" and row["run_dir"] == "runs/tiny"
    # submit reloads best.pt and scores the same validation boxes the training loop scored
    assert row["val_rmse"] == pytest.approx(best["best_val_rmse"], abs=2e-4)


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
    params = dict(epochs=2, checkpoint_every=3, dropout=True, norm="batch", depth=6, hole_init="mean")
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
    killed_at = read_checkpoint(last)["step"]
    assert 0 < killed_at < reference["step"]

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


def test_l2_objective_trains_the_generator_alone(workspace):
    variant = load_variant(write_variant(workspace, "l2", objective="l2"))
    result = train(variant, max_steps=3, progress=False)
    last = read_checkpoint(result.last)
    assert result.steps == 3 and "discriminator" not in last and "opt_d" not in last
    assert _scalars(workspace / "runs/l2", "loss/box_l2")


def test_missing_corrupt_and_foreign_checkpoints_are_clear_errors(trained_workspace, capsys):
    ws = trained_workspace
    assert cli(["submit", "--variant", "tiny.yaml", "--param", "checkpoint=nowhere/best.pt"]) == 2
    assert "nowhere/best.pt: no checkpoint there" in capsys.readouterr().err

    corrupt = ws / "corrupt.pt"
    corrupt.write_bytes((ws / "checkpoints/tiny/best.pt").read_bytes()[:5000])  # a truncated copy
    assert cli(["submit", "--variant", "tiny.yaml", "--param", f"checkpoint={corrupt}"]) == 2
    assert "corrupt" in capsys.readouterr().err

    write_variant(ws, "wider", ngf=16)
    assert cli(["submit", "--variant", "wider.yaml", "--param", "checkpoint=checkpoints/tiny/best.pt"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/tiny/best.pt" in err and "ngf: checkpoint 8, config 16" in err
    assert not Path("submissions/wider.csv").exists()


def test_training_never_overwrites_a_run_it_was_not_told_to(trained_workspace, capsys):
    ws = trained_workspace
    last = ws / "checkpoints/tiny/last.pt"
    before = last.read_bytes()
    assert cli(["train", "--variant", "tiny.yaml"]) == 2
    assert "--resume" in capsys.readouterr().err
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
