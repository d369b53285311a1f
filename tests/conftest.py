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


def to_generic(root: Path) -> DataConfig:
    """Copy the workspace's sample into the generic layout (train/<class>/, test/<class>/, a
    long bbox CSV, truth beside it); returns its DataConfig."""
    import pandas as pd

    src, dst = root / "data/sample/Dataset", root / "data/generic"
    for photo in (src / "Training_Data").glob("*/Unmasked_Train/*.*"):
        target = dst / "train" / photo.parent.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    info = pd.read_csv(src / "Testing_Data/masked_info.csv", index_col=0)
    rows = []
    for record in info.itertuples():
        label = record.filename.split(" ")[0].split("-")[0]
        for folder, name, out in ((src / "Testing_Data", record.filename, dst / "test"),
                                  (root / "data/sample-truth", record.filename + ".png", root / "data/generic-truth")):
            (out / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, out / label / name)
        for box, (y, x) in enumerate([(record.box1_row, record.box1_col), (record.box2_row, record.box2_col)]):
            rows.append({"image_id": record.filename, "class": label, "box": box, "x": x, "y": y,
                         "width": 75, "height": 75})
    pd.DataFrame(rows).to_csv(dst / "bboxes.csv", index=False)
    return generic_config(root)


def generic_config(root: Path) -> DataConfig:
    return data_config({"root": root / "data/generic", "truth": root / "data/generic-truth", "val_count": 6})


@pytest.fixture
def generic(workspace) -> DataConfig:
    """The workspace's sample in the generic layout (train/ + test/ + bboxes.csv)."""
    return to_generic(workspace)


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
    from pipeline import kaggle as kg

    monkeypatch.setattr(kg, "SUBMISSION_LOOKUP_DELAYS_S", (0.05,))
    yield server
    server.close()
