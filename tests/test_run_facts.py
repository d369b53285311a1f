"""A run's facts on its leaderboard row (steps, epochs, why it stopped, time, checkpoint hash, git
commit, seed), and the trackers that accelerate logs to (params.trackers).

Tiny l2 pix2pix runs of a few steps on the small sample, as in test_train.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.checkpoint import read_checkpoint, source_version
from pipeline.cli import main as cli
from pipeline.config import ConfigError, load_variant
from pipeline.leaderboard import Leaderboard
from pipeline.train import train

from tests.test_train import _scalars, write_variant


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_short_run_is_visibly_short_on_the_leaderboard(workspace, capsys):
    write_variant(workspace, "short", objective="l2")  # 2 epochs of 10 steps
    assert _run(capsys, "train", "--variant", "short.yaml", "--max-steps", "3")[0] == 0
    assert _run(capsys, "submit", "--variant", "short.yaml")[0] == 0
    # a baseline to measure the gain against, on the same validation split
    (workspace / "telea.yaml").write_text(yaml.safe_dump({"name": "telea", "method": "telea", "data": {
        "root": "data/sample", "truth": "data/sample-truth", "val_count": 6}}))
    assert _run(capsys, "submit", "--variant", "telea.yaml")[0] == 0
    rows = Leaderboard().read().set_index("variant")
    short = rows.loc["short"]
    assert (short["steps"], short["epochs"], short["stop_reason"], short["seed"]) == (3, 0.3, "max_steps", 0)
    assert short["train_seconds"] > 0 and len(short["checkpoint_sha256"]) == 64
    # an untrained method has no run: its facts stay empty
    telea = rows.loc["telea"]
    assert telea["stop_reason"] is None and telea["checkpoint_sha256"] is None and telea[["steps", "seed"]].isna().all()

    code, out, _ = _run(capsys, "leaderboard")
    header, *lines = out.splitlines()
    assert "gain_vs_baseline" in header and "gain_%" in header and " run " in header
    line = next(line.strip() for line in lines if line.strip().startswith("short "))
    assert "3/20 max_steps" in line  # 3 of the 20 steps its config's 2 epochs make
    gain = rows.loc["telea", "val_rmse"] - short["val_rmse"]
    assert f"{gain:+.4f}" in line and f"{100 * gain / rows.loc['telea', 'val_rmse']:+.1f}%" in line
    assert "+0.0000" in next(line for line in lines if line.strip().startswith("telea "))  # the baseline itself


def test_a_resumed_run_adds_its_time_to_the_earlier_sessions(workspace):
    write_variant(workspace, "again", objective="l2")
    first = train(load_variant(workspace / "again.yaml"), max_steps=2, progress=False)
    before = read_checkpoint(workspace / "checkpoints/again/last.pt")["run"]
    assert first.stop_reason == "max_steps" and before["train_seconds"] > 0
    again = train(load_variant(workspace / "again.yaml"), resume=True, max_steps=4, progress=False)
    after = read_checkpoint(workspace / "checkpoints/again/last.pt")["run"]
    assert again.steps == after["steps"] == 4 and after["stop_reason"] == "max_steps"
    assert after["train_seconds"] >= before["train_seconds"] + again.seconds - 0.2  # rounded to 0.1 s each
    assert read_checkpoint(workspace / "checkpoints/again/best.pt")["run"] == after


def test_source_version_outside_a_checkout_without_git_and_dirty(tmp_path, monkeypatch):
    assert source_version(tmp_path) == (None, None)  # Kaggle's read-only copy of the code: no .git
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert source_version(tmp_path) == (commit, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_version(tmp_path) == (commit, True)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git program at all
    assert source_version(tmp_path) == (None, None)


# ---------------------------------------------------------------------------------------------
# Trackers


def test_a_tracker_not_installed_or_unknown_names_the_param_the_file_and_the_install(workspace, monkeypatch, capsys):
    write_variant(workspace, "tracked", objective="l2", trackers="tensorboard,wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        train(load_variant(workspace / "tracked.yaml"), max_steps=1, progress=False)
    message = str(err.value)
    assert str(workspace / "tracked.yaml") in message and "params.trackers" in message
    assert "wandb is not installed" in message and "`pip install wandb`" in message
    assert not (workspace / "checkpoints").exists() and not (workspace / "runs").exists()  # nothing written

    code, _, err_text = _run(capsys, "train", "--variant", "tracked.yaml", "--param", "trackers=comet")
    assert code == 2 and "--param trackers=comet" in err_text and "tracked.yaml" in err_text
    assert "'comet' is not a tracker" in err_text and "tensorboard, mlflow, wandb" in err_text


def test_mlflow_receives_the_same_scalars_as_tensorboard_offline(workspace, monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()  # a file store: nothing leaves the machine
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    write_variant(workspace, "logged", objective="l2", log_every=1, trackers="tensorboard,mlflow")
    train(load_variant(workspace / "logged.yaml"), max_steps=3, progress=False)

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("logged").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["objective"] == "l2"
    for tag in ("loss/box_l2", "lr", "val/rmse"):
        in_mlflow = [(m.step, pytest.approx(m.value)) for m in client.get_metric_history(run.info.run_id, tag)]
        assert in_mlflow == _scalars(workspace / "runs/logged", tag), tag
    assert run.data.metrics["hparam/best_val_rmse"] == pytest.approx(
        read_checkpoint(workspace / "checkpoints/logged/best.pt")["best_val_rmse"])


def test_wandb_offline_keeps_its_run_beside_the_tensorboard_events(workspace, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_variant(workspace, "wb", objective="l2", log_every=1, trackers="wandb,tensorboard")
    train(load_variant(workspace / "wb.yaml"), max_steps=2, progress=False)

    (record,) = (workspace / "runs/wb/wandb").glob("offline-run-*/run-*.wandb")  # the run W&B would sync
    data = record.read_bytes()
    for tag in (b"loss/box_l2", b"val/rmse", b"lr", b"objective"):  # metrics and the config
        assert tag in data, tag
    assert [step for step, _ in _scalars(Path("runs/wb"), "val/rmse")] == [2]  # TensorBoard as before


def test_source_version_of_a_copy_inside_another_repository_is_unknown(tmp_path):
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    (tmp_path / "site-packages").mkdir()  # e.g. a wheel installed into a venv that lies in some repo
    assert source_version(tmp_path / "site-packages") == (None, None)
