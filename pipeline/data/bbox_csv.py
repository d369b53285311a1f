"""Bbox CSVs: which file holds the test boxes, and its rows read into one row per box.

Two shapes are read, with column names compared after lower-casing and dropping non-alphanumerics:

* long, one row per box: an image column and x/y + width/height or corners x1/y1/x2/y2 (end
  exclusive, or inclusive when every box spans box_size - 1), optional class and box index;
* wide, one row per image (Photo Reconstruction's `masked_info.csv`, written by pandas with its
  index): an image column and `box<k>_row`/`box<k>_col` (row = y, col = x of the top-left corner)
  or `box<k>_x`/`box<k>_y` for any k; boxes are data.box_size square, numbered in k order. An
  unnamed index column is ignored.

Errors name the file and its line (header = line 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig, PipelineError
from pipeline.data.boxes import Box

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
WIDE_COLUMN = re.compile(r"^box(\d+)(row|col|x|y)$")
COORDINATE_LIMIT = 1 << 20  # pixels: no photo is this large, and int64 arithmetic on boxes stays exact


class BboxError(PipelineError, ValueError):
    """A bbox CSV that cannot be used; the message names the file and line."""


def _norm(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(column).lower())


def _pick(columns: dict[str, str], candidates: tuple[str, ...]) -> str | None:
    return next((columns[c] for c in candidates if c in columns), None)


def _wide_columns(columns: dict[str, str]) -> dict[int, dict[str, str]]:
    """{k: {"row"|"col"|"x"|"y": column}} of the wide form's box columns."""
    boxes: dict[int, dict[str, str]] = {}
    for norm, column in columns.items():
        match = WIDE_COLUMN.match(norm)
        if match:
            boxes.setdefault(int(match.group(1)), {})[match.group(2)] = column
    return boxes


def looks_like_bbox_header(columns) -> bool:
    """Whether a CSV header names an image and boxes in one of the accepted shapes."""
    norm = {_norm(c): c for c in columns}
    if _pick(norm, IMAGE_COLUMNS) is None:
        return False
    if _wide_columns(norm):
        return True
    return bool(set(norm) & set(X0_COLUMNS) and set(norm) & (set(W_COLUMNS) | set(X1_COLUMNS)))


def find_bbox_csv(root: Path, name: str | None = None) -> Path:
    """The bbox CSV: `name` inside root if given, else the one CSV whose header has box columns."""
    if name:
        path = root / name
        if not path.exists():
            raise BboxError(f"{path}: bbox CSV named in the config (data.bbox_csv) does not exist")
        return path
    found, refused = [], []
    for path in sorted(root.rglob("*.csv")):
        if re.fullmatch(r"sample_?submission", path.stem, re.I):
            continue
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            refused.append(f"{path.name}: {type(exc).__name__}")
            continue
        if looks_like_bbox_header(header):
            found.append(path)
        else:
            refused.append(f"{path.name}: header {list(header)}")
    if not found:
        seen = f"; CSVs seen: {'; '.join(refused)}" if refused else "; there is no .csv file at all"
        raise BboxError(
            f"{root}: no bbox CSV found (a .csv with an image column and x,y,width,height, x1,y1,x2,y2, "
            f"or box1_row,box1_col,... columns, comma-separated){seen}; fix it or set data.bbox_csv"
        )
    if len(found) > 1:
        raise BboxError(
            f"{root}: several CSVs look like bbox files ({', '.join(map(str, found))}); "
            "set data.bbox_csv in the config to the right one"
        )
    return found[0]


