"""The competition's files: layout, bbox CSV, and the manifest of train/val/test images.

Layout (what `make data` unzips and `make sample` writes)::

    <root>/train/<class>/*.jpg|jpeg|png     full training photos, one sub-folder per class
    <root>/test/[<class>/]*.jpg|jpeg|png    test photos whose boxes are blanked
    <root>/<bbox csv>.csv                   one row per test box
    <root>/sample_submission.csv            optional: the ids and columns Kaggle expects

When there is no `train/` folder, class folders directly under the root (other than `test/`) are
the training set. The manifest is built in memory from these files and validated as a whole:
nothing is silently skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.config import DataConfig, PipelineError
from pipeline.data.boxes import Box, random_boxes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Accepted bbox CSV column spellings, compared after lower-casing and dropping non-alphanumerics.
IMAGE_COLUMNS = ("imageid", "image", "imagename", "img", "imgid", "filename", "file", "fname",
                 "name", "path", "imagepath", "id")
X0_COLUMNS = ("x", "x1", "xmin", "left", "bboxx", "boxx", "x0")
Y0_COLUMNS = ("y", "y1", "ymin", "top", "bboxy", "boxy", "y0")
X1_COLUMNS = ("x2", "xmax", "right")
Y1_COLUMNS = ("y2", "ymax", "bottom")
W_COLUMNS = ("w", "width", "bboxwidth", "boxwidth")
H_COLUMNS = ("h", "height", "bboxheight", "boxheight")
CLASS_COLUMNS = ("class", "label", "category", "animal", "classname")
BOX_INDEX_COLUMNS = ("box", "boxid", "boxindex", "boxnum", "boxno")


class CompetitionError(PipelineError, ValueError):
    """The competition files are not as expected; the message names the file/row and the fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of the manifest. `label` is its class folder (None when not known)."""

    image_id: str
    path: Path
    label: str | None
    split: str  # "train", "val" or "test"
    boxes: tuple[Box, ...] = ()


@dataclass
class Competition:
    """The validated manifest: training images, the carved validation split, the test set."""

    root: Path
    config: DataConfig
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    bbox_csv: Path
    sample_submission: Path | None = None
    classes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[ImageRecord]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """Decode `path` to uint8 HxWx3 RGB; raises CompetitionError naming the file if it cannot."""
    data = np.fromfile(path, dtype=np.uint8) if path.exists() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise CompetitionError(f"{path}: cannot be decoded as an image; re-download or remove it")
    if size is not None and image.shape[:2] != (size, size):
        raise CompetitionError(
            f"{path}: is {image.shape[1]}x{image.shape[0]}, expected {size}x{size}"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write uint8 HxWx3 RGB `image` (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode image")
    encoded.tofile(path)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_header(path: Path, size: int) -> None:
    """Cheap check (header only) that `path` is an image of size x size."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as exc:  # PIL raises many types for broken files
        raise CompetitionError(f"{path}: cannot be decoded as an image ({exc}); re-download or remove it") from exc
    if (width, height) != (size, size):
        raise CompetitionError(f"{path}: is {width}x{height}, expected {size}x{size}")


def _label_of(path: Path, folder: Path) -> str | None:
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else None


def _norm(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(column).lower())


def _pick(columns: dict[str, str], candidates: tuple[str, ...]) -> str | None:
    return next((columns[c] for c in candidates if c in columns), None)


def find_bbox_csv(root: Path, name: str | None = None) -> Path:
    """The bbox CSV: `name` inside root if given, else the one CSV whose header has box columns."""
    if name:
        path = root / name
        if not path.exists():
            raise CompetitionError(f"{path}: bbox CSV named in the config does not exist")
        return path
    found = []
    for path in sorted(root.rglob("*.csv")):
        if re.fullmatch(r"sample_?submission", path.stem, re.I):
            continue
        try:
            header = {_norm(c) for c in pd.read_csv(path, nrows=0).columns}
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue  # not a readable CSV, so not the bbox file
        if header & set(X0_COLUMNS) and header & (set(W_COLUMNS) | set(X1_COLUMNS)):
            found.append(path)
    if not found:
        raise CompetitionError(
            f"{root}: no bbox CSV found (a .csv with an image column and x/y/width/height or "
            "x1/y1/x2/y2 columns); set data.bbox_csv in the config"
        )
    if len(found) > 1:
        raise CompetitionError(
            f"{root}: several CSVs look like bbox files ({', '.join(map(str, found))}); "
            "set data.bbox_csv in the config to the right one"
        )
    return found[0]


