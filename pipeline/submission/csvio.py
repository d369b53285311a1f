"""Streaming access to submission CSVs through pyarrow, with errors that name the line."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.config import PipelineError

READ_BLOCK = 4 << 20  # bytes per streamed batch: bounds memory whatever the file size
MAGIC = {b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive", b"\x89PNG": "a PNG image",
         b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document"}


class SubmissionError(PipelineError, ValueError):
    """A submission that must not be uploaded; the message names the file, the line and the id."""


def open_csv(source, columns: Sequence[str] | None = None, path: Path | None = None) -> pacsv.CSVStreamingReader:
    """Streaming reader over `source` (a path or a binary stream); errors name `path`.

    With `columns`, the first is read as text and the second as float64 (a non-number fails in
    arrow, and the line is then found by `malformed`).
    """
    path = Path(path or source)
    types = {columns[0]: pa.string(), columns[1]: pa.float64()} if columns else None
    try:
        return pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=READ_BLOCK),
            # blank lines are rows (and refused unless trailing): line numbers in messages stay true
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""]),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise SubmissionError(malformed(path, exc)) from exc


def batches(reader: pacsv.CSVStreamingReader, path: Path) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except pa.ArrowInvalid as exc:
        raise SubmissionError(malformed(path, exc)) from exc


def not_text(path: Path) -> str | None:
    """Why `path` is not UTF-8 text (what it looks like, and the line where text stops), or None."""
    with open(path, "rb") as f:
        head = f.read(8)
        for magic, what in MAGIC.items():
            if head.startswith(magic):
                return f"{path}: is {what}, not a CSV text file; unpack or re-export it as CSV"
        f.seek(0)
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1}); save the file as UTF-8 CSV")
    return None


def malformed(path: Path, exc: Exception) -> str:
    """Arrow's parse error, with the offending line found by a plain (slow, rare) scan."""
    if Path(path).is_file():
        reason = not_text(path)
        if reason:
            return reason
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError:
        return f"{path}: malformed CSV ({exc})"
    with f:
        reader = csv.reader(f)
        header = next(reader, [])
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # blank lines are judged by the validator
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
        return text.strip() == ""


def header_of(path: Path) -> list[str]:
    """The header row of a CSV (for messages and sample submissions)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(io.StringIO(f.readline())), [])
