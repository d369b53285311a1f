"""Shared fixtures: a small sample competition, built once per test session in a temp workspace.

The pipeline writes relative to the working directory (data/predictions, submissions/), so tests
that run steps `chdir` into a workspace of their own (`workspace`), never into the repo.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from pipeline.config import DataConfig, data_config, load_variant
from pipeline.data.competition import load_competition
from pipeline.data.sample import build_sample
from tests.kaggle_standin import KaggleStandIn

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


# ---------------------------------------------------------------------------------------------
# Kaggle: the real client against a local stand-in server (tests/kaggle_standin.py)


@pytest.fixture
def offline(monkeypatch):
    """Fails any test whose code tries to resolve a host other than this machine."""
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test tried to reach {host!r}; these tests must stay offline")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME with no Kaggle credentials anywhere (env cleared, config dir in tmp)."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


@pytest.fixture
def standin(offline, home, monkeypatch):
    """A running stand-in server that the kaggle client talks to, plus fake legacy credentials."""
    server = KaggleStandIn()
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    from kagglesdk import kaggle_env

    # The LOCAL environment's base URL; kagglesdk reads this table on every request.
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, server.url)
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")
    from kaggle.api.kaggle_api_extended import KaggleApi  # `import kaggle` authenticates: creds first

    # KaggleApi picks its environment at import; force LOCAL even if something imported it earlier.
    monkeypatch.setattr(KaggleApi, "args", ["--local"])
    from pipeline.data import kaggle as kg

    monkeypatch.setattr(kg, "SUBMISSION_LOOKUP_DELAYS_S", (0.05,))
    yield server
    server.close()