def read_bbox_csv(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """Parse a bbox CSV into columns image, label, box, x, y, w, h (one row per box).

    Accepts an image column (image_id, image, filename, file, name, path, id, ...), and either
    x/y + width/height (w/h) or corners x1/y1/x2/y2 (xmin/ymin/xmax/ymax, left/top/right/bottom;
    end exclusive or inclusive, detected from the box size). Optional: class/label and box index.
    Row numbers in errors are the file's line numbers (header = line 1).
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise CompetitionError(f"{path}: cannot be read as CSV ({exc})") from exc
    columns = {_norm(c): c for c in table.columns}
    image_col = _pick(columns, IMAGE_COLUMNS)
    x0, y0 = _pick(columns, X0_COLUMNS), _pick(columns, Y0_COLUMNS)
    x1, y1 = _pick(columns, X1_COLUMNS), _pick(columns, Y1_COLUMNS)
    w_col, h_col = _pick(columns, W_COLUMNS), _pick(columns, H_COLUMNS)
    if image_col is None or x0 is None or y0 is None or not ((w_col and h_col) or (x1 and y1)):
        raise CompetitionError(
            f"{path}: columns {list(table.columns)} do not name an image and a box; expected an "
            "image column (image_id/filename/...) and x,y,width,height or x1,y1,x2,y2"
        )
    if table.empty:
        raise CompetitionError(f"{path}: has a header but no boxes")

    def numbers(column: str) -> np.ndarray:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = values.isna() | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CompetitionError(
                f"{path}: line {row + 2}: {column}={table[column].iloc[row]!r} is not an integer pixel coordinate"
            )
        return values.to_numpy().astype(np.int64)

    x, y = numbers(x0), numbers(y0)
    if w_col and h_col:
        w, h = numbers(w_col), numbers(h_col)
    else:
        w, h = numbers(x1) - x, numbers(y1) - y
        # corners given inclusive (x2 = x1 + 74 for a 75 box): count the last pixel too
        if (w == cfg.box_size - 1).all() and (h == cfg.box_size - 1).all():
            w, h = w + 1, h + 1
    label_col = _pick(columns, CLASS_COLUMNS)
    box_col = _pick(columns, BOX_INDEX_COLUMNS)
    out = pd.DataFrame(
        {
            "image": table[image_col].str.strip(),
            "label": table[label_col].str.strip() if label_col else None,
            "x": x, "y": y, "w": w, "h": h,
            "line": np.arange(len(table)) + 2,
        }
    )
    out["box"] = numbers(box_col) if box_col else out.groupby("image").cumcount()
    repeated = out.duplicated(["image", "box"])
    if repeated.any():
        row = out[repeated].iloc[0]
        raise CompetitionError(
            f"{path}: line {row.line}: image {row.image!r} has box index {row.box} twice ({box_col} column)"
        )
    for row in out.itertuples():
        where = f"{path}: line {row.line} (image {row.image!r})"
        if not row.image:
            raise CompetitionError(f"{where}: empty image name")
        if (row.w, row.h) != (cfg.box_size, cfg.box_size):
            raise CompetitionError(
                f"{where}: box is {row.w}x{row.h}, expected {cfg.box_size}x{cfg.box_size} "
                "(data.box_size in the config)"
            )
        if not Box(row.x, row.y, row.w, row.h).inside(cfg.image_size, cfg.image_size):
            raise CompetitionError(
                f"{where}: box x={row.x} y={row.y} {row.w}x{row.h} lies outside the "
                f"{cfg.image_size}x{cfg.image_size} image"
            )
    return out


def _test_index(test_images: list[Path], test_root: Path) -> dict[str, Path]:
    """Map every way the bbox CSV may name a test image (relative path, file name, stem) to it."""
    index: dict[str, Path] = {}
    ambiguous: set[str] = set()
    for path in test_images:
        keys = {path.relative_to(test_root).as_posix(), path.name, path.stem}
        for key in keys:
            if key in index and index[key] != path:
                ambiguous.add(key)
            index[key] = path
    for key in ambiguous:
        index.pop(key)
    return index


def carve_validation(train: list[ImageRecord], cfg: DataConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split `train` into (train, val): cfg.val_count images, each with fixed seeded boxes.

    The same seed and file list give the same images and boxes, so every variant is scored on
    exactly the same pixels.
    """
    if cfg.val_count <= 0:
        return train, []
    if cfg.val_count >= len(train):
        raise CompetitionError(
            f"data.val_count={cfg.val_count} leaves no training images out of {len(train)}; lower it"
        )
    rng = np.random.default_rng(cfg.val_seed)
    chosen = set(rng.choice(len(train), size=cfg.val_count, replace=False).tolist())
    kept, val = [], []
    for i, record in enumerate(train):
        if i in chosen:
            try:
                boxes = random_boxes(rng, cfg.image_size, cfg.box_size, cfg.boxes_per_image)
            except ValueError as exc:
                raise CompetitionError(f"validation boxes: {exc}; lower data.boxes_per_image or data.box_size") from exc
            val.append(ImageRecord(record.image_id, record.path, record.label, "val", tuple(boxes)))
        else:
            kept.append(record)
    return kept, val


def load_competition(cfg: DataConfig, check_images: bool = True) -> Competition:
    """Read and validate the competition under cfg.root into a Competition manifest.

    `check_images` decodes every test image and reads every training image's header (size);
    turn it off only where the caller decodes the images itself.
    """
    root = Path(cfg.root)
    if not root.is_dir():
        raise CompetitionError(
            f"{root}: competition folder not found; run `make sample` for the offline sample or "
            "`make data COMPETITION=<slug>` for the real one"
        )
    test_root = root / cfg.test_dir
    train_root = root / cfg.train_dir
    if train_root.is_dir():
        train_paths = _list_images(train_root)
        train_base = train_root
    else:  # class folders straight under the root
        train_base = root
        train_paths = [p for p in _list_images(root) if p.relative_to(root).parts[0] != cfg.test_dir
                       and len(p.relative_to(root).parts) > 1]
    if not train_paths:
        raise CompetitionError(
            f"{root}: no training images (.jpg/.jpeg/.png) under {train_root} or class folders "
            f"under {root}; check the download or data.train_dir"
        )
    if not test_root.is_dir():
        raise CompetitionError(f"{test_root}: test folder not found (data.test_dir in the config)")
    test_paths = _list_images(test_root)
    if not test_paths:
        raise CompetitionError(f"{test_root}: no test images (.jpg/.jpeg/.png)")

    bbox_csv = find_bbox_csv(root, cfg.bbox_csv)
    table = read_bbox_csv(bbox_csv, cfg)
    index = _test_index(test_paths, test_root)
    boxes_by_path: dict[Path, list[tuple[int, Box]]] = {}
    label_by_path: dict[Path, str | None] = {}
    for row in table.itertuples():
        name = row.image.replace("\\", "/")  # paths written on Windows
        path = index.get(name) or index.get(Path(name).name)
        if path is None:
            raise CompetitionError(
                f"{bbox_csv}: line {row.line}: image {row.image!r} is not among the {len(test_paths)} "
                f"images under {test_root} (or its name is shared by two of them)"
            )
        boxes_by_path.setdefault(path, []).append((row.box, Box(row.x, row.y, row.w, row.h), row.line))
        label_by_path[path] = row.label if isinstance(row.label, str) and row.label else None

    stems: dict[str, Path] = {}
    test: list[ImageRecord] = []
    for path in test_paths:
        if path not in boxes_by_path:
            raise CompetitionError(f"{path}: test image has no boxes in {bbox_csv}")
        if path.stem in stems:
            raise CompetitionError(
                f"{path} and {stems[path.stem]}: two test images share the id {path.stem!r}; "
                "submission ids must be unique"
            )
        stems[path.stem] = path
        if any(c in path.stem for c in ',"\n\r'):
            raise CompetitionError(f"{path}: a comma, quote or line break in the name breaks the submission CSV; rename it")
        entries = sorted(boxes_by_path[path], key=lambda t: t[0])
        if len(entries) != cfg.boxes_per_image:
            lines = ", ".join(str(line) for line in sorted(line for _, _, line in entries))
            raise CompetitionError(
                f"{bbox_csv}: image {path.name!r} has {len(entries)} box(es) (lines {lines}), expected "
                f"{cfg.boxes_per_image} (data.boxes_per_image in the config)"
            )
        boxes = tuple(b for _, b, _ in entries)
        label = label_by_path[path] or _label_of(path, test_root)
        test.append(ImageRecord(path.stem, path, label, "test", boxes))
        if check_images:
            read_image(path, cfg.image_size)

    train_records: list[ImageRecord] = []
    train_ids: dict[str, Path] = {}
    for path in train_paths:
        if check_images:
            _check_header(path, cfg.image_size)
        rel = path.relative_to(train_base)
        image_id = "_".join(rel.with_suffix("").parts)  # class folder + stem
        if image_id in train_ids:
            raise CompetitionError(
                f"{path} and {train_ids[image_id]}: both get the id {image_id!r}; rename one "
                "(predictions are stored by id)"
            )
        train_ids[image_id] = path
        train_records.append(ImageRecord(image_id, path, _label_of(path, train_base), "train"))
    train_records, val = carve_validation(train_records, cfg)
    classes = sorted({r.label for r in train_records + val + test if r.label})
    return Competition(root, cfg, train_records, val, test, bbox_csv, find_sample_submission(root), classes)


def find_sample_submission(root: Path) -> Path | None:
    """The competition's sample submission (sample_submission.csv, sampleSubmission.csv, ...)."""
    found = [p for p in sorted(root.rglob("*.csv")) if re.fullmatch(r"sample_?submission", p.stem, re.I)]
    if len(found) > 1:
        raise CompetitionError(f"{root}: several sample submissions ({', '.join(map(str, found))}); keep one")
    return found[0] if found else None