def read_bbox_csv(path: Path, cfg: DataConfig) -> pd.DataFrame:
    """Parse a bbox CSV (long or wide) into columns image, label, box, x, y, w, h, line.

    One output row per box; `box` is the box's index within its image (0-based), `line` the
    file line it came from. Every box is checked for size and position.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise BboxError(f"{path}: the file is empty; expected a header and one row per box or image") from exc
    except Exception as exc:
        raise BboxError(f"{path}: cannot be read as CSV ({exc})") from exc
    columns = {_norm(c): c for c in table.columns}
    image_col = _pick(columns, IMAGE_COLUMNS)
    wide = _wide_columns(columns)
    if image_col is None or not (wide or _long_columns(columns)):
        hint = " (it looks semicolon- or tab-separated: save it comma-separated)" if len(table.columns) == 1 and re.search(
            r"[;\t]", str(table.columns[0])) else ""
        raise BboxError(
            f"{path}: columns {list(table.columns)} do not name an image and a box{hint}; expected an "
            "image column (image_id/filename/...) and x,y,width,height, x1,y1,x2,y2, or box1_row,box1_col,..."
        )
    if table.empty:
        raise BboxError(f"{path}: has a header but no boxes")
    out = _read_wide(path, table, image_col, wide, cfg) if wide else _read_long(path, table, image_col, columns, cfg)
    repeated = out.duplicated(["image", "box"])
    if repeated.any():
        row = out[repeated].iloc[0]
        raise BboxError(f"{path}: line {row.line}: image {row.image!r} has box index {row.box} twice")
    for row in out.itertuples():
        where = f"{path}: line {row.line} (image {row.image!r})"
        if not row.image:
            raise BboxError(f"{where}: empty image name")
        if (row.w, row.h) != (cfg.box_size, cfg.box_size):
            raise BboxError(f"{where}: box is {row.w}x{row.h}, expected {cfg.box_size}x{cfg.box_size} "
                            "(data.box_size in the config)")
        if not Box(row.x, row.y, row.w, row.h).inside(cfg.image_size, cfg.image_size):
            raise BboxError(f"{where}: box x={row.x} y={row.y} {row.w}x{row.h} lies outside the "
                            f"{cfg.image_size}x{cfg.image_size} image")
    return out


def _long_columns(columns: dict[str, str]) -> tuple | None:
    x0, y0 = _pick(columns, X0_COLUMNS), _pick(columns, Y0_COLUMNS)
    x1, y1 = _pick(columns, X1_COLUMNS), _pick(columns, Y1_COLUMNS)
    w, h = _pick(columns, W_COLUMNS), _pick(columns, H_COLUMNS)
    if x0 is None or y0 is None or not ((w and h) or (x1 and y1)):
        return None
    return x0, y0, x1, y1, w, h


def _numbers(path: Path, table: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(table[column].str.strip(), errors="coerce")
    bad = values.isna() | (values != values.round())
    # beyond any image: as int64 a huge number would wrap (1e30 became y=-9223372036854775808)
    huge = ~bad & (values.abs() > COORDINATE_LIMIT)
    if (bad | huge).any():
        row = int(np.flatnonzero((bad | huge).to_numpy())[0])
        shown = table[column].iloc[row]
        what = ("empty" if not shown.strip() else f"out of range (pixel coordinates are below {COORDINATE_LIMIT})"
                if huge.iloc[row] else "not an integer pixel coordinate")
        raise BboxError(f"{path}: line {row + 2}: {column}={shown!r} is {what}; mend that line")
    return values.to_numpy().astype(np.int64)


def _read_long(path: Path, table: pd.DataFrame, image_col: str, columns: dict[str, str], cfg: DataConfig) -> pd.DataFrame:
    x0, y0, x1, y1, w_col, h_col = _long_columns(columns)
    x, y = _numbers(path, table, x0), _numbers(path, table, y0)
    if w_col and h_col:
        w, h = _numbers(path, table, w_col), _numbers(path, table, h_col)
    else:
        w, h = _numbers(path, table, x1) - x, _numbers(path, table, y1) - y
        # corners given inclusive (x2 = x1 + 74 for a 75 box): count the last pixel too
        if (w == cfg.box_size - 1).all() and (h == cfg.box_size - 1).all():
            w, h = w + 1, h + 1
    label_col, box_col = _pick(columns, CLASS_COLUMNS), _pick(columns, BOX_INDEX_COLUMNS)
    out = pd.DataFrame({
        "image": table[image_col].str.strip(),
        "label": table[label_col].str.strip() if label_col else None,
        "x": x, "y": y, "w": w, "h": h, "line": np.arange(len(table)) + 2,
    })
    out["box"] = _numbers(path, table, box_col) if box_col else out.groupby("image").cumcount()
    return out


def _read_wide(path: Path, table: pd.DataFrame, image_col: str, wide: dict[int, dict[str, str]],
               cfg: DataConfig) -> pd.DataFrame:
    label_col = _pick({_norm(c): c for c in table.columns}, CLASS_COLUMNS)
    parts = []
    for index, k in enumerate(sorted(wide)):
        cols = wide[k]
        if {"row", "col"} <= set(cols):
            y_col, x_col = cols["row"], cols["col"]
        elif {"x", "y"} <= set(cols):
            y_col, x_col = cols["y"], cols["x"]
        else:
            raise BboxError(f"{path}: box {k} has columns {sorted(cols.values())}; expected box{k}_row and "
                            f"box{k}_col (or box{k}_x and box{k}_y)")
        parts.append(pd.DataFrame({
            "image": table[image_col].str.strip(),
            "label": table[label_col].str.strip() if label_col else None,
            "x": _numbers(path, table, x_col), "y": _numbers(path, table, y_col),
            "w": cfg.box_size, "h": cfg.box_size, "line": np.arange(len(table)) + 2, "box": index,
        }))
    return pd.concat(parts).sort_values(["line", "box"], kind="stable").reset_index(drop=True)
