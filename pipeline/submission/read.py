"""Read a (validated) submission back into box pixels, for scoring what would be uploaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.competition import Competition
from pipeline.submission.csvio import SubmissionError, batches, open_csv
from pipeline.submission.spec import SubmissionSpec, submission_spec


def read_submission(path: Path, competition: Competition, spec: SubmissionSpec | None = None) -> np.ndarray:
    """Box pixels of a submission: float64 (n_test, boxes, S, S, 3), RGB, on the 0..255 scale.

    Decimal values (pixel/255) are scaled back, unrounded, so a score of the file is the score
    Kaggle computes. Holds every box pixel of the test set (a few hundred KB per image): for
    scoring, not for the streaming paths.
    """
    cfg = competition.config
    spec = spec or submission_spec(competition)
    s = cfg.box_size
    out = np.zeros((len(competition.test), cfg.boxes_per_image, s, s, 3), dtype=np.float64)
    scale = 255.0 if spec.fmt.values == "decimal" else 1.0
    rgb = [2, 1, 0] if spec.fmt.channels == "bgr" else [0, 1, 2]
    base = 0
    for batch in batches(open_csv(path, spec.columns), path):
        def fail(i: int, message: str, base=base) -> None:
            raise SubmissionError(f"{path}: line {base + i + 2}: {message}")

        ids, values = batch.column(0), batch.column(1)
        if ids.null_count:  # trailing blank lines
            keep = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            ids, values = ids.slice(0, keep), values.slice(0, keep)
        p = spec.codec.parse(ids, fail)
        channel = np.asarray(rgb)[p.channel]
        out[p.image, p.box, p.row, p.col, channel] = values.to_numpy(zero_copy_only=False) * scale
        base += batch.num_rows
    return out
