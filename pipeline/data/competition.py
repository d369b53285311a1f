"""The competition's files: which layout they follow, and the manifest of train/val/test images.

Two layouts are read (data.layout, `auto` tells them apart):

photo-reconstruction (Kaggle's Photo Reconstruction, as its zip unpacks; the `Dataset/` folder is
found anywhere under data.root)::

    Dataset/Training_Data/<class>/Unmasked_Train/<name>   the training photos
    Dataset/Training_Data/<class>/Masked_Train/<name>     the same photos, two boxes blacked out,
                                                          JPEG-compressed (ringing near the boxes)
    Dataset/Training_Data/<class>/Masked_Train/masked_info.csv   their boxes
    Dataset/Testing_Data/<name>                           masked test photos, one flat folder
    Dataset/Testing_Data/masked_info.csv                  their boxes, one row per image

generic::

    <root>/train/<class>/*.jpg|jpeg|png     training photos, one sub-folder per class (or class
                                            folders straight under the root)
    <root>/test/[<class>/]*.jpg|jpeg|png    test photos whose boxes are blanked
    <root>/<bbox csv>.csv                   the test boxes (pipeline/data/bbox_csv.py)

Either may hold a sample_submission.csv. Names may hold spaces, parentheses and any of the image
extensions, and two files may share a stem: a test image's id is its file name with the
extension. Its class is its folder, or in a flat folder the `label` group of data.label_pattern
matched on its name. The manifest is validated as a whole: nothing is silently skipped.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.config import DataConfig, PipelineError
from pipeline.data.bbox_csv import BboxError, find_bbox_csv, read_bbox_csv
from pipeline.data.boxes import Box, random_boxes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAINING, TESTING = "Training_Data", "Testing_Data"
UNMASKED, MASKED, MASKED_INFO = "Unmasked_Train", "Masked_Train", "masked_info.csv"


class CompetitionError(PipelineError, ValueError):
    """The competition files are not as expected; the message names the file/row and the fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of the manifest.

    path: the photo (train/val: unmasked; test: the competition's masked test image).
    masked_path: the competition's own masked copy of a validation photo, the model's input
    when data.val_inputs is `masked`. label: its class (None when not known).
    """

    image_id: str
    path: Path
    label: str | None
    split: str  # "train", "val" or "test"
    boxes: tuple[Box, ...] = ()
    masked_path: Path | None = None

    @property
    def input_path(self) -> Path:
        """The file a model reads (its boxes are blanked again before use)."""
        return self.masked_path or self.path


@dataclass
class Competition:
    """The validated manifest: training images, the validation split, the test set."""

    root: Path  # the folder named by data.root
    config: DataConfig
    layout: str  # "photo-reconstruction" or "generic"
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    bbox_csv: Path
    test_root: Path
    sample_submission: Path | None = None
    classes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)

    def describe(self) -> str:
        """One line: the folder, its layout, image counts per split, classes and the boxes' CSV."""
        return (f"{self.root}: {self.layout} layout, {len(self.train)} train, {len(self.val)} validation, "
                f"{len(self.test)} test images; classes {', '.join(self.classes)}; boxes from {self.bbox_csv}")


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """Decode `path` to uint8 HxWx3 RGB as stored (any EXIF orientation ignored, as the boxes
    refer to the stored pixels); raises CompetitionError naming the file if it cannot."""
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags) if data is not None and data.size else None
    if image is None:
        raise CompetitionError(f"{path}: cannot be decoded as an image; re-download or remove it")
    if size is not None and image.shape[:2] != (size, size):
        raise CompetitionError(f"{path}: is {image.shape[1]}x{image.shape[0]}, expected {size}x{size}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write uint8 HxWx3 RGB `image` (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"{path}: could not encode image")
    encoded.tofile(path)


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """The .jpg/.jpeg/.png files under `folder`, sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_header(path: Path, size: int) -> None:
    """Cheap check (header only) that `path` is an image of size x size."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as exc:  # PIL raises many types for broken files
        raise CompetitionError(f"{path}: cannot be decoded as an image ({exc}); re-download or remove it") from exc
    if (width, height) != (size, size):
        raise CompetitionError(f"{path}: is {width}x{height}, expected {size}x{size}")


# ---------------------------------------------------------------------------------------------
# The boxes of a masked image sit on its blacked-out pixels

# A pixel is near-black when every channel is <= BLANK_LEVEL; a box is on its hole when at least
# BLANK_FRACTION of its pixels are. On the offline sample a real box scores >= 0.99 (>= 0.967 when
# re-compressed at JPEG quality 20: ringing at the edges); a box moved d px off its hole onto a
# photo that is not dark keeps about (75 - d) / 75: 0.84 at 12 px, 0.79 at 16, less when swapped.
# Where the photo itself is dark a misplaced box passes: it cannot be told, and a dark photo is
# never refused.
BLANK_LEVEL = 48
BLANK_FRACTION = 0.85


@dataclass(frozen=True)
class MaskedImage:
    """A masked image (test image, masked training copy) and its boxes from `csv` (line per box)."""

    path: Path
    boxes: tuple[Box, ...]
    csv: Path
    lines: tuple[int, ...]


def blank_fraction(image: np.ndarray, box: Box) -> float:
    """The fraction of `box`'s pixels in uint8 HxWx3 `image` that are near-black (0..1)."""
    return float((image[box.slices].max(axis=2) <= BLANK_LEVEL).mean())


def _misplaced_boxes(item: MaskedImage, size: int) -> list[tuple[str, bool]]:
    """Decode `item` (CompetitionError if it cannot be, or has the wrong size); for each box that
    does not sit on blacked-out pixels, a line naming it and whether it fits with x and y swapped."""
    image = read_image(item.path, size)
    found = []
    for k, (box, line) in enumerate(zip(item.boxes, item.lines), start=1):
        fraction = blank_fraction(image, box)
        if fraction >= BLANK_FRACTION:
            continue
        swapped = Box(box.y, box.x, box.w, box.h)
        fits_swapped = swapped.inside(size, size) and blank_fraction(image, swapped) >= BLANK_FRACTION
        found.append((f"{item.path}: box {k} at x={box.x} y={box.y} ({item.csv.name} line {line}) is "
                      f"{fraction:.0%} near-black, not blacked out"
                      + (f"; the pixels fit it with rows and columns swapped (x={box.y} y={box.x})"
                         if fits_swapped else ""), fits_swapped))
    return found


def check_masked_boxes(images: list[MaskedImage], size: int) -> None:
    """Decode every masked image (threads: OpenCV releases the GIL) and check that each box
    covers its blacked-out pixels; raises CompetitionError naming the files and boxes that do
    not (a damaged or wrongly sized image first, as read_image words it)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda item: _misplaced_boxes(item, size), images))
    misplaced = [message for found in results for message, _ in found]
    if not misplaced:
        return
    total = sum(len(item.boxes) for item in images)
    swapped = sum(fits for found in results for _, fits in found)
    csvs = ", ".join(sorted({str(item.csv) for item, found in zip(images, results) if found}))
    shown = "\n  ".join(misplaced[:5]) + (f"\n  ... and {len(misplaced) - 5} more" if len(misplaced) > 5 else "")
    advice = (f"every one fits with rows and columns swapped: {csvs} gives x and y the other way round "
              "(box<k>_row is y, box<k>_col is x); fix its header" if swapped == len(misplaced) else
              f"{csvs} and the images disagree: fix the boxes or re-download the competition")
    raise CompetitionError(f"{len(misplaced)} of {total} boxes do not sit on the blacked-out pixels of their "
                           f"masked image:\n  {shown}\n{advice}")


# ---------------------------------------------------------------------------------------------
# Layouts


def find_dataset(root: Path) -> Path | None:
    """The folder holding Training_Data/ and Testing_Data/ (root or below it), or None."""
    if (root / TRAINING).is_dir() and (root / TESTING).is_dir():
        return root
    found = sorted({p.parent for p in root.glob("*/" + TRAINING)} | {p.parent for p in root.glob("*/*/" + TRAINING)}
                   | {p.parent for p in root.glob("*/*/*/" + TRAINING)})
    found = [p for p in found if (p / TESTING).is_dir()]
    if len(found) > 1:
        raise CompetitionError(f"{root}: several {TRAINING}/{TESTING} folders ({', '.join(map(str, found))}); "
                               "name one of them as the data folder")
    return found[0] if found else None


def competition_home(folder: str | Path) -> Path:
    """The folder that holds the competition's files, resolved: data/x and data/x/Dataset are
    one competition (DATA= may name either)."""
    path = Path(str(folder))
    try:
        found = find_dataset(path) if path.is_dir() else None
    except CompetitionError:
        found = None
    return (found or path).resolve()


def holds_other_layout(root: Path) -> bool:
    """`root` exists but holds no Training_Data/ + Testing_Data/ pair (e.g. a sample built in an
    older layout)."""
    return Path(root).is_dir() and find_dataset(Path(root)) is None


def load_competition(cfg: DataConfig, check_images: bool = True) -> Competition:
    """Read and validate the competition under cfg.root into a Competition manifest.

    `check_images` decodes every masked image (the test images, the masked training copies),
    checks that each of its boxes sits on its blacked-out pixels (`check_masked_boxes`), and
    reads every training photo's header (size); turn it off only where the caller decodes the
    images itself.
    """
    root = Path(cfg.root)
    if root.is_file():
        raise CompetitionError(f"{root}: is a file, not a folder; the competition is the folder that holds "
                               f"Dataset/ (or train/ and test/ and the bbox CSV): unpack it if it is an archive")
    if not root.is_dir():
        raise CompetitionError(
            f"{root}: competition folder not found; build the offline sample or download the "
            "competition first"
        )
    dataset = find_dataset(root) if cfg.layout in ("auto", "photo-reconstruction") else None
    if dataset is None and cfg.layout == "photo-reconstruction":
        raise CompetitionError(f"{root}: no {TRAINING}/ and {TESTING}/ folders found (data.layout is "
                               "photo-reconstruction); check the download")
    if dataset is not None:
        competition = _load_photo_reconstruction(root, dataset, cfg, check_images)
    else:
        competition = _load_generic(root, cfg, check_images)
    competition.sample_submission = find_sample_submission(root)
    return competition


def _load_photo_reconstruction(root: Path, dataset: Path, cfg: DataConfig, check_images: bool) -> Competition:
    train_root, test_root = dataset / TRAINING, dataset / TESTING
    candidates: list[ImageRecord] = []
    masked: list[MaskedImage] = []
    for class_dir in sorted(d for d in train_root.iterdir() if d.is_dir()):
        candidates += _training_pairs(class_dir, cfg, check_images, masked)
    if not candidates:
        raise CompetitionError(f"{train_root}: no training images (no class folders with {UNMASKED}/ images); "
                               "check the download")
    train, val = carve_validation(candidates, cfg)
    classes = sorted({r.label for r in candidates})
    test_csv = test_root / MASKED_INFO
    if not test_csv.is_file():
        raise CompetitionError(f"{test_csv}: the test boxes file is missing; check the download")
    test = _test_records(list_images(test_root, recursive=False), test_root, test_csv, cfg, masked,
                         lambda path: _label_from_name(path.name, cfg, classes))
    if check_images:
        check_masked_boxes(masked, cfg.image_size)
    return Competition(root, cfg, "photo-reconstruction", train, val, test, test_csv, test_root, classes=classes)


def _training_pairs(class_dir: Path, cfg: DataConfig, check_images: bool,
                    masked_images: list[MaskedImage]) -> list[ImageRecord]:
    """One class's Unmasked_Train photos, each with its Masked_Train twin and that twin's boxes
    (the twins are appended to `masked_images` for the box check)."""
    unmasked_dir, masked_dir = class_dir / UNMASKED, class_dir / MASKED
    for folder in (unmasked_dir, masked_dir):
        if not folder.is_dir():
            raise CompetitionError(f"{folder}: missing; every class folder needs {UNMASKED}/ and {MASKED}/")
    unmasked = {p.name: p for p in list_images(unmasked_dir)}
    masked = {p.name: p for p in list_images(masked_dir)}
    for name in sorted(set(unmasked) ^ set(masked)):
        have, lack = (unmasked_dir, masked_dir) if name in unmasked else (masked_dir, unmasked_dir)
        raise CompetitionError(f"{have / name}: has no twin {lack / name}; every training photo comes as an "
                               "unmasked and a masked copy of the same name (re-download, or remove both)")
    info = masked_dir / MASKED_INFO
    if not info.is_file():
        raise CompetitionError(f"{info}: missing; it gives the boxes of the {MASKED} images")
    boxes: dict[str, list[tuple[int, Box, int]]] = {}
    for row in _read_boxes(info, cfg).itertuples():
        name = Path(row.image.replace("\\", "/")).name
        if name not in masked:
            raise CompetitionError(f"{info}: line {row.line}: image {row.image!r} is not in {masked_dir}")
        boxes.setdefault(name, []).append((row.box, Box(row.x, row.y, row.w, row.h), row.line))
    records = []
    for name, path in unmasked.items():
        given = sorted(boxes.get(name, []), key=lambda t: t[0])
        if len(given) != cfg.boxes_per_image:
            raise CompetitionError(f"{info}: {name!r} has {len(given)} box(es), expected {cfg.boxes_per_image}")
        if check_images:
            _check_header(path, cfg.image_size)  # the masked twin is decoded by the box check
        records.append(ImageRecord(f"{class_dir.name}_{name}", path, class_dir.name, "train",
                                   tuple(b for _, b, _ in given), masked[name]))
        masked_images.append(MaskedImage(masked[name], tuple(b for _, b, _ in given), info,
                                         tuple(line for _, _, line in given)))
    return records


def _label_from_name(name: str, cfg: DataConfig, classes: list[str]) -> str | None:
    """The class in a flat folder's file name (data.label_pattern), spelled as the class folder."""
    match = re.search(cfg.label_pattern, name)
    if not match or not match.group("label"):
        return None
    label = match.group("label")
    return next((c for c in classes if c.lower() == label.lower()), label)


def _load_generic(root: Path, cfg: DataConfig, check_images: bool) -> Competition:
    test_root, train_root = root / cfg.test_dir, root / cfg.train_dir
    if train_root.is_dir():
        train_paths, train_base = list_images(train_root), train_root
    else:  # class folders straight under the root
        train_base = root
        train_paths = [p for p in list_images(root) if p.relative_to(root).parts[0] != cfg.test_dir
                       and len(p.relative_to(root).parts) > 1]
    if not train_paths:
        raise CompetitionError(
            f"{root}: no training images (.jpg/.jpeg/.png) under {train_root} or class folders "
            f"under {root}, and no {TRAINING}/{TESTING} folders; check the download or data.train_dir"
        )
    if not test_root.is_dir():
        raise CompetitionError(f"{test_root}: test folder not found (data.test_dir in the config)")
    try:
        bbox_csv = find_bbox_csv(root, cfg.bbox_csv)
    except BboxError as exc:
        raise CompetitionError(str(exc)) from None
    train_records: list[ImageRecord] = []
    train_ids: dict[str, Path] = {}
    for path in train_paths:
        if check_images:
            _check_header(path, cfg.image_size)
        rel = path.relative_to(train_base)
        image_id = "_".join(rel.parts)  # class folder + file name
        if image_id in train_ids:
            raise CompetitionError(f"{path} and {train_ids[image_id]}: both get the id {image_id!r}; rename one "
                                   "(predictions are stored by id)")
        train_ids[image_id] = path
        train_records.append(ImageRecord(image_id, path, _folder_label(path, train_base), "train"))
    train, val = carve_validation(train_records, cfg)
    classes = sorted({r.label for r in train_records if r.label})
    masked: list[MaskedImage] = []
    test = _test_records(list_images(test_root), test_root, bbox_csv, cfg, masked,
                         lambda path: _folder_label(path, test_root) or _label_from_name(path.name, cfg, classes))
    if check_images:
        check_masked_boxes(masked, cfg.image_size)
    classes = sorted(set(classes) | {r.label for r in test if r.label})
    return Competition(root, cfg, "generic", train, val, test, bbox_csv, test_root, classes=classes)


def _folder_label(path: Path, folder: Path) -> str | None:
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else None


def _test_records(test_paths: list[Path], test_root: Path, bbox_csv: Path, cfg: DataConfig,
                  masked_images: list[MaskedImage], label_of) -> list[ImageRecord]:
    """The test images with their boxes from `bbox_csv`; ids are file names (extension kept).
    The test images are masked: each is appended to `masked_images` for the box check."""
    if not test_paths:
        raise CompetitionError(f"{test_root}: no test images (.jpg/.jpeg/.png)")
    table = _read_boxes(bbox_csv, cfg)
    names: dict[str, Path] = {}
    for path in test_paths:
        if path.name in names:
            raise CompetitionError(f"{path} and {names[path.name]}: two test images share the name {path.name!r}; "
                                   "submission ids are file names and must be unique")
        names[path.name] = path
    index, shared = _name_index(test_paths, test_root)
    boxes_by_path: dict[Path, list[tuple[int, Box, int]]] = {}
    label_by_path: dict[Path, str | None] = {}
    for row in table.itertuples():
        name = row.image.replace("\\", "/")  # paths written on Windows
        path = index.get(name) or index.get(Path(name).name)
        if path is None:
            raise CompetitionError(_unknown_image(bbox_csv, row, test_paths, test_root, shared))
        boxes_by_path.setdefault(path, []).append((row.box, Box(row.x, row.y, row.w, row.h), row.line))
        label_by_path[path] = row.label if isinstance(row.label, str) and row.label else None
    test = []
    for path in test_paths:
        if path not in boxes_by_path:
            raise CompetitionError(f"{path}: test image has no boxes in {bbox_csv}")
        if any(c in path.name for c in ',"\n\r'):
            raise CompetitionError(f"{path}: a comma, quote or line break in the name breaks the submission CSV; rename it")
        entries = sorted(boxes_by_path[path], key=lambda t: t[0])
        if len(entries) != cfg.boxes_per_image:
            lines = ", ".join(str(line) for line in sorted(line for _, _, line in entries))
            raise CompetitionError(f"{bbox_csv}: image {path.name!r} has {len(entries)} box(es) (lines {lines}), "
                                   f"expected {cfg.boxes_per_image} (data.boxes_per_image in the config)")
        label = label_by_path[path] or label_of(path)
        test.append(ImageRecord(path.name, path, label, "test", tuple(b for _, b, _ in entries)))
        masked_images.append(MaskedImage(path, tuple(b for _, b, _ in entries), bbox_csv,
                                         tuple(line for _, _, line in entries)))
    return test


def _read_boxes(path: Path, cfg: DataConfig):
    try:
        return read_bbox_csv(path, cfg)
    except BboxError as exc:
        raise CompetitionError(str(exc)) from None


def _name_index(paths: list[Path], root: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Map every way a bbox CSV may name an image (relative path, file name, stem) to it; a key
    shared by two images (a stem with two extensions) maps to neither, and is returned apart
    with the images that share it."""
    index: dict[str, Path] = {}
    shared: dict[str, list[Path]] = {}
    for path in paths:
        for key in {path.relative_to(root).as_posix(), path.name, path.stem}:
            if key in index and index[key] != path:
                shared.setdefault(key, [index[key]]).append(path)
            index[key] = path
    for key in shared:
        index.pop(key)
    return index, shared


def _unknown_image(bbox_csv: Path, row, test_paths: list[Path], test_root: Path,
                   shared: dict[str, list[Path]]) -> str:
    """Why a bbox CSV row names no test image: a name two images share, a file of an extension
    that is not read, or no such file."""
    name = row.image.replace("\\", "/")
    where = f"{bbox_csv}: line {row.line}: image {row.image!r}"
    both = shared.get(name) or shared.get(Path(name).name)
    if both:
        return (f"{where} names {len(both)} test images: {', '.join(map(str, both))}; name one of them in full "
                "(with its extension) in the CSV, or rename the other")
    unread = [p for p in (test_root / name, test_root / Path(name).name) if p.is_file()]
    unread += sorted(p for p in test_root.rglob(f"{glob.escape(Path(name).stem)}.*") if p.is_file())
    unread = [p for p in unread if p.suffix.lower() not in IMAGE_SUFFIXES]
    if unread:
        return (f"{where} is {unread[0]}, and {unread[0].suffix or 'a file without an extension'} is not read: "
                f"only {', '.join(IMAGE_SUFFIXES)} images are; convert it (and its name in the CSV) or remove both")
    return (f"{where} is not among the {len(test_paths)} images ({', '.join(IMAGE_SUFFIXES)}) under {test_root}; "
            "check the name, or the download")


def carve_validation(candidates: list[ImageRecord], cfg: DataConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split training photos into (train, val): cfg.val_count held out with fixed boxes.

    A candidate with given boxes (the competition's masked twin) keeps them, and its masked twin
    is the model input unless data.val_inputs is `clean`; one without gets seeded random boxes.
    Training records keep neither (they get fresh random boxes each epoch). The same seed and
    file list give the same images and boxes, so every variant is scored on the same pixels.
    """
    plain = [dataclasses.replace(r, boxes=(), masked_path=None) for r in candidates]
    if cfg.val_count <= 0:
        return plain, []
    if cfg.val_count >= len(candidates):
        raise CompetitionError(
            f"data.val_count={cfg.val_count} leaves no training images out of {len(candidates)}; lower it"
        )
    rng = np.random.default_rng(cfg.val_seed)
    chosen = set(rng.choice(len(candidates), size=cfg.val_count, replace=False).tolist())
    kept, val = [], []
    for i, record in enumerate(candidates):
        if i not in chosen:
            kept.append(plain[i])
            continue
        boxes = record.boxes
        if not boxes:
            try:
                boxes = tuple(random_boxes(rng, cfg.image_size, cfg.box_size, cfg.boxes_per_image))
            except ValueError as exc:
                raise CompetitionError(f"validation boxes: {exc}; lower data.boxes_per_image or data.box_size") from exc
        masked = record.masked_path if cfg.val_inputs == "masked" else None
        val.append(dataclasses.replace(record, split="val", boxes=boxes, masked_path=masked))
    return kept, val


def find_sample_submission(root: Path) -> Path | None:
    """The competition's sample submission (sample_submission.csv, sampleSubmission.csv, ...)."""
    found = [p for p in sorted(root.rglob("*.csv")) if re.fullmatch(r"sample_?submission", p.stem, re.I)]
    if len(found) > 1:
        raise CompetitionError(f"{root}: several sample submissions ({', '.join(map(str, found))}); keep one")
    return found[0] if found else None
