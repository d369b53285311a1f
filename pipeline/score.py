"""Local scores on box pixels: RMSE (the competition's metric, on the 0..1 scale), with the 0..255
RMSE, PSNR and SSIM (scikit-image) beside it, overall and per class; and scoring a split's
predictions against its truth, refused when they were made on other images or boxes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.config import ConfigError
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, read_image
from pipeline.data.predictions import load_prediction, prediction_dir
from pipeline.next_step import NextStep


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


def split_fingerprint(competition: Competition, split: str) -> str:
    """A digest of what a split's scores depend on: the data folder, each image's id, boxes,
    input and truth files (path, size, modification time). Predictions made on anything else
    (another folder, seed, val_count, a rebuilt sample) do not match."""
    def stat(path: Path) -> list:
        try:
            info = path.stat()
        except OSError:
            return [str(path), None]
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]

    entries = []
    for record in competition.split(split):
        files = [record.input_path] + ([truth_path(competition, record)] if split == "val" else [])
        entries.append([record.image_id, [b.as_xyxy() for b in record.boxes]] + [stat(p) for p in files])
    text = json.dumps([str(Path(competition.root).resolve()), entries])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def truth_path(competition: Competition, record: ImageRecord) -> Path:
    """Where the unmasked image of `record` lies: the photo itself for val, data.truth for test
    (`<truth>/<test name>`, or `<truth>/<test name>.png` as the sample writes it)."""
    if record.split != "test":
        return record.path
    truth_root = competition.config.truth
    if truth_root is None:
        raise CompetitionError(
            "no ground truth for the test set (data.truth is unset): score on the validation split"
        )
    rel = record.path.relative_to(competition.test_root)
    for path in (Path(truth_root) / rel, Path(truth_root) / f"{rel}.png"):
        if path.is_file():
            return path
    raise CompetitionError(f"{Path(truth_root) / rel}(.png): ground truth of test image {record.image_id} not found")


def truth_boxes(competition: Competition, records: Sequence[ImageRecord]) -> np.ndarray:
    """uint8 (N, boxes, S, S, 3): the true pixels of each record's boxes."""
    size = competition.config.image_size
    return np.stack([box_pixels(read_image(truth_path(competition, r), size), r.boxes) for r in records])


def score_split(competition: Competition, split: str, folder: Path, variant_name: str | None = None) -> Scores:
    """Score the predictions in `folder` against the truth of `split`.

    Refuses predictions made on other images or boxes (another data folder, val_count or seed,
    a rebuilt sample): outside the current boxes a prediction is the untouched photo, so it
    would score near zero.
    """
    records = competition.split(split)
    if not records:
        raise CompetitionError(f"the {split} split is empty (data.val_count = 0?); score a CSV instead")
    run_file = Path(folder) / "run.json"
    name = variant_name or Path(folder).parent.name
    if not run_file.exists():
        raise CompetitionError(f"{name} has no {split} predictions for {competition.root} ({folder}); "
                               "predict or submit it first")
    if json.loads(run_file.read_text()).get("split_fingerprint") != split_fingerprint(competition, split):
        raise CompetitionError(
            f"{folder}: {name}'s predictions were made on other {split} images, boxes or files than "
            f"{competition.root} holds now (rebuilt data, data.val_count / val_seed changed); predict it again"
        )
    size = competition.config.image_size
    predicted = np.stack([box_pixels(load_prediction(folder, r, size), r.boxes) for r in records])
    return score_boxes(predicted, truth_boxes(competition, records), [r.label for r in records])


def score_variant(variant_name: str, competition: Competition, data_root: str | Path | None = None) -> Scores:
    """Scores of the variant's validation predictions on `competition` (ConfigError saying what
    to run when the split is empty or the variant was never predicted there; `data_root` is
    how the person named the data folder, for that message)."""
    if not competition.val:
        raise ConfigError(f"{variant_name}: the validation split of {competition.root} is empty (data.val_count "
                          "is 0); score a submission against known test truth with "
                          f"`{NextStep('score', {'csv': '<file>'})}`")
    folder = prediction_dir(variant_name, "val", competition)
    if not (folder / "run.json").exists():
        raise ConfigError(f"{variant_name} was never predicted on {competition.root}: run "
                          f"`{NextStep('submit', {'variant': variant_name, 'data': data_root})}`")
    return score_split(competition, "val", folder, variant_name)


def score_csv(csv: Path, competition: Competition) -> Scores:
    """Validate the submission `csv`, then score it against the test truth (data.truth)."""
    from pipeline.submission import read_submission, submission_spec, validate_submission

    spec = submission_spec(competition)
    validate_submission(Path(csv), competition, spec=spec)
    return score_boxes(read_submission(Path(csv), competition, spec), truth_boxes(competition, competition.test),
                       [r.label for r in competition.test])
