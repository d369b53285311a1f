"""Submission CSVs: write them from predictions, validate any of them before upload, read them back.

Default format (when the competition ships no sample_submission.csv)::

    Id,Predicted
    <image>_<box>_<row>_<col>_<channel>,<value>

one row per box pixel and channel: `image` the test image's file stem, `box` its index in the bbox
CSV (0-based, in box order), `row`/`col` the pixel's position inside the box (0..box_size-1, row
from the top), `channel` 0=R 1=G 2=B, `value` an integer 0..255. Rows are written image by image,
box by box, in row-major order.

With a sample_submission.csv, the file has exactly its columns and ids, in its order; ids are
parsed with data.id_pattern (groups image, box, row, col, channel, or image, y, x, channel).

Files stream through pyarrow in bounded batches, so memory does not grow with the test set;
they are written to a temporary file, validated, and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from pipeline.config import PipelineError
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import Competition, ImageRecord

DEFAULT_COLUMNS = ("Id", "Predicted")
READ_BLOCK = 4 << 20  # bytes per streamed batch: bounds memory whatever the file size
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class SubmissionError(PipelineError, ValueError):
    """A submission that must not be uploaded; the message names the file, the line and the id."""


def _mix(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 keys: summing these detects a missing or repeated key (p ~ 2^-64)."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keysum(keys: np.ndarray) -> int:
    with np.errstate(over="ignore"):
        return int(_mix(keys).sum(dtype=np.uint64))


# ---------------------------------------------------------------------------------------------
# Ids: how a row's id maps to a pixel. A key is one int64 per (image, position, channel).
# ---------------------------------------------------------------------------------------------


@dataclass
class ParsedIds:
    """Per row: the test image's index in competition.test and the pixel's key within the file."""

    image: np.ndarray  # int64
    key: np.ndarray  # int64, unique per expected id
    box: np.ndarray  # int64 box index
    row: np.ndarray  # int64 row inside the box
    col: np.ndarray  # int64 column inside the box
    channel: np.ndarray  # int64 0..2


class DefaultIds:
    """`<image>_<box>_<row>_<col>_<channel>`, parsed at the byte level with numpy (fast path)."""

    def __init__(self, test: Sequence[ImageRecord], box_size: int, boxes_per_image: int):
        self.names = pa.array([r.image_id for r in test], pa.string())
        self.box_size, self.boxes = box_size, boxes_per_image
        self.per_image = boxes_per_image * box_size * box_size * 3
        self.total = len(test) * self.per_image
        self._suffixes = pa.array(
            [f"_{b}_{r}_{c}_{ch}" for b in range(boxes_per_image) for r in range(box_size)
             for c in range(box_size) for ch in range(3)],
            pa.string(),
        )

    def ids_for(self, image_index: int) -> pa.Array:
        """The ids of one test image, in the canonical order."""
        name = self.names[image_index].as_py()
        return pc.binary_join_element_wise(name, self._suffixes, "")

    def canonical(self, start: int, count: int) -> pa.ChunkedArray | None:
        """Ids of rows start..start+count of a file in the writer's order (None past the end)."""
        if start + count > self.total:
            return None
        pieces = []
        row = start
        while row < start + count:
            image, offset = divmod(row, self.per_image)
            take = min(self.per_image - offset, start + count - row)
            pieces.append(self.ids_for(image).slice(offset, take))
            row += take
        return pa.chunked_array(pieces, pa.string())

    def expected_keysum(self) -> int:
        total, step, acc = self.total, 1 << 20, 0
        for start in range(0, total, step):
            acc = (acc + _keysum(np.arange(start, min(start + step, total), dtype=np.int64))) & int(_MASK64)
        return acc

    def parse(self, ids: pa.Array, fail: Callable[[int, str], None]) -> ParsedIds:
        ids = ids.cast(pa.string()) if ids.type != pa.string() else ids
        if ids.null_count:
            fail(int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]), "empty id")
        n = len(ids)
        offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset : ids.offset + n + 1]
        data = np.frombuffer(ids.buffers()[2], dtype=np.uint8)
        starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
        underscores = np.flatnonzero(data == ord("_"))
        k = np.searchsorted(underscores, ends)  # underscores before each id's end
        bad = k < 4
        seps = [underscores[np.maximum(k - j, 0)] for j in (4, 3, 2, 1)]
        bad |= seps[0] <= starts  # fewer than four separators inside this id, or an empty name
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail(i, f"id {ids[i].as_py()!r} is not <image>_<box>_<row>_<col>_<channel>")
        fields = []
        bounds = seps + [ends]
        for j in range(4):
            a, b = bounds[j] + 1, bounds[j + 1]
            length = b - a
            value = np.zeros(n, dtype=np.int64)
            ok = (length >= 1) & (length <= 4)
            for t in range(4):
                live = t < length
                digit = data[np.where(live, a + t, 0)].astype(np.int64) - ord("0")
                ok &= ~live | ((digit >= 0) & (digit <= 9))
                value = np.where(live, value * 10 + digit, value)
            # "07" would parse to 7 but is not the id Kaggle expects
            ok &= (length == 1) | (data[np.minimum(a, len(data) - 1)] != ord("0"))
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                fail(i, f"id {ids[i].as_py()!r}: box, row, col and channel must be integers without leading zeros")
            fields.append(value)
        box, row, col, channel = fields
        image = self._image_index(ids, ends - seps[0])
        limits = ((box, self.boxes, "box"), (row, self.box_size, "row"), (col, self.box_size, "col"),
                  (channel, 3, "channel"))
        for values, limit, what in limits:
            out = values >= limit
            if out.any():
                i = int(np.flatnonzero(out)[0])
                fail(i, f"id {ids[i].as_py()!r}: {what} {values[i]} is out of range 0..{limit - 1}")
        missing = image < 0
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            fail(i, f"id {ids[i].as_py()!r} names no test image")
        s = self.box_size
        key = image * self.per_image + ((box * s + row) * s + col) * 3 + channel
        return ParsedIds(image, key, box, row, col, channel)

    def _image_index(self, ids: pa.Array, suffix_len: np.ndarray) -> np.ndarray:
        """Index of each id's image name in the test set (-1 if unknown).

        The name is the id less its `_b_r_c_ch` suffix; that suffix takes only a few lengths, so
        each length is one vectorised arrow slice + hash lookup.
        """
        image = np.full(len(ids), -1, dtype=np.int64)
        for length in np.unique(suffix_len):
            rows = np.flatnonzero(suffix_len == length)
            subset = ids.take(pa.array(rows))
            names = pc.utf8_slice_codeunits(subset, 0, -int(length)) if length else subset
            found = pc.index_in(names, value_set=self.names).to_numpy(zero_copy_only=False)
            image[rows] = np.where(np.isnan(found.astype(float)), -1, found).astype(np.int64)
        return image


