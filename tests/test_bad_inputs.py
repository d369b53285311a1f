"""Bad inputs a person may hand the pipeline: each gets one line naming the thing and what to do."""

import gzip
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.data.competition import load_competition
from pipeline.submission import SubmissionError, submission_spec, validate_submission
from tests.conftest import REPO, small_data_config


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def submitted(workspace, capsys) -> Path:
    """The workspace with submissions/mean.csv written (18 MB: several of arrow's read blocks)."""
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    return Path("submissions/mean.csv")


def test_utf16_and_gzip_submissions_are_named_and_the_process_exits(submitted, capsys):
    """A real-size UTF-16 file once gave a UnicodeDecodeError traceback, and a failure in arrow's
    first block left reader threads that could hang or abort the interpreter at its exit."""
    text = submitted.read_text()
    Path("u16.csv").write_bytes(text.encode("utf-16"))  # 36 MB, with its byte order mark
    Path("small16.csv").write_bytes(text[:3000].encode("utf-16"))
    Path("packed.csv").write_bytes(gzip.compress(submitted.read_bytes(), compresslevel=1))
    expected = {"u16.csv": "u16.csv: is UTF-16 text", "small16.csv": "small16.csv: is UTF-16 text",
                "packed.csv": "packed.csv: is a gzip archive"}
    for name, message in expected.items():
        for argv in (["validate", "--csv", name], ["score", "--csv", name]):
            code, _, err = _run(capsys, *argv)
            assert code == 2 and message in err and "Traceback" not in err, err
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, message in expected.items():  # a process of its own: it must end, with code 2
        done = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--csv", name], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_a_file_without_line_breaks_is_refused_in_bounded_memory(submitted, capsys, monkeypatch):
    """`truncate -s 2G` once took 4.4 GB and ended in a _csv.Error traceback: the line is too long."""
    import pipeline.submission.csvio as csvio

    monkeypatch.setattr(csvio, "MAX_LINE", 1000)
    path = Path("long.csv")
    with open(path, "wb") as f:
        f.write(submitted.read_bytes()[:200])  # the header and a few rows, then 48 MB of one line
        f.truncate(48 << 20)
    code, _, err = _run(capsys, "validate", "--csv", str(path))
    assert code == 2 and "long.csv: line 6 is longer than 1000 bytes (no line break)" in err, err
    competition = load_competition(small_data_config(Path.cwd()), check_images=False)
    spec = submission_spec(competition)
    tracemalloc.start()
    try:
        with pytest.raises(SubmissionError, match="is longer than 1000 bytes"):
            validate_submission(path, competition, progress=False, spec=spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MB held for a 48 MB file"
    with open(path, "wb") as f:  # the same past arrow's first block: found by the scan after arrow's error
        f.write(submitted.read_bytes()[: 6 << 20])
        f.write(b"7" * (6 << 20))
    code, _, err = _run(capsys, "validate", "--csv", str(path))
    assert code == 2 and "long.csv: line" in err and "is longer than 1000 bytes" in err, err


@pytest.mark.parametrize("where, message", [
    ("config", "line 3: malformed CSV (unexpected end of data; a quoted field cut off or hand-edited)"),
    ("description", "line 3: malformed CSV (unexpected end of data; a quoted field cut off or hand-edited)"),
    ("closed", "line 3: config is not valid JSON ('{'; truncated or hand-edited)"),
])
def test_a_leaderboard_cut_inside_a_row_stops_submit_and_compare(workspace, capsys, where, message):
    """`head -c` of the leaderboard: a row cut inside its config was kept (config = `{`) and
    compare failed on its JSON; cut inside a quoted field, submit ended in a pandas ParserError."""
    for name in ("mean", "telea"):
        assert _run(capsys, "submit", "--variant", name)[0] == 0
    board = Path("submissions/leaderboard.csv")
    text = board.read_text()
    last = text.rindex("\n", 0, len(text) - 1) + 1  # the start of the last row
    if where == "description":  # a description with a comma is quoted: cut inside it
        text = text[:last] + text[last:].replace(",OpenCV Telea", ',"OpenCV, Telea', 1)
        damaged = text[: text.index('"OpenCV,', last) + 5]
    else:
        damaged = text[: text.index('"{""batch_size', last) + 2]
        if where == "closed":  # the quote closed by hand: the field count is right, the JSON is not
            damaged += '"\n'
    board.write_text(damaged)
    before_csv = Path("submissions/telea.csv").read_bytes()
    for argv in (["submit", "--variant", "telea", "--param", "radius=5"], ["compare"], ["leaderboard"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and f"submissions/leaderboard.csv: {message}" in err, err
        assert "the rows before that line are intact" in err and "Traceback" not in err
    assert board.read_text() == damaged
    assert Path("submissions/telea.csv").read_bytes() == before_csv
