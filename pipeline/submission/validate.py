"""Check a submission CSV before upload: header, every expected id exactly once, values in range.

Streams the file in bounded batches; a file in the writer's own order is checked by one
vectorised comparison per batch, any other order by parsing every id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline.data.competition import Competition
from pipeline.submission.csvio import READ_BLOCK, SubmissionError, batches, not_text, open_csv
from pipeline.submission.ids import add_keysums, keysum
from pipeline.submission.spec import SubmissionSpec, submission_spec


@dataclass
class Validation:
    path: Path
    rows: int
    sha256: str


def validate_submission(path: Path, competition: Competition, progress: bool = True,
                        spec: SubmissionSpec | None = None) -> Validation:
    """Check a submission CSV before upload; returns its row count and sha256.

    Raises SubmissionError naming the line and the id for: a file that is not CSV text, a wrong
    header, an id that does not parse or names no test image or box pixel, an empty or NaN
    value, a value outside the format's range (or not an integer, for integer formats), a
    missing or repeated id. A trailing blank line is accepted (Kaggle accepts it).
    """
    path = Path(path)
    if path.is_dir():
        raise SubmissionError(f"{path}: is a folder, not a submission file; name the CSV file itself")
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file; write it with the submit step first")
    spec = spec or submission_spec(competition)
    # an archive or UTF-16 is named before arrow reads it: arrow's reader threads, left behind by
    # an error in the first block, could hang or abort the interpreter at exit
    reason = not_text(path, limit=READ_BLOCK)
    if reason:
        raise SubmissionError(reason)
    rows = validate_stream(str(path), path, spec, progress)  # a path: arrow reads it without the GIL
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return Validation(path, rows, digest.hexdigest())


def validate_stream(stream, path: Path, spec: SubmissionSpec, progress: bool = False) -> int:
    """Validate the CSV bytes read from `stream` (the file at `path`, or what is being written
    to it); returns the row count. Diagnosis of a mismatch re-reads `path`."""
    reader = open_csv(stream, spec.columns, path)
    try:
        names = reader.schema.names
    except UnicodeDecodeError:  # a header that is not UTF-8
        raise SubmissionError(not_text(path, limit=READ_BLOCK) or f"{path}: line 1 is not UTF-8 text") from None
    if tuple(names) != spec.columns:
        raise SubmissionError(_header_message(path, names, spec))
    with tqdm(total=spec.expected_rows, desc=f"validate {path.name}", unit="val", unit_scale=True,
              disable=not progress) as bar:  # closed before an error is printed, not glued to it
        rows, total, blank_at, canonical, parsed = _check_batches(reader, path, spec, bar)
    if parsed or rows != spec.expected_rows:
        for start, end in canonical:
            total = add_keysums(total, keysum(np.arange(start, end, dtype=np.int64)))
    else:  # every row in the writer's order: exactly the expected ids
        total = spec.expected_keysum
    if rows != spec.expected_rows or total != spec.expected_keysum:
        _diagnose(path, spec, rows)
    return rows


def _check_batches(reader, path: Path, spec: SubmissionSpec, bar):
    """One pass over the batches: (rows, keysum of parsed ids, first blank line, canonical ranges, parsed?)."""
    rows, total, blank_at, canonical, parsed = 0, 0, None, [], False
    for batch in batches(reader, path):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{path}: line {base + i + 2}: {message}")

        ids, values = batch.column(0), batch.column(1)
        blank = np.zeros(len(ids), bool)
        if ids.null_count:
            blank = ids.is_null().to_numpy(zero_copy_only=False) & values.is_null().to_numpy(zero_copy_only=False)
        if blank_at is not None and not blank.all():
            fail(blank_at - rows, "blank line inside the file (only trailing blank lines are allowed)")
        if blank.any():
            first = int(np.flatnonzero(blank)[0])
            if not blank[first:].all():
                fail(first, "blank line inside the file (only trailing blank lines are allowed)")
            if blank_at is None:
                blank_at = rows + first
            batch, ids, values = batch.slice(0, first), ids.slice(0, first), values.slice(0, first)
        if _is_canonical(spec, ids, rows):  # our own order: keys rows..rows+n, summed once at the end
            canonical.append((rows, rows + len(ids)))
        else:  # rows in another order than the writer's: parse every id
            total = add_keysums(total, keysum(spec.codec.parse(ids, fail).key))
            parsed = True
        check_values(values, spec, fail)
        rows += len(ids)
        bar.update(len(ids))
    return rows, total, blank_at, canonical, parsed


def _header_message(path: Path, names, spec: SubmissionSpec) -> str:
    message = f"{path}: header is {list(names)}, expected {list(spec.columns)}"
    if spec.sample is None:
        message += f" (format {spec.fmt.describe()})"
    return message


def _is_canonical(spec: SubmissionSpec, ids: pa.Array, start: int) -> bool:
    """Whether a batch is exactly the writer's rows from `start` on (our own files): one
    vectorised comparison instead of a parse."""
    if spec.sample is not None or ids.null_count or not len(ids):
        return False
    expected = spec.codec.canonical(start, len(ids))
    return expected is not None and pc.all(pc.equal(ids, expected)).as_py()


def check_values(values: pa.Array, spec: SubmissionSpec, fail: Callable[[int, str], None]) -> None:
    """Every value present, a number, in the format's range (an integer for integer formats)."""
    array = values.to_numpy(zero_copy_only=False)  # float64, nulls as NaN
    name, (low, high) = spec.columns[1], spec.value_range
    if values.null_count:
        fail(int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]), f"{name} is empty")
    nan = np.isnan(array)
    if nan.any():
        fail(int(np.flatnonzero(nan)[0]), f"{name} is NaN, not a number")
    out = (array < low) | (array > high)
    if spec.fmt.values == "integer":
        out |= array != np.round(array)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        if spec.fmt.values == "decimal":
            hint = ("; this competition's values are pixel/255 on 0..1 (the file looks like 0..255 integers)"
                    if array[i] > 1 and array[i] <= 255 else "")
            fail(i, f"{name} is {array[i]:g}: values must lie in 0..1{hint}")
        hint = "; this competition's values are integers 0..255 (the file looks like pixel/255 decimals)" if 0 < array[i] < 1 else ""
        fail(i, f"{name} is {array[i]:g}: values must be integers in 0..255{hint}")


