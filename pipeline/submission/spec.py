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


def submission_spec(competition: Competition) -> SubmissionSpec:
    """The submission `competition` expects; a bad sample submission is a SubmissionError."""
    cfg = competition.config
    sample = competition.sample_submission
    columns, sample_values = None, None
    if sample is not None:
        reason = not_text(sample)
        if reason:
            raise SubmissionError(reason)
        header = header_of(sample)
        if len(header) != 2:
            raise SubmissionError(f"{sample}: expected two columns (id, value), got {header}")
        columns = (header[0], header[1])
        sample_values = _value_kind(sample, columns)
    fmt = competition_format(competition, sample_values)
    try:
        codec = IdCodec(fmt, competition.test, cfg.box_size, cfg.boxes_per_image, cfg.id_pattern)
    except IdError as exc:
        raise SubmissionError(str(exc)) from None
    columns = columns or fmt.columns
    if sample is None:
        return SubmissionSpec(fmt, codec, columns, None, codec.total, codec.expected_keysum())
    rows, total = _sample_ids(sample, columns, codec, fmt)
    return SubmissionSpec(fmt, codec, columns, sample, rows, total)


def _value_kind(sample: Path, columns: tuple[str, str]) -> str | None:
    """decimal when the sample's values are all in 0..1 and some not 0 or 1, integer when some
    exceed 1, None when it cannot tell (all 0/1, or empty)."""
    top, fractional = 0.0, False
    for batch in batches(open_csv(sample, columns), sample):
        values = batch.column(1).to_numpy(zero_copy_only=False)
        values = values[~np.isnan(values)]
        if values.size:
            top = max(top, float(values.max()))
            fractional |= bool((values != np.round(values)).any())
    if top > 1:
        return "integer"
    return "decimal" if fractional else None


def _sample_ids(sample: Path, columns, codec: IdCodec, fmt: SubmissionFormat) -> tuple[int, int]:
    """Row count and key sum of the sample's ids; refuses a repeated id (naming both lines) and
    values outside the format's range."""
    rows, total, keys = 0, 0, []
    low, high = fmt.value_range
    for batch in batches(open_csv(sample, columns), sample):
        def fail(i: int, message: str, base=rows) -> None:
            raise SubmissionError(f"{sample}: line {base + i + 2}: {message} (check data.format / data.id_pattern)")

        parsed = codec.parse(batch.column(0), fail)
        values = batch.column(1).to_numpy(zero_copy_only=False)
        out = ~np.isnan(values) & ((values < low) | (values > high))
        if out.any():
            i = int(np.flatnonzero(out)[0])
            fail(i, f"value {values[i]:g} is outside {low:g}..{high:g}, the range of the chosen values "
                    f"({fmt.values}; data.values overrides it)")
        keys.append(parsed.key)
        total = add_keysums(total, keysum(parsed.key))
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
    return rows, total
