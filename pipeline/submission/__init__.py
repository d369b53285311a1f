"""Submission CSVs: formats (data, in formats/), ids, writing, validation, reading.

    formats.py   what a competition's CSV looks like (presets in formats/*.yaml)
    ids.py       canonical ids per test image, and any id parsed back to its pixel
    spec.py      one competition's expected submission (format + ids + sample submission)
    write.py     predictions -> CSV, validated while written, renamed into place when valid
    validate.py  any CSV checked before upload, naming the line
    read.py      a CSV back to box pixels, for scoring
"""

from pipeline.submission.csvio import SubmissionError
from pipeline.submission.read import read_submission
from pipeline.submission.spec import SubmissionSpec, submission_spec
from pipeline.submission.validate import Validation, validate_submission
from pipeline.submission.write import write_submission

__all__ = ["SubmissionError", "SubmissionSpec", "Validation", "read_submission", "submission_spec",
           "validate_submission", "write_submission"]
