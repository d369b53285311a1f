"""Shared fixtures: a small sample competition, built once per test session in a temp workspace.

The pipeline writes relative to the working directory (data/predictions, submissions/), so tests
that run steps `chdir` into a workspace of their own (`workspace`), never into the repo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import DataConfig, data_config, load_variant
from pipeline.data.competition import load_competition
from pipeline.data.sample import build_sample

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory) -> Path:
    """A small sample competition (6 train images per photo, 3 test per photo), built once."""
    base = tmp_path_factory.mktemp("sample")
    cfg = data_config({"root": base / "data/sample", "truth": base / "data/sample-truth"})
    build_sample(cfg, train_per_photo=6, test_per_photo=3, seed=0)
    return base


def small_data_config(root: Path) -> DataConfig:
    """DataConfig for the small sample under workspace `root` (6 validation images)."""
    return data_config({"root": root / "data/sample", "truth": root / "data/sample-truth", "val_count": 6})


@pytest.fixture
def workspace(sample_template, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the small sample in tmp_path, which becomes the working directory."""
    shutil.copytree(sample_template / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def competition(workspace):
    """The validated manifest of the workspace's small sample."""
    return load_competition(small_data_config(workspace))


def variant(name: str, root: Path, **params):
    """configs/<name>.yaml pointed at the small sample in `root`, with params overridden."""
    v = load_variant(REPO / "configs" / f"{name}.yaml")
    v.data = small_data_config(root)
    v.params.update(params)
    return v
