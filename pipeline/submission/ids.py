"""Submission ids: the canonical ids of each test image, written fast, and any id parsed back.

A key is one int64 per expected (image, box, row, col, channel), in the writer's order: image
by image, box by box, row-major, channel fastest. Keys count ids: summing a hash of every key
detects a missing or repeated id without holding the file in memory.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.competition import ImageRecord
from pipeline.submission.formats import SubmissionFormat

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_NUMBER = "0|[1-9][0-9]*"  # no leading zeros: "07" is not an id Kaggle expects


class IdError(ValueError):
    """A record set that a format cannot name (two test images with one stem under {stem})."""


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 keys: summing these detects a missing or repeated key (p ~ 2^-64)."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keysum(keys: np.ndarray) -> int:
    with np.errstate(over="ignore"):
        return int(_mix(keys).sum(dtype=np.uint64))


def add_keysums(a: int, b: int) -> int:
    return (a + b) & int(_MASK64)


@dataclass
class ParsedIds:
    """Per row: the test image's index, the pixel's key, and where the pixel is."""

    image: np.ndarray  # int64 index into the test records
    key: np.ndarray  # int64, unique per expected id
    box: np.ndarray  # int64 box index, 0-based
    row: np.ndarray  # int64 row inside the box
    col: np.ndarray  # int64 column inside the box
    channel: np.ndarray  # int64 0..2, the file's channel


class IdCodec:
    """The ids of `fmt` for the test records: canonical ids per image, and a vectorised parser."""

    def __init__(self, fmt: SubmissionFormat, test: Sequence[ImageRecord], box_size: int, boxes_per_image: int,
                 id_pattern: str | None = None):
        self.fmt, self.test = fmt, list(test)
        self.box_size, self.boxes = box_size, boxes_per_image
        self.per_image = boxes_per_image * box_size * box_size * 3
        self.total = len(self.test) * self.per_image
        image_names = [r.image_id if fmt.image_field == "name" else r.path.stem for r in self.test]
        if len(set(image_names)) != len(image_names):
            seen: dict[str, str] = {}
            for record, name in zip(self.test, image_names):
                if name in seen:
                    raise IdError(f"test images {seen[name]!r} and {record.image_id!r} both get the id prefix "
                                  f"{name!r} under the format {fmt.name} ({fmt.id}); use a format whose ids hold "
                                  "{name} (data.format)")
                seen[name] = record.image_id
        self.names = pa.array(image_names, pa.string())
        self.box_xy = np.array([[(b.x, b.y) for b in r.boxes] for r in self.test], dtype=np.int64).reshape(
            len(self.test), boxes_per_image, 2)
        s = box_size
        flat = np.arange(self.per_image)
        self._box, rest = np.divmod(flat, s * s * 3)
        self._row, rest = np.divmod(rest, s * 3)
        self._col, self._channel = np.divmod(rest, 3)
        limit = int(self.box_xy.max(initial=0)) + s + 2
        self._numbers = pa.array([str(i) for i in range(max(limit, s + 2, 4))], pa.string())
        self._head, self._tail = self._split_template()
        self._recent: OrderedDict[int, pa.Array] = OrderedDict()  # writer and validator ask in turn
        self._lock = threading.Lock()
        self.regex = re.compile(id_pattern) if id_pattern else self._template_regex()
        missing = {"image", "row", "col", "channel"} - set(self.regex.groupindex)
        if missing or (fmt.coords == "box" and "box" not in self.regex.groupindex):
            raise IdError(f"id pattern {self.regex.pattern!r} needs the named groups image, box, row, col, channel")

    # -- writing: the canonical ids

    def _template_regex(self) -> re.Pattern:
        parts = ["^"]
        for literal, fieldname in self.fmt.pieces:
            parts.append(re.escape(literal))
            if fieldname in ("name", "stem"):
                parts.append("(?P<image>.+)")
            elif fieldname:
                parts.append(f"(?P<{fieldname}>{_NUMBER})")
        return re.compile("".join(parts) + "$")

    def _split_template(self) -> tuple[list, pa.Array | None]:
        """(pieces before {row}, the rendered tail for every pixel and channel of the frame) when
        the template ends in {row}..{col}..{channel} with only literals between (both presets);
        (all pieces, None) otherwise. The tail table makes an image's ids one take and one join
        per box instead of a join of every field."""
        pieces = self.fmt.pieces
        fields = [f for _, f in pieces]
        if "row" not in fields:
            return pieces, None
        start = fields.index("row")
        tail = pieces[start:]
        if [f for _, f in tail if f] != ["row", "col", "channel"]:
            return pieces, None
        frame = int(self.box_xy.max(initial=0)) + self.box_size if self.fmt.coords == "image" else self.box_size
        (lit_row, _), (lit_col, _), (lit_ch, _), *rest = tail
        end = "".join(lit for lit, _ in rest)
        y, x, c = (a.reshape(-1) for a in np.meshgrid(np.arange(frame), np.arange(frame), np.arange(3), indexing="ij"))
        parts = [lit_row, self._numbers.take(pa.array(y)), lit_col, self._numbers.take(pa.array(x)), lit_ch,
                 self._numbers.take(pa.array(c)), end]
        self._frame = frame
        return pieces[:start], pc.binary_join_element_wise(*[p for p in parts if not isinstance(p, str) or p], "")

    def _render(self, pieces, values: dict) -> list:
        out = []
        for literal, fieldname in pieces:
            if literal:
                out.append(literal)
            if fieldname:
                value = values[fieldname]
                out.append(value if isinstance(value, str) else self._numbers.take(pa.array(value)))
        return out

    def ids_for(self, image_index: int) -> pa.Array:
        """The ids of one test image, in the canonical order (box, row, col, channel)."""
        with self._lock:
            cached = self._recent.get(image_index)
        if cached is not None:
            return cached
        ids = self._build_ids(image_index)
        with self._lock:
            self._recent[image_index] = ids
            while len(self._recent) > 8:
                self._recent.popitem(last=False)
        return ids

    def _build_ids(self, image_index: int) -> pa.Array:
        xy = self.box_xy[image_index]
        name = self.names[image_index].as_py()
        if self._tail is not None:
            per_box = self.per_image // self.boxes
            parts = []
            for b in range(self.boxes):
                rows = slice(b * per_box, (b + 1) * per_box)
                row, col = self._row[rows], self._col[rows]
                if self.fmt.coords == "image":
                    row, col = row + xy[b, 1], col + xy[b, 0]
                index = (row * self._frame + col) * 3 + self._channel[rows]
                head = "".join(str(p) for p in self._render(self._head, {"name": name, "stem": name,
                                                                          "box": str(b + self.fmt.box_base)}))
                parts.append(pc.binary_join_element_wise(head, self._tail.take(pa.array(index)), ""))
            return pa.concat_arrays(parts)
        row, col = self._row, self._col
        if self.fmt.coords == "image":
            row, col = row + xy[self._box, 1], col + xy[self._box, 0]
        values = {"name": name, "stem": name, "box": self._box + self.fmt.box_base, "row": row, "col": col,
                  "channel": self._channel}
        return pc.binary_join_element_wise(*self._render(self.fmt.pieces, values), "")

    def canonical(self, start: int, count: int) -> pa.ChunkedArray | None:
        """Ids of rows start..start+count of a file in the writer's order (None past the end)."""
        if start + count > self.total:
            return None
        pieces, row = [], start
        while row < start + count:
            image, offset = divmod(row, self.per_image)
            take = min(self.per_image - offset, start + count - row)
            pieces.append(self.ids_for(image).slice(offset, take))
            row += take
        return pa.chunked_array(pieces, pa.string())

    def expected_keysum(self) -> int:
        acc, step = 0, 1 << 20
        for start in range(0, self.total, step):
            acc = add_keysums(acc, keysum(np.arange(start, min(start + step, self.total), dtype=np.int64)))
        return acc

    # -- reading: any id back to its pixel

    def parse(self, ids: pa.Array, fail: Callable[[int, str], None]) -> ParsedIds:
        """Parse ids (any order); `fail(row, message)` raises for the first bad one."""
        ids = ids.cast(pa.string()) if ids.type != pa.string() else ids
        if ids.null_count:
            fail(int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]), "empty id")
        parts = pc.extract_regex(ids, self.regex.pattern)
        if parts.null_count:
            i = int(np.flatnonzero(parts.is_null().to_numpy(zero_copy_only=False))[0])
            fail(i, f"id {ids[i].as_py()!r} is not of the form {self.fmt.id} (format {self.fmt.name}; numbers "
                    "without leading zeros)")
        found = pc.index_in(parts.field("image"), value_set=self.names).to_numpy(zero_copy_only=False)
        unknown = np.isnan(found.astype(float))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            fail(i, f"id {ids[i].as_py()!r} names no test image")
        image = found.astype(np.int64)
        number = {g: pc.cast(parts.field(g), pa.int64()).to_numpy() for g in self.regex.groupindex if g != "image"}
        s, channel = self.box_size, number["channel"]
        if self.fmt.coords == "box":
            box, row, col = number["box"] - self.fmt.box_base, number["row"], number["col"]
            bad = (box < 0) | (box >= self.boxes) | (row >= s) | (col >= s)
        else:
            y, x = number["row"], number["col"]
            bx, by = self.box_xy[image, :, 0], self.box_xy[image, :, 1]
            inside = (x[:, None] >= bx) & (x[:, None] < bx + s) & (y[:, None] >= by) & (y[:, None] < by + s)
            if "box" in number:  # the id names its box (boxes may overlap): the pixel must lie in it
                box = number["box"] - self.fmt.box_base
                valid = (box >= 0) & (box < self.boxes)
                box = np.where(valid, box, 0)
                bad = ~valid | ~inside[np.arange(len(box)), box]
            else:
                box = np.argmax(inside, axis=1)
                bad = ~inside.any(axis=1)
            row, col = y - by[np.arange(len(y)), box], x - bx[np.arange(len(x)), box]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail(i, f"id {ids[i].as_py()!r} is not a pixel inside its box")
        if (channel > 2).any():
            i = int(np.flatnonzero(channel > 2)[0])
            fail(i, f"id {ids[i].as_py()!r}: channel {channel[i]} is out of range 0..2")
        key = image * self.per_image + ((box * s + row) * s + col) * 3 + channel
        return ParsedIds(image, key, box, row, col, channel)

    def describe_key(self, key: int) -> str:
        """The canonical id of `key` (for messages)."""
        image, offset = divmod(int(key), self.per_image)
        return self.ids_for(image)[offset].as_py()
