"""What a competition's submission must be: format, id codec, header, and the expected ids.

Built once per command from the competition (and its sample submission, read once here: its
header, its ids, whether each appears once, and the range of its values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.competition import Competition
from pipeline.submission.csvio import SubmissionError, batches, header_of, not_text, open_csv
from pipeline.submission.formats import SubmissionFormat, competition_format
from pipeline.submission.ids import IdCodec, IdError, add_keysums, keysum


@dataclass
class SubmissionSpec:
    fmt: SubmissionFormat
    codec: IdCodec
    columns: tuple[str, str]
    sample: Path | None  # the sample submission that fixes ids and order, if any
    expected_rows: int
    expected_keysum: int

    @property
    def value_range(self) -> tuple[float, float]:
        return self.fmt.value_range

    def describe(self) -> str:
        return f"submission format {self.fmt.describe()}" + (f"; ids and order from {self.sample}" if self.sample else "")


def submission_spec(competition: Competition) -> SubmissionSpec:
    """The submission `competition` expects; a bad sample submission is a SubmissionError."""
    cfg = competition.config
    sample = competition.sample_submission
    fmt = competition_format(competition)
    try:
        codec = IdCodec(fmt, competition.test, cfg.box_size, cfg.boxes_per_image, cfg.id_pattern)
    except IdError as exc:
        raise SubmissionError(str(exc)) from None
    if sample is None:
        return SubmissionSpec(fmt, codec, fmt.columns, None, codec.total, codec.expected_keysum())
    reason = not_text(sample)
    if reason:
        raise SubmissionError(reason)
    header = header_of(sample)
    if len(header) != 2:
        raise SubmissionError(f"{sample}: expected two columns (id, value), got {header}")
    columns = (header[0], header[1])
    read = _read_sample(sample, columns, codec)
    if read.values_kind:  # the sample's values decide decimal/integer unless data.values is set
        fmt = competition_format(competition, read.values_kind)
        codec.fmt = fmt  # the ids do not depend on the value kind
    low, high = fmt.value_range
    outside = [x for x in (read.first_below_zero, read.first_above_one if fmt.values == "decimal" else read.first_above_255) if x]
    if outside:
        line, value = min(outside)
        raise SubmissionError(f"{sample}: line {line}: value {value:g} is outside {low:g}..{high:g}, the range of the "
                              f"chosen values ({fmt.values}; data.values overrides it)")
    return SubmissionSpec(fmt, codec, columns, sample, read.rows, read.keysum)


@dataclass
class _SampleRead:
    rows: int
    keysum: int
    values_kind: str | None  # decimal / integer as the values show it, None when they cannot tell
    first_below_zero: tuple[int, float] | None  # (line, value) of the first value < 0
    first_above_one: tuple[int, float] | None
    first_above_255: tuple[int, float] | None


def _read_sample(sample: Path, columns, codec: IdCodec) -> _SampleRead:
    """One pass over the sample: its ids' key sum (a repeated id refused, naming both lines) and
    what its values say: their kind (decimal when all in 0..1 and some not 0 or 1, integer when
    some exceed 1) and the first line outside each range."""
    rows, total, keys = 0, 0, []
    top, fractional = 0.0, False
    firsts: dict[str, tuple[int, float] | None] = {"below_zero": None, "above_one": None, "above_255": None}
    for batch in batches(open_csv(sample, columns), sample):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{sample}: line {base + i + 2}: {message} (check data.format / data.id_pattern)")

        keys.append(codec.parse(batch.column(0), fail).key)
        values = batch.column(1).to_numpy(zero_copy_only=False)
        for name, where in (("below_zero", values < 0), ("above_one", values > 1), ("above_255", values > 255)):
            if firsts[name] is None and where.any():
                i = int(np.flatnonzero(where)[0])
                firsts[name] = (rows + i + 2, float(values[i]))
        present = values[~np.isnan(values)]
        if present.size:
            top = max(top, float(present.max()))
            fractional |= bool((present != np.round(present)).any())
        total = add_keysums(total, keysum(keys[-1]))
        rows += batch.num_rows
    every = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(every, kind="stable")
    repeated = np.flatnonzero(every[order][1:] == every[order][:-1])
    if repeated.size:
        first, second = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        raise SubmissionError(
            f"{sample}: lines {first + 2} and {second + 2} hold the same id "
            f"{codec.describe_key(every[first])!r}; a sample submission must list every id once"
        )
    kind = "integer" if top > 1 else ("decimal" if fractional else None)
    return _SampleRead(rows, total, kind, firsts["below_zero"], firsts["above_one"], firsts["above_255"])
