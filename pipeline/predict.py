"""Predictions: run a variant's inpainter over a split and keep its composited images.

    data/predictions/<variant>/<split>/<image_id>.png   uint8 RGB, box pixels from the method,
                                                        every other pixel from the input
    data/predictions/<variant>/<split>/run.json         variant config, images, seconds per image

`val` inputs are training photos with the fixed validation boxes blanked; `test` inputs are the
competition's test images (boxes re-blanked, so every method sees the same fill whatever the
competition used).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.config import VariantConfig
from pipeline.data.boxes import apply_mask, box_pixels, boxes_mask
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, read_image, write_image
from pipeline.inpainters.base import InpaintBatch, Inpainter, build_inpainter, composite
from pipeline.score import Scores, score_boxes

PREDICTIONS_DIR = Path("data/predictions")


@dataclass
class PredictionRun:
    folder: Path
    images: int
    seconds_per_image: float


def prediction_dir(variant_name: str, split: str, root: Path = PREDICTIONS_DIR) -> Path:
    return Path(root) / variant_name / split


def masked_batches(records: Sequence[ImageRecord], size: int, batch_size: int) -> Iterator[tuple[list[ImageRecord], InpaintBatch]]:
    """Batches of method inputs for `records` (val or test), in order."""
    for start in range(0, len(records), batch_size):
        chunk = list(records[start : start + batch_size])
        images, masks = [], []
        for record in chunk:
            mask = boxes_mask(record.boxes, size, size)
            images.append(apply_mask(read_image(record.path, size), mask))
            masks.append(mask)
        yield chunk, InpaintBatch(
            np.stack(images), np.stack(masks), [r.boxes for r in chunk], [r.label for r in chunk],
            [r.image_id for r in chunk],
        )


def predict_split(
    variant: VariantConfig,
    competition: Competition,
    split: str,
    inpainter: Inpainter | None = None,
    root: Path = PREDICTIONS_DIR,
    progress: bool = True,
) -> PredictionRun:
    """Predict every image of `split` ("val" or "test") and write the composited PNGs.

    The folder is written beside its final place and renamed over it when complete, so a killed
    run leaves the previous predictions intact.
    """
    if split not in ("val", "test"):
        raise ValueError(f"predict val or test, not {split!r}")
    records = competition.split(split)
    if not records:
        raise CompetitionError(f"{competition.root}: split {split!r} is empty (data.val_count?)")
    inpainter = inpainter or build_inpainter(variant)
    final = prediction_dir(variant.name, split, root)
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    size = competition.config.image_size
    seconds = 0.0
    bar = tqdm(total=len(records), desc=f"{variant.name} {split}", unit="img", disable=not progress)
    for chunk, batch in masked_batches(records, size, variant.batch_size):
        start = time.perf_counter()
        outputs = composite(batch.masked_images, batch.masks, inpainter.inpaint(batch))
        seconds += time.perf_counter() - start
        for record, image in zip(chunk, outputs):
            write_image(staging / f"{record.image_id}.png", image)
        bar.update(len(chunk))
    bar.close()
    run = PredictionRun(final, len(records), seconds / len(records))
    (staging / "run.json").write_text(json.dumps(
        {"variant": variant.to_dict(), "split": split, "images": run.images,
         "seconds_per_image": run.seconds_per_image}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return run


def load_run(variant_name: str, split: str, root: Path = PREDICTIONS_DIR) -> dict:
    path = prediction_dir(variant_name, split, root) / "run.json"
    if not path.exists():
        raise CompetitionError(f"{path}: no predictions; run `make predict VARIANT={variant_name}` first")
    return json.loads(path.read_text())


def load_prediction(folder: Path, record: ImageRecord, size: int) -> np.ndarray:
    path = Path(folder) / f"{record.image_id}.png"
    if not path.exists():
        raise CompetitionError(f"{path}: prediction missing; re-run `make predict`")
    return read_image(path, size)


def truth_path(competition: Competition, record: ImageRecord) -> Path:
    """Where the unmasked image of `record` lies: the photo itself for val, data.truth for test."""
    if record.split != "test":
        return record.path
    truth_root = competition.config.truth
    if truth_root is None:
        raise CompetitionError(
            "no ground truth for the test set (data.truth is unset): score on the validation split"
        )
    path = Path(truth_root) / record.path.relative_to(competition.root / competition.config.test_dir)
    if not path.exists():
        raise CompetitionError(f"{path}: ground truth of test image {record.image_id} not found")
    return path


def truth_boxes(competition: Competition, records: Sequence[ImageRecord]) -> np.ndarray:
    """uint8 (N, boxes, S, S, 3): the true pixels of each record's boxes."""
    size = competition.config.image_size
    return np.stack([box_pixels(read_image(truth_path(competition, r), size), r.boxes) for r in records])


def score_split(competition: Competition, split: str, folder: Path) -> Scores:
    """Score the predictions in `folder` against the truth of `split`."""
    records = competition.split(split)
    size = competition.config.image_size
    predicted = np.stack([box_pixels(load_prediction(folder, r, size), r.boxes) for r in records])
    return score_boxes(predicted, truth_boxes(competition, records), [r.label for r in records])
