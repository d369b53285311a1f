"""`make gpu-check` (benchmarks/gpu_check.py) on a machine without a GPU: it says so, runs the same
checks for 2 steps with tiny networks on the CPU, writes its table as JSON and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu_and_writes_its_table(workspace):
    out = workspace / "gpu-check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--data", str(workspace / "data/sample"),
         "--configs", "unet-l2", "--loader-batches", "2", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "NO GPU FOUND" in done.stdout
    table = json.loads(out.read_text())
    checks = [row["what"] for row in table["rows"]]
    assert all(row["ok"] for row in table["rows"]), table["rows"]
    assert any("precision fp16" in c for c in checks) and "resume round trip" in checks
    assert "predict + submit on the sample" in checks and "tiny SD pipeline through submit" in checks
    trip = next(row for row in table["rows"] if row["what"] == "resume round trip")
    assert trip["max_weight_diff"] == 0.0  # on the CPU a resumed run ends with the same weights
    assert not list(workspace.glob("checkpoints")) and not (REPO / "checkpoints" / "unet-l2-own").exists()
