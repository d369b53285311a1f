"""The embedded offline sample: a small competition in Photo Reconstruction's own layout, cut from
the photos that ship inside scikit-image (no network).

    data/sample/Dataset/Training_Data/<Class>/Unmasked_Train/<name>   training photos
    data/sample/Dataset/Training_Data/<Class>/Masked_Train/<name>     the same, two boxes blacked
                                                                      out, JPEG-compressed
    data/sample/Dataset/Training_Data/<Class>/Masked_Train/masked_info.csv
    data/sample/Dataset/Testing_Data/<name> + masked_info.csv          masked test photos, flat
    data/sample-truth/<name>.png                                       their unmasked originals

Names follow the real ones (`Cat-Train (12).jpeg`, `Space (3).png`: spaces, parentheses, mixed
extensions) and two test files share a stem, so every path a real run takes is exercised.
Each source photo is cut into 256x256 images by random square crops at several scales and random
horizontal flips; sources are split by photo, so no photo appears in both train and test, except
for a few planted copies (`PLANTED`): test images that are training photos again, re-encoded,
flipped, rotated, slightly resized or shifted and recoloured, as real photo collections hold them
(`data/sample-truth/copies.csv` lists them). They come after the other test images and draw on
their own random numbers, so every other image and box is what it was without them.
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
from pipeline.data.boxes import Box, apply_mask, boxes_mask, random_boxes
from pipeline.data.competition import MASKED, MASKED_INFO, TESTING, TRAINING, UNMASKED, write_image
from pipeline.files import replace_folder

MASK_JPEG_QUALITY = 75  # the masked copies' compression: ringing near the boxes, as in the real files
SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class SourcePhoto:
    name: str  # skimage.data loader
    label: str  # class folder
    split: str  # "train" or "test": a photo never feeds both


SOURCES = (
    SourcePhoto("chelsea", "Cat", "train"),
    SourcePhoto("astronaut", "Person", "train"),
    SourcePhoto("camera", "Person", "test"),
    SourcePhoto("coffee", "Object", "train"),
    SourcePhoto("rocket", "Object", "train"),
    SourcePhoto("hubble_deep_field", "Space", "train"),
    SourcePhoto("moon", "Space", "test"),
    SourcePhoto("brick", "Texture", "train"),
    SourcePhoto("grass", "Texture", "train"),
    SourcePhoto("gravel", "Texture", "test"),
    SourcePhoto("immunohistochemistry", "Microscopy", "train"),
    SourcePhoto("retina", "Microscopy", "test"),
)


@dataclass(frozen=True)
class PlantedCopy:
    label: str  # the training photo's class folder
    number: int  # its number in that class (1 = the first written; the tests' sample has 6 per photo)
    kind: str  # what was done to it: exact | jpeg | flip | rot90 | resize | shift-colour
    transform: int  # the D4 transform (pipeline.duplicates.TRANSFORMS) that maps the photo onto the copy


PLANTED = (
    PlantedCopy("Cat", 2, "exact", 0),
    PlantedCopy("Object", 3, "jpeg", 0),
    PlantedCopy("Person", 4, "flip", 4),
    PlantedCopy("Texture", 5, "rot90", 1),
    PlantedCopy("Microscopy", 1, "resize", 0),
    PlantedCopy("Space", 6, "shift-colour", 0),
)
COPIES_FILE = "copies.csv"  # in the truth folder: test name, training photo, kind, transform


def _planted(image: np.ndarray, kind: str) -> np.ndarray:
    """The planted copy of a training photo (before the test set's own masking and JPEG)."""
    size = image.shape[0]
    if kind == "exact":
        return image
    if kind == "jpeg":
        return jpeg_round_trip(image, 40)
    if kind == "flip":
        return jpeg_round_trip(np.ascontiguousarray(image[:, ::-1]), 60)
    if kind == "rot90":
        return np.ascontiguousarray(np.rot90(image, 1))
    if kind == "resize":  # 4% larger, centre crop
        big = cv2.resize(image, (266, 266), interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(big[5 : 5 + size, 5 : 5 + size])
    if kind == "shift-colour":  # 2% larger, off-centre crop, dimmer and lifted
        big = cv2.resize(image, (261, 261), interpolation=cv2.INTER_CUBIC)
        crop = big[3 : 3 + size, 5 : 5 + size].astype(np.float32)
        return np.clip(np.round(0.9 * crop + 12), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown planted copy kind {kind!r}")


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


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 HxWx3 RGB as it decodes after JPEG compression at `quality`."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _masked_copy(image: np.ndarray, boxes: list[Box], size: int) -> np.ndarray:
    """The competition's masked copy: boxes blacked out, then JPEG-compressed."""
    return jpeg_round_trip(apply_mask(image, boxes_mask(boxes, size, size)), MASK_JPEG_QUALITY)


def _write_masked(path: Path, masked: np.ndarray) -> None:
    # a .jpg/.jpeg name is written as JPEG; a .png name keeps the already-compressed pixels
    write_image(path, masked, jpeg_quality=100)


def _name(label: str, number: int, split: str) -> str:
    """A name shaped like the real ones: `Cat-Train (12).jpeg`, `Space (3).png`."""
    stem = f"{label}-Train ({number})" if (number + (split == "test")) % 3 else f"{label} ({number})"
    return stem + SUFFIXES[number % len(SUFFIXES)]


def _info_rows(name: str, boxes: list[Box]) -> dict:
    row = {"filename": name}
    for k, box in enumerate(boxes, start=1):
        row[f"box{k}_row"], row[f"box{k}_col"] = box.y, box.x
    return row


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
    train_dir, test_dir = staging_root / "Dataset" / TRAINING, staging_root / "Dataset" / TESTING
    size = cfg.image_size
    train_info: dict[str, list[dict]] = {}
    test_info: list[dict] = []
    numbers: dict[tuple[str, str], int] = {}
    twin_written = False
    planted_sources: dict[tuple[str, int], tuple[str, np.ndarray]] = {}

    def write_test(name: str, image: np.ndarray, boxes: list[Box]) -> None:
        _write_masked(test_dir / name, _masked_copy(image, boxes, size))
        write_image(staging_truth / f"{name}.png", image)
        test_info.append(_info_rows(name, boxes))

    for source in tqdm(SOURCES, desc="sample photos", unit="photo"):
        photo = _load_rgb(source.name)
        count = train_per_photo if source.split == "train" else test_per_photo
        for _ in range(count):
            image = _random_crop(photo, rng, size)
            boxes = random_boxes(rng, size, cfg.box_size, cfg.boxes_per_image)
            key = (source.label, source.split)
            numbers[key] = numbers.get(key, 0) + 1
            name = _name(source.label, numbers[key], source.split)
            if source.split == "test":
                write_test(name, image, boxes)
                if not twin_written and name.endswith(".jpg"):
                    # the real test set has a stem with two extensions; so does the sample
                    twin = _random_crop(photo, rng, size)
                    write_test(name[: -len(".jpg")] + ".jpeg", twin,
                               random_boxes(rng, size, cfg.box_size, cfg.boxes_per_image))
                    twin_written = True
                continue
            class_dir = train_dir / source.label
            if any((p.label, p.number) == (source.label, numbers[key]) for p in PLANTED):
                planted_sources[(source.label, numbers[key])] = (name, image)
            write_image(class_dir / UNMASKED / name, image)
            _write_masked(class_dir / MASKED / name, _masked_copy(image, boxes, size))
            train_info.setdefault(source.label, []).append(_info_rows(name, boxes))
    # the planted copies last, from their own random numbers: the images above stay as they were
    planted_rng = np.random.default_rng([seed, 1])
    copies = []
    for planted in PLANTED:
        if (planted.label, planted.number) not in planted_sources:
            continue  # a sample too small to hold that photo
        photo_name, photo = planted_sources[(planted.label, planted.number)]
        key = (planted.label, "test")
        numbers[key] = numbers.get(key, 0) + 1
        name = _name(planted.label, numbers[key], "test")
        write_test(name, _planted(photo, planted.kind), random_boxes(planted_rng, size, cfg.box_size, cfg.boxes_per_image))
        copies.append({"test_image": name, "photo": f"{planted.label}_{photo_name}", "kind": planted.kind,
                       "transform": planted.transform})
    pd.DataFrame(copies, columns=["test_image", "photo", "kind", "transform"]).to_csv(
        staging_truth / COPIES_FILE, index=False)
    for label, rows in train_info.items():
        pd.DataFrame(rows).to_csv(train_dir / label / MASKED / MASKED_INFO)  # with pandas' index, as the real file
    pd.DataFrame(test_info).to_csv(test_dir / MASKED_INFO)
    for staging, final in ((staging_root, root), (staging_truth, truth)):
        replace_folder(staging, final)
    return root