class PatternIds:
    """Ids parsed with a regex (data.id_pattern), for a competition's own sample_submission.csv."""

    def __init__(self, pattern: str, test: Sequence[ImageRecord], box_size: int, boxes_per_image: int, image_size: int):
        self.regex = re.compile(pattern)
        groups = set(self.regex.groupindex)
        if {"image", "box", "row", "col", "channel"} <= groups:
            self.kind = "box"
        elif {"image", "y", "x", "channel"} <= groups:
            self.kind = "image"
        else:
            raise SubmissionError(
                f"data.id_pattern {pattern!r} needs named groups image, box, row, col, channel "
                "or image, y, x, channel"
            )
        self.test = test
        self.names = pa.array([r.image_id for r in test], pa.string())
        self.box_size, self.boxes, self.image_size = box_size, boxes_per_image, image_size
        self.box_xy = np.array([[(b.x, b.y) for b in r.boxes] for r in test], dtype=np.int64).reshape(len(test), -1, 2)

    def parse(self, ids: pa.Array, fail: Callable[[int, str], None]) -> ParsedIds:
        parts = pc.extract_regex(ids.cast(pa.string()), self.regex.pattern)
        if parts.null_count:
            i = int(np.flatnonzero(parts.is_null().to_numpy(zero_copy_only=False))[0])
            fail(i, f"id {ids[i].as_py()!r} does not match data.id_pattern {self.regex.pattern!r}")
        found = pc.index_in(parts.field("image"), value_set=self.names).to_numpy(zero_copy_only=False)
        if np.isnan(found.astype(float)).any():
            i = int(np.flatnonzero(np.isnan(found.astype(float)))[0])
            fail(i, f"id {ids[i].as_py()!r} names no test image")
        image = found.astype(np.int64)
        num = {g: pc.cast(parts.field(g), pa.int64()).to_numpy() for g in self.regex.groupindex if g != "image"}
        channel = num["channel"]
        s = self.box_size
        if self.kind == "box":
            box, row, col = num["box"], num["row"], num["col"]
            bad = (box >= self.boxes) | (row >= s) | (col >= s) | (channel > 2)
        else:
            y, x = num["y"], num["x"]
            bx, by = self.box_xy[image, :, 0], self.box_xy[image, :, 1]
            inside = (x[:, None] >= bx) & (x[:, None] < bx + s) & (y[:, None] >= by) & (y[:, None] < by + s)
            box = np.argmax(inside, axis=1)
            row, col = y - by[np.arange(len(y)), box], x - bx[np.arange(len(x)), box]
            bad = ~inside.any(axis=1) | (channel > 2)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            fail(i, f"id {ids[i].as_py()!r} is not a pixel inside one of its image's boxes")
        if self.kind == "box":
            key = image * (self.boxes * s * s * 3) + ((box * s + row) * s + col) * 3 + channel
        else:
            key = image * (self.image_size**2 * 3) + (num["y"] * self.image_size + num["x"]) * 3 + channel
        return ParsedIds(image, key, box, row, col, channel)


