"""`make demo`: its steps in order, ending with the verdict; its training budget is in steps (the
config's epochs), never in minutes, so a busy machine ends with the same weights."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from pipeline.config import load_variant

REPO = Path(__file__).resolve().parent.parent


def _demo_commands(*goal: str) -> list[str]:
    """The `python -m pipeline ...` commands `make <goal>` (demo) runs, as `make -n` prints them
    (nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    out = subprocess.run(["make", "-n", "-s", *(goal or ["demo"]), "-o", ".venv/.installed"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [line.split(" -m pipeline ", 1)[1].strip() for line in out.splitlines() if " -m pipeline " in line]


def test_the_demo_trains_by_steps_and_ends_with_the_verdict():
    commands = _demo_commands()
    assert commands[0] == "sample"
    assert commands[-2:] == ["leaderboard", "verdict"]
    train = [c for c in commands if c.startswith("train ")]
    assert train == ["train --variant pix2pix-cpu --restart --param max_minutes=0"]
    assert commands.index(train[0]) < commands.index("submit --variant pix2pix-cpu")
    assert "submit --variant nearest" in commands and "duplicates" in commands
    # the budget is the config's epochs; its own max_minutes is only a net for larger data
    params = load_variant("pix2pix-cpu").params
    assert params["epochs"] == 24 and not params.get("max_steps") and params["max_minutes"] >= 60


def test_the_demos_max_minutes_override_reaches_the_trainer(monkeypatch):
    import pipeline.train

    seen = {}

    def stand_in(variant, **kwargs):
        seen.update(variant.params)
        raise pipeline.train.ConfigError("stopped by the test")

    monkeypatch.setattr(pipeline.train, "train", stand_in)
    assert cli(["train", "--variant", "pix2pix-cpu", "--restart", "--param", "max_minutes=0"]) == 2
    assert seen["max_minutes"] == 0 and seen["epochs"] == 24


def test_prune_lists_unless_told_to_apply():
    assert _demo_commands("prune") == ["prune"]
    assert _demo_commands("prune", "APPLY=1") == ["prune --apply"]
    assert _demo_commands("verdict", "DATA=data/raw/x") == ["verdict --data data/raw/x"]
