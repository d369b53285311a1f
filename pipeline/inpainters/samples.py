"""The posterior mean of a stochastic method: several seeded predictions of an image, averaged.

RMSE is minimised by the mean of the distribution a method samples from, not by one sample of it;
`samples: N` (SD, and trainable families with `mc_dropout: true`) predicts each image N times,
sample k seeded from (seed + k, image id), and keeps the rounded mean. Sample k of a run with
`samples: N, seed: s` is the single prediction of `samples: 1, seed: s + k`.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def seed_for(seed: int, image_id: str, box: int | None = None) -> int:
    """A 63-bit seed from (seed, image id[, box]): the same whatever batch or process runs it."""
    key = f"{seed}/{image_id}" + ("" if box is None else f"/{box}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") & (2**63 - 1)


def mean_image(samples: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 images of one shape (the samples) -> their mean, rounded to uint8."""
    stack = np.stack(samples).astype(np.float64)
    return np.clip(np.round(stack.mean(axis=0)), 0, 255).astype(np.uint8)