# ---------------------------------------------------------------------------------------------
# Streaming CSV access
# ---------------------------------------------------------------------------------------------


def _open(source, columns: Sequence[str] | None = None, path: Path | None = None) -> pacsv.CSVStreamingReader:
    """Streaming reader over `source` (a path or a binary stream); errors name `path`."""
    path = Path(path or source)
    # the value column read as float64: a non-number fails in arrow with its row named
    types = {columns[0]: pa.string(), columns[1]: pa.float64()} if columns else None
    try:
        return pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=READ_BLOCK),
            # a blank line is an error, not skipped: line numbers in messages stay true
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise SubmissionError(_malformed(path, exc)) from exc


def _batches(reader: pacsv.CSVStreamingReader, path: Path) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise SubmissionError(_malformed(path, exc)) from exc


def _malformed(path: Path, exc: Exception) -> str:
    """Arrow's parse error, with the offending line found by a plain (slow, rare) scan."""
    import csv

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                return f"{path}: line {line}: {len(row)} fields, expected {len(header)} ({', '.join(header)})"
            if len(row) > 1 and not _is_number(row[-1]):
                return f"{path}: line {line}: {header[-1]} {row[-1]!r} is not a number"
    return f"{path}: malformed CSV ({exc})"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _id_codec(competition: Competition):
    cfg = competition.config
    if competition.sample_submission is not None:
        return PatternIds(cfg.id_pattern, competition.test, cfg.box_size, cfg.boxes_per_image, cfg.image_size)
    return DefaultIds(competition.test, cfg.box_size, cfg.boxes_per_image)


def expected_columns(competition: Competition) -> tuple[str, ...]:
    if competition.sample_submission is None:
        return DEFAULT_COLUMNS
    names = tuple(_open(competition.sample_submission).schema.names)
    if len(names) != 2:
        raise SubmissionError(
            f"{competition.sample_submission}: expected two columns (id, value), got {list(names)}"
        )
    return names


@dataclass
class Validation:
    path: Path
    rows: int
    sha256: str