def _diagnose(path: Path, spec: SubmissionSpec, rows: int) -> None:
    """Second pass after a count/key mismatch: name a repeated and a missing id exactly."""
    codec = spec.codec
    seen = np.zeros(codec.total, dtype=np.uint8)
    base = 0
    for batch in batches(open_csv(path, spec.columns), path):
        ids = batch.column(0)
        if ids.null_count:  # trailing blank lines, accepted above
            ids = ids.slice(0, int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0]))
        parsed = codec.parse(ids, lambda i, m: None)
        before = seen[parsed.key].copy()
        np.add.at(seen, parsed.key, 1)
        again = np.flatnonzero(before > 0)
        _, first = np.unique(parsed.key, return_index=True)
        inside = np.setdiff1d(np.arange(len(parsed.key)), first)
        repeated = again[0] if len(again) else (inside[0] if len(inside) else None)
        if repeated is not None:
            raise SubmissionError(f"{path}: line {base + int(repeated) + 2}: id "
                                  f"{ids[int(repeated)].as_py()!r} appears more than once")
        base += len(ids)
    if spec.sample is None:
        missing = np.flatnonzero(seen == 0)
        if len(missing):
            raise SubmissionError(f"{path}: {len(missing)} expected id(s) missing, e.g. "
                                  f"{codec.describe_key(int(missing[0]))}")
    raise SubmissionError(f"{path}: has {rows} rows, expected {spec.expected_rows}: ids differ from "
                          f"{spec.sample or 'the expected set'}")

