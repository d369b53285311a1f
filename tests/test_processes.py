"""`predict`, `submit` and `sd` as two real processes (torchrun, gloo on the CPU), each against a
one-process run of the same command (in this process, one torch thread as in the launched ones):
the same predictions, the same CSV, one leaderboard row.

Every launch runs in a session of its own under a hard timeout; a hang (a rank waiting in the
variant lock while the main one waits at a barrier) kills the process group and fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline import cli
from tests.conftest import REPO
from tests.launch import run_with_timeout

LAUNCH_TIMEOUT_S = 90


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            "HF_HUB_OFFLINE": "1"}


def pipeline(*argv: str, processes: int = 1) -> subprocess.CompletedProcess:
    """`python -m pipeline ...`, or under `torchrun --nproc_per_node <processes>`; fails the test
    (after killing every process of the launch) if it has not ended within LAUNCH_TIMEOUT_S."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    what = f"{' '.join(argv)} with {processes} process(es)"
    done = run_with_timeout([sys.executable, *launcher, "-m", "pipeline", *argv], LAUNCH_TIMEOUT_S, _env(), what)
    assert done.returncode == 0, f"{what}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The launched processes run with OMP_NUM_THREADS=1; the reference run here does the same
    (float sums in another number of threads may differ in the last bit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_variant(root: Path, name: str, method: str, batch_size: int = 3, val_count: int = 4, **params) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "method": method, "batch_size": batch_size, "params": params,
        "data": {"root": "data/sample", "truth": "data/sample-truth", "val_count": val_count},
    }))
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def predictions(variant: str) -> dict[str, dict[str, bytes]]:
    """{split: {file name: PNG bytes}} of the variant's newest predictions in the workspace."""
    return {folder.name: files(folder) for folder in Path("data/predictions").glob(f"*/{variant}/*")
            if folder.is_dir()}


def test_predict_with_two_processes_writes_what_one_process_writes(workspace):
    write_variant(workspace, "mean2", "mean")
    assert cli.main(["predict", "--variant", "mean2.yaml"]) == 0
    single = predictions("mean2")
    shutil.rmtree("data/predictions")
    done = pipeline("predict", "--variant", "mean2.yaml", processes=2)
    assert predictions("mean2") == single and set(single) == {"val", "test"} and all(single.values())
    assert done.stdout.count("mean2 test:") == 1 and "waiting:" not in done.stderr, done.stdout + done.stderr
    # the two processes split the images (not two processes each running alone)
    (run,) = Path("data/predictions").glob("*/mean2/test/run.json")
    assert json.loads(run.read_text())["processes"] == 2


def test_submit_with_two_processes_writes_the_one_process_csv_and_one_row(workspace):
    write_variant(workspace, "telea2", "telea", radius=3.0)
    assert cli.main(["submit", "--variant", "telea2.yaml"]) == 0
    csv = Path("submissions/telea2.csv").read_bytes()
    shutil.rmtree("data/predictions")
    Path("submissions/telea2.csv").unlink()
    pipeline("submit", "--variant", "telea2.yaml", processes=2)
    assert Path("submissions/telea2.csv").read_bytes() == csv
    board = pd.read_csv("submissions/leaderboard.csv")
    assert list(board["variant"]) == ["telea2", "telea2"]  # one row per run, not one per process
    assert board["val_rmse"].nunique() == 1 and board["sha256"].nunique() == 1


def test_sd_with_two_processes_writes_the_one_process_csv_and_one_row(workspace, tmp_path_factory):
    from pipeline.inpainters import sd
    from tests.tiny_sd import build_tiny_inpaint_pipeline

    model = build_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")
    # one image per call: the same computation in either process, whatever the split
    write_variant(workspace, "sd2", "sd", batch_size=1, val_count=2, model=str(model), steps=2,
                  guidance_scale=1.0, size=256)
    try:
        assert cli.main(["sd", "--variant", "sd2.yaml"]) == 0
    finally:
        sd.release_pipelines()  # the loaded pipeline stays with this test
    csv, single = Path("submissions/sd2.csv").read_bytes(), predictions("sd2")
    shutil.rmtree("data/predictions")
    Path("submissions/sd2.csv").unlink()
    done = pipeline("sd", "--variant", "sd2.yaml", processes=2)
    assert Path("submissions/sd2.csv").read_bytes() == csv and predictions("sd2") == single
    assert list(pd.read_csv("submissions/leaderboard.csv")["variant"]) == ["sd2", "sd2"]
    assert done.stdout.count("sd2: validation RMSE") == 1  # the main process alone reports
