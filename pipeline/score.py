"""Local scores on box pixels: RMSE (the competition's metric, on the 0..1 scale), with the 0..255
RMSE, PSNR and SSIM (scikit-image) beside it, overall and per class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


@dataclass
class Scores:
    rmse: float  # on values/255, as the leaderboard computes it over all box pixels and channels
    rmse_255: float
    psnr: float  # dB, from the pooled MSE over all box pixels
    ssim: float  # mean over boxes
    images: int
    rmse_by_class: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """RMSE of uint8 arrays on the 0..1 scale."""
    diff = prediction.astype(np.float64) - truth.astype(np.float64)
    return float(np.sqrt(np.mean(diff**2)) / 255.0)


def score_boxes(
    prediction: np.ndarray, truth: np.ndarray, labels: Sequence[str | None] | None = None
) -> Scores:
    """Scores of predicted box pixels against the truth.

    prediction, truth: uint8 (N, boxes, S, S, 3). labels: per image class name or None.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    if prediction.size == 0:
        raise ValueError("no box pixels to score")
    error = rmse(prediction, truth)
    psnr = float(peak_signal_noise_ratio(truth, prediction, data_range=255)) if error > 0 else float("inf")
    boxes_pred = prediction.reshape(-1, *prediction.shape[-3:])
    boxes_true = truth.reshape(-1, *truth.shape[-3:])
    ssim = float(np.mean([
        structural_similarity(t, p, channel_axis=-1, data_range=255)
        for t, p in zip(boxes_true, boxes_pred)
    ]))
    by_class: dict[str, float] = {}
    if labels is not None:
        labels_arr = np.array([label or "" for label in labels])
        for label in sorted(set(labels_arr) - {""}):
            rows = labels_arr == label
            by_class[label] = rmse(prediction[rows], truth[rows])
    return Scores(error, error * 255.0, psnr, ssim, len(prediction), by_class)
