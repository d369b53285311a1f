"""Write a submission CSV from predictions, validated while it is written, renamed when valid."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline.data.boxes import box_pixels
from pipeline.data.competition import Competition
from pipeline.files import atomic_write, disk_full, remove_stale_temporaries, temporary_path
from pipeline.submission.csvio import SubmissionError, batches, open_csv
from pipeline.submission.spec import SubmissionSpec, submission_spec
from pipeline.submission.validate import Validation, validate_stream


def write_submission(
    path: Path,
    competition: Competition,
    load_prediction: Callable[[int], np.ndarray],
    progress: bool = True,
    images_per_batch: int = 16,
    spec: SubmissionSpec | None = None,
) -> Validation:
    """Write the submission for competition.test to `path`, validate it, then move it into place.

    load_prediction(i): uint8 HxWx3 RGB prediction of competition.test[i]. The bytes go to a
    temporary file beside `path` and, through a pipe, to the validator running at the same time
    (the same checks as validate_submission, on exactly the bytes written), so the two use both
    cores. An existing file at `path` is only replaced by a validated new one.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    spec = spec or submission_spec(competition)
    if spec.sample is None:
        chunks = _canonical_chunks(competition, spec, load_prediction, progress, images_per_batch)
    else:
        chunks = _sample_chunks(competition, spec, load_prediction, progress)
    digest = hashlib.sha256()
    failures: list[BaseException] = []
    tmp = temporary_path(path)
    try:
        with atomic_write(path) as tmp:  # renamed over `path` only when validated
            rows = _write_and_validate(chunks, tmp, spec, digest, failures)
        return Validation(path, rows, digest.hexdigest())
    except SubmissionError as exc:
        if failures:
            raise _named(failures[0], path) from None
        raise SubmissionError(str(exc).replace(str(tmp), f"{path} (not written)")) from None
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        chunks.close()  # a writer stopped early: its progress bar ends before any message


def _write_and_validate(chunks: Iterator[bytes], tmp: Path, spec: SubmissionSpec, digest,
                        failures: list[BaseException]) -> int:
    """Write `chunks` to `tmp` and, through a pipe, to the validator at the same time; the rows."""
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
        with os.fdopen(read_end, "rb") as stream:
            rows = validate_stream(stream, tmp, spec)
    finally:
        writer.join()
    if failures:
        raise failures[0]
    return rows


def _named(exc: BaseException, path: Path) -> BaseException:
    kept = f"{path} is unchanged" if path.exists() else f"{path} was not written"
    return disk_full(exc, path, f"{kept} and its temporary file removed") or exc


def _value_text(spec: SubmissionSpec) -> pa.Array:
    # one "<value>\n" string per possible byte, so a row's text is a lookup and one join
    return pa.array([f"{text}\n" for text in spec.fmt.value_texts()], pa.string())


def _rows_text(ids: pa.Array, values: np.ndarray, value_text: pa.Array) -> memoryview:
    """The CSV lines `<id>,<value>\\n` for arrow string `ids` and uint8 `values`, as bytes."""
    lines = pc.binary_join_element_wise(ids, ",", value_text.take(pa.array(values)), "")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[first:last]


def box_values(image: np.ndarray, boxes, spec: SubmissionSpec) -> np.ndarray:
    """uint8 (boxes, S, S, 3) box pixels of an RGB `image`, channels in the file's order."""
    return spec.fmt.to_file_channels(box_pixels(image, boxes))


def _csv_header(spec: SubmissionSpec) -> bytes:
    return (",".join(spec.columns) + "\n").encode()


def _canonical_chunks(competition, spec, load_prediction, progress, images_per_batch) -> Iterator[bytes]:
    test, value_text = competition.test, _value_text(spec)
    yield _csv_header(spec)
    for start in tqdm(range(0, len(test), images_per_batch), desc="write submission", unit="batch",
                      disable=not progress):
        for i in range(start, min(start + images_per_batch, len(test))):
            # the id and the value joined in one pass: arrow's CSV writer is the slow path here
            values = box_values(load_prediction(i), test[i].boxes, spec).reshape(-1)
            yield _rows_text(spec.codec.ids_for(i), values, value_text)


def _sample_chunks(competition, spec, load_prediction, progress) -> Iterator[bytes]:
    """Rows in the sample submission's order, with its ids as written there."""
    sample, value_text = spec.sample, _value_text(spec)
    # box pixels (~34 KB an image) of every image seen so far: rows of a sample submission may
    # come in any order, and reloading a prediction per batch would decode each image many times
    cache: dict[int, np.ndarray] = {}
    yield _csv_header(spec)
    rows = 0
    for batch in tqdm(batches(open_csv(sample, spec.columns), sample), desc="write submission", unit="batch",
                      disable=not progress):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{sample}: line {base + i + 2}: {message} (check data.format / data.id_pattern)")

        parsed = spec.codec.parse(batch.column(0), fail)
        values = np.empty(batch.num_rows, dtype=np.uint8)
        for image in np.unique(parsed.image):
            image = int(image)
            if image not in cache:
                cache[image] = box_values(load_prediction(image), competition.test[image].boxes, spec)
            rows_of = np.flatnonzero(parsed.image == image)
            values[rows_of] = cache[image][parsed.box[rows_of], parsed.row[rows_of], parsed.col[rows_of],
                                           parsed.channel[rows_of]]
        yield bytes(_rows_text(batch.column(0).cast(pa.string()), values, value_text))
        rows += batch.num_rows