def validate_submission(path: Path, competition: Competition, progress: bool = True) -> Validation:
    """Check a submission CSV before upload; returns its row count and sha256.

    Raises SubmissionError naming the line and the id for: a wrong header, an id that does not
    parse or names no test image or no box pixel, an empty or non-integer value, a value outside
    0..255, a missing or repeated id. Streams the file: memory stays bounded.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file; run `make submit VARIANT=...` first")
    with open(path, "rb") as f:
        rows = _validate_stream(f, path, competition, progress)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return Validation(path, rows, digest.hexdigest())


def _validate_stream(stream, path: Path, competition: Competition, progress: bool) -> int:
    """Validate the CSV bytes read from `stream` (the file at `path`, or what is being written
    to it); returns the row count. Diagnosis of a mismatch re-reads `path`."""
    columns = expected_columns(competition)
    codec = _id_codec(competition)
    reader = _open(stream, columns, path)
    if tuple(reader.schema.names) != columns:
        raise SubmissionError(f"{path}: header is {reader.schema.names}, expected {list(columns)}")
    expected_rows, expected_sum = _expected(competition, codec)
    rows, keysum = 0, 0
    bar = tqdm(total=expected_rows, desc=f"validate {path.name}", unit="val", unit_scale=True, disable=not progress)
    for batch in _batches(reader, path):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{path}: line {base + i + 2}: {message}")

        keys = _canonical_keys(codec, batch.column(0), rows)
        if keys is None:  # rows in another order than the writer's: parse every id
            keys = codec.parse(batch.column(0), fail).key
        _check_values(batch.column(1), columns[1], fail)
        keysum = (keysum + _keysum(keys)) & int(_MASK64)
        rows += batch.num_rows
        bar.update(batch.num_rows)
    bar.close()
    if rows != expected_rows or keysum != expected_sum:
        _diagnose(path, competition, codec, columns, rows, expected_rows)
    return rows


def _canonical_keys(codec, ids: pa.Array, start: int) -> np.ndarray | None:
    """Keys of a batch that is exactly the writer's rows from `start` on (our own files): one
    vectorised comparison instead of a parse. None when the batch is in any other order."""
    if not isinstance(codec, DefaultIds) or ids.null_count:
        return None
    expected = codec.canonical(start, len(ids))
    if expected is None or not pc.all(pc.equal(ids, expected)).as_py():
        return None
    return np.arange(start, start + len(ids), dtype=np.int64)


def _expected(competition: Competition, codec) -> tuple[int, int]:
    """(row count, key sum) a valid file must have."""
    if isinstance(codec, DefaultIds):
        return codec.total, codec.expected_keysum()
    sample = competition.sample_submission
    rows, keysum = 0, 0
    for batch in _batches(_open(sample, expected_columns(competition)), sample):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{sample}: line {base + i + 2}: {message} (check data.id_pattern)")

        keysum = (keysum + _keysum(codec.parse(batch.column(0), fail).key)) & int(_MASK64)
        rows += batch.num_rows
    return rows, keysum


def _check_values(values: pa.Array, name: str, fail: Callable[[int, str], None]) -> None:
    array = values.to_numpy(zero_copy_only=False)  # float64, nulls as NaN
    bad = np.isnan(array) | (array < 0) | (array > 255) | (array != np.round(array))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shown = "empty" if np.isnan(array[i]) else f"{array[i]:g}"
        fail(i, f"{name} is {shown}: values must be integers in 0..255")


def _diagnose(path: Path, competition: Competition, codec, columns, rows: int, expected_rows: int) -> None:
    """Second pass after a count/key mismatch: name a repeated and a missing id exactly."""
    if isinstance(codec, DefaultIds):
        space = codec.total
    else:
        cfg = competition.config
        space = len(competition.test) * max(cfg.boxes_per_image * cfg.box_size**2, cfg.image_size**2) * 3
    seen = np.zeros(space, dtype=np.uint8)
    base = 0
    for batch in _batches(_open(path, columns), path):
        parsed = codec.parse(batch.column(0), lambda i, m: None)
        before = seen[parsed.key].copy()
        np.add.at(seen, parsed.key, 1)
        again = np.flatnonzero(before > 0)
        order, first = np.unique(parsed.key, return_index=True)
        dup_inside = np.setdiff1d(np.arange(len(parsed.key)), first)
        repeated = again[0] if len(again) else (dup_inside[0] if len(dup_inside) else None)
        if repeated is not None:
            raise SubmissionError(
                f"{path}: line {base + int(repeated) + 2}: id {batch.column(0)[int(repeated)].as_py()!r} appears more than once"
            )
        base += batch.num_rows
    if isinstance(codec, DefaultIds):
        missing = np.flatnonzero(seen == 0)
        if len(missing):
            key = int(missing[0])
            image, rest = divmod(key, codec.per_image)
            s = codec.box_size
            box, rest = divmod(rest, s * s * 3)
            row, rest = divmod(rest, s * 3)
            col, channel = divmod(rest, 3)
            name = competition.test[image].image_id
            raise SubmissionError(
                f"{path}: {len(missing)} expected id(s) missing, e.g. {name}_{box}_{row}_{col}_{channel}"
            )
    raise SubmissionError(
        f"{path}: has {rows} rows, expected {expected_rows}: ids differ from "
        f"{competition.sample_submission or 'the expected set'}"
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def box_values(image: np.ndarray, record: ImageRecord) -> np.ndarray:
    """uint8 values of `record`'s boxes in `image`, in the default format's row order."""
    return box_pixels(image, record.boxes).reshape(-1)


def write_submission(
    path: Path,
    competition: Competition,
    load_prediction: Callable[[int], np.ndarray],
    progress: bool = True,
    images_per_batch: int = 16,
) -> Validation:
    """Write the submission for competition.test to `path`, validate it, then move it into place.

    load_prediction(i): uint8 HxWx3 RGB prediction of competition.test[i]. The bytes go to a
    temporary file beside `path` and, through a pipe, to the validator running at the same time
    (the same checks as validate_submission, on exactly the bytes written), so the two use both
    cores. An existing file at `path` is only replaced by a validated new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if competition.sample_submission is None:
        chunks = _default_chunks(competition, load_prediction, progress, images_per_batch)
    else:
        chunks = _sample_chunks(competition, load_prediction, progress)
    digest = hashlib.sha256()
    failures: list[BaseException] = []
    read_end, write_end = os.pipe()

    def produce() -> None:
        try:
            # the pipe closes last: EOF for the validator means the file is complete on disk
            with os.fdopen(write_end, "wb") as pipe, open(tmp, "wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                    digest.update(chunk)
                    pipe.write(chunk)
        except BrokenPipeError:
            pass  # the validator stopped at an error of its own, which it raises
        except BaseException as exc:  # re-raised below: the writer's failure is the real cause
            failures.append(exc)

    writer = threading.Thread(target=produce, name="submission-writer", daemon=True)
    writer.start()
    try:
        try:
            with os.fdopen(read_end, "rb") as stream:
                rows = _validate_stream(stream, tmp, competition, progress=False)
        finally:
            writer.join()
        if failures:
            raise failures[0]
        os.replace(tmp, path)
        return Validation(path, rows, digest.hexdigest())
    except SubmissionError as exc:
        if failures:
            raise failures[0] from None
        raise SubmissionError(str(exc).replace(str(tmp), f"{path} (not written)")) from None
    finally:
        tmp.unlink(missing_ok=True)


# one "<value>\n" string per possible byte, so a row's text is a lookup and one join
_VALUE_TEXT = pa.array([f"{v}\n" for v in range(256)], pa.string())


def _rows_text(ids: pa.Array, values: np.ndarray) -> memoryview:
    """The CSV lines `<id>,<value>\n` for arrow string `ids` and uint8 `values`, as bytes."""
    lines = pc.binary_join_element_wise(ids, ",", _VALUE_TEXT.take(pa.array(values)), "")
    return _string_bytes(lines)


def _string_bytes(strings: pa.Array) -> memoryview:
    """The concatenated bytes of an arrow string array, without copying."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)
    first, last = offsets[strings.offset], offsets[strings.offset + len(strings)]
    return memoryview(strings.buffers()[2])[first:last]


def _default_chunks(competition, load_prediction, progress, images_per_batch) -> Iterator[bytes]:
    cfg = competition.config
    codec = DefaultIds(competition.test, cfg.box_size, cfg.boxes_per_image)
    test = competition.test
    yield (",".join(DEFAULT_COLUMNS) + "\n").encode()
    for start in tqdm(range(0, len(test), images_per_batch), desc="write submission", unit="batch",
                      disable=not progress):
        for i in range(start, min(start + images_per_batch, len(test))):
            # the id and the value joined in one pass: arrow's CSV writer is the slow path here
            ids = codec.ids_for(i)
            yield _rows_text(ids, box_values(load_prediction(i), test[i]))


def _sample_chunks(competition, load_prediction, progress) -> Iterator[bytes]:
    sample = competition.sample_submission
    columns = expected_columns(competition)
    codec = _id_codec(competition)
    # box pixels (~34 KB an image) of every image seen so far: rows of a sample submission may
    # come in any order, and reloading a prediction per batch would decode each image many times
    cache: dict[int, np.ndarray] = {}
    yield (",".join(columns) + "\n").encode()
    rows = 0
    for batch in tqdm(_batches(_open(sample, columns), sample), desc="write submission", unit="batch",
                      disable=not progress):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{sample}: line {base + i + 2}: {message} (check data.id_pattern)")

        parsed = codec.parse(batch.column(0), fail)
        values = np.empty(batch.num_rows, dtype=np.uint8)
        for image in np.unique(parsed.image):
            image = int(image)
            if image not in cache:
                cache[image] = box_pixels(load_prediction(image), competition.test[image].boxes)
            rows_of = np.flatnonzero(parsed.image == image)
            values[rows_of] = cache[image][parsed.box[rows_of], parsed.row[rows_of], parsed.col[rows_of],
                                           parsed.channel[rows_of]]
        yield bytes(_rows_text(batch.column(0).cast(pa.string()), values))
        rows += batch.num_rows


def read_submission(path: Path, competition: Competition) -> np.ndarray:
    """Decode a (validated) submission into box pixels: uint8 (n_test, boxes, S, S, 3).

    Holds every box pixel of the test set (a few tens of KB per image): for scoring, not for
    the streaming paths.
    """
    cfg = competition.config
    columns = expected_columns(competition)
    codec = _id_codec(competition)
    s = cfg.box_size
    out = np.zeros((len(competition.test), cfg.boxes_per_image, s, s, 3), dtype=np.uint8)
    base = 0
    for batch in _batches(_open(path, columns), path):
        def fail(i: int, message: str, base=base) -> None:
            raise SubmissionError(f"{path}: line {base + i + 2}: {message}")

        p = codec.parse(batch.column(0), fail)
        out[p.image, p.box, p.row, p.col, p.channel] = batch.column(1).to_numpy(zero_copy_only=False).astype(np.uint8)
        base += batch.num_rows
    return out
