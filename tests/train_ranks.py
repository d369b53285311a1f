"""`python -m pipeline train` as one rank of `torchrun` whose clock, on rank 0 only, runs 1000x
fast: rank 0 alone reaches params.max_minutes, so every other rank must stop because it did.
Each rank prints a line when it starts the training-photo decode check (one per machine expected).

    torchrun --standalone --nproc_per_node 2 tests/train_ranks.py --variant <yaml>
"""

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline.train  # noqa: E402
from pipeline.cli import main  # noqa: E402

if os.environ.get("RANK") == "0":
    real = time.perf_counter
    pipeline.train.time = SimpleNamespace(perf_counter=lambda: 1000 * real())

real_check = pipeline.train.check_training_images


def check_training_images(*args, **kwargs):
    print(f"decode check on rank {os.environ.get('RANK')}", flush=True)  # counted by the test
    return real_check(*args, **kwargs)


pipeline.train.check_training_images = check_training_images

sys.exit(main(["train", *sys.argv[1:]]))
