"""Streaming access to submission CSVs through pyarrow, with errors that name the line."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.config import PipelineError

READ_BLOCK = 4 << 20  # bytes per streamed batch: bounds memory whatever the file size
# A row is an id (a file name, at most 255 bytes on common file systems, and a few numbers) and a
# value: a line longer than this is no row of any format, and the scans read no more of it.
MAX_LINE = 1 << 16
MAGIC = {b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive", b"\x89PNG": "a PNG image",
         b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document",
         b"\xff\xfe\x00\x00": "UTF-32 text", b"\x00\x00\xfe\xff": "UTF-32 text",
         b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text"}  # UTF-32 before UTF-16: same first bytes


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


def not_text(path: Path, limit: int | None = None) -> str | None:
    """Why `path` is not UTF-8 CSV text, or None: what it looks like (an archive, UTF-16, ...),
    the line where text stops (a byte that is not UTF-8, a NUL), or a line longer than MAX_LINE.

    Reads blocks of READ_BLOCK bytes, the first `limit` bytes only when given: memory stays
    bounded whatever the file (a 2 GB file without a line break)."""
    with open(path, "rb") as f:
        head = f.read(8)
        for magic, what in MAGIC.items():
            if head.startswith(magic):
                return f"{path}: is {what}, not a CSV text file; unpack or re-export it as UTF-8 CSV"
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, line, line_start = 0, 1, 0  # bytes read before `block`; the current line and its start
        while limit is None or offset < limit:
            block = f.read(READ_BLOCK if limit is None else min(READ_BLOCK, limit - offset))
            if not block:
                break
            pending = len(decoder.getstate()[0])  # a character cut by the previous block's end
            bad = None
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                bad = max(exc.start - pending, 0)
            codes = np.frombuffer(block, dtype=np.uint8)
            breaks = np.flatnonzero(codes == 10)
            nul = block.find(b"\x00")
            starts = np.concatenate(([line_start - offset], breaks + 1))  # line starts, relative to block
            ends = np.concatenate((breaks, [len(block)]))
            too_long = np.flatnonzero(ends - starts > MAX_LINE)
            problems = []  # (position in block, message without the line)
            if too_long.size:
                i = int(too_long[0])
                problems.append((max(int(starts[i]), 0), f"is longer than {MAX_LINE} bytes (no line break), which no "
                                                       "row of a submission is; check that it is the right file"))
            if bad is not None:
                problems.append((bad, f"is not UTF-8 text (byte 0x{block[bad]:02x} at column {{column}}); save the "
                                      "file as UTF-8 CSV"))
            if nul >= 0:
                problems.append((nul, "holds a NUL byte (column {column}): not CSV text (UTF-16 without a "
                                              "byte order mark, or a binary file?); save the file as UTF-8 CSV"))
            if problems:
                where, message = min(problems, key=lambda p: p[0])
                before = int(np.searchsorted(breaks, where))  # line breaks in the block before `where`
                start = int(starts[before]) if before < len(starts) else line_start - offset
                return f"{path}: line {line + before} {message.format(column=where - start + 1)}"
            line += len(breaks)
            if len(breaks):
                line_start = offset + int(breaks[-1]) + 1
            offset += len(block)
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
        try:
            header = next(reader, [])
            for row in reader:
                if not row:
                    continue  # blank lines are judged by the validator
                if len(row) != len(header):
                    return (f"{path}: line {reader.line_num}: {len(row)} fields, expected {len(header)} "
                            f"({', '.join(header)})")
                if len(row) > 1 and not _is_number(row[-1]):
                    return f"{path}: line {reader.line_num}: {header[-1]} {row[-1]!r} is not a number"
        except csv.Error as exc:  # a quoted field running over many lines, say
            return f"{path}: line {reader.line_num}: malformed CSV ({exc})"
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
        return next(csv.reader(io.StringIO(f.readline(MAX_LINE))), [])
