"""The embedded offline sample: a small competition in the real one's layout, from the photos
that ship inside scikit-image (no network).

Each source photo is cut into 256x256 images by random square crops at several scales and random
horizontal flips. Sources are split by photo, so no photo appears in both train and test. Test
images get two random 75x75 boxes (written to bboxes.csv) and are saved with the boxes blanked;
their unmasked originals go to a separate ground-truth folder for local scoring.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import skimage.data
from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.data.boxes import apply_mask, boxes_mask, random_boxes
from pipeline.data.competition import write_image


@dataclass(frozen=True)
class SourcePhoto:
    name: str  # skimage.data loader
    label: str  # class folder
    split: str  # "train" or "test": a photo never feeds both


SOURCES = (
    SourcePhoto("chelsea", "cat", "train"),
    SourcePhoto("astronaut", "person", "train"),
    SourcePhoto("camera", "person", "test"),
    SourcePhoto("coffee", "object", "train"),
    SourcePhoto("rocket", "object", "train"),
    SourcePhoto("hubble_deep_field", "space", "train"),
    SourcePhoto("moon", "space", "test"),
    SourcePhoto("brick", "texture", "train"),
    SourcePhoto("grass", "texture", "train"),
    SourcePhoto("gravel", "texture", "test"),
    SourcePhoto("immunohistochemistry", "microscopy", "train"),
    SourcePhoto("retina", "microscopy", "test"),
)


def _load_rgb(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _random_crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop covering 45..100% of the photo's short side, resized to size."""
    short = min(photo.shape[:2])
    side = int(short * rng.uniform(0.45, 1.0))
    y = int(rng.integers(0, photo.shape[0] - side + 1))
    x = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = photo[y : y + side, x : x + side]
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    out = cv2.resize(crop, (size, size), interpolation=interp)
    return out[:, ::-1] if rng.random() < 0.5 else out


def build_sample(
    cfg: DataConfig,
    train_per_photo: int = 40,
    test_per_photo: int = 10,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write the sample competition to cfg.root and its ground truth to cfg.truth.

    Deterministic given `seed`. Returns cfg.root. An existing sample is left alone unless
    `force`; the folders are built beside the target and renamed into place, so an interrupted
    run never leaves half a sample.
    """
    root, truth = Path(cfg.root), Path(cfg.truth) if cfg.truth else None
    if truth is None:
        raise ValueError("data.truth must name a folder for the sample's ground truth")
    if root.exists() and truth.exists() and not force:
        return root
    rng = np.random.default_rng(seed)
    staging_root = root.with_name(root.name + ".partial")
    staging_truth = truth.with_name(truth.name + ".partial")
    for folder in (staging_root, staging_truth):
        shutil.rmtree(folder, ignore_errors=True)

    rows = []
    for source in tqdm(SOURCES, desc="sample photos", unit="photo"):
        photo = _load_rgb(source.name)
        count = train_per_photo if source.split == "train" else test_per_photo
        for k in range(count):
            image = _random_crop(photo, rng, cfg.image_size)
            image_id = f"{source.name}_{k:03d}"
            if source.split == "train":
                write_image(staging_root / cfg.train_dir / source.label / f"{image_id}.jpg", image)
                continue
            boxes = random_boxes(rng, cfg.image_size, cfg.box_size, cfg.boxes_per_image)
            masked = apply_mask(image, boxes_mask(boxes, cfg.image_size, cfg.image_size))
            # PNG keeps the test pixels exact, so the masked input and the truth agree outside the boxes
            write_image(staging_root / cfg.test_dir / source.label / f"{image_id}.png", masked)
            write_image(staging_truth / source.label / f"{image_id}.png", image)
            for b, box in enumerate(boxes):
                rows.append({"image_id": image_id, "class": source.label, "box": b,
                             "x": box.x, "y": box.y, "width": box.w, "height": box.h})
    pd.DataFrame(rows).to_csv(staging_root / "bboxes.csv", index=False)

    for staging, final in ((staging_root, root), (staging_truth, truth)):
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
    return root
