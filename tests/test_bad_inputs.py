"""Bad inputs a person may hand the pipeline: each gets one line naming the thing and what to do."""

import errno
import gzip
import os
import re
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


class _FillingFile:
    """A file whose writes fail with ENOSPC once `room` bytes are written (a disk filling up)."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.real.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_a_full_disk_during_submit_names_the_file_and_keeps_the_previous_one(workspace, capsys, monkeypatch):
    """A full disk gave an OSError traceback (nothing was lost): say it, name the file, keep the old one."""
    import builtins

    import pandas as pd

    import pipeline.submission.write as write

    assert _run(capsys, "submit", "--variant", "telea")[0] == 0
    csv, board = Path("submissions/telea.csv"), Path("submissions/leaderboard.csv")
    before_csv, before_board = csv.read_bytes(), board.read_bytes()

    def filling_open(file, mode="r", *args, **kwargs):
        real = builtins.open(file, mode, *args, **kwargs)
        return _FillingFile(real, 1 << 20) if str(file).endswith(".tmp") and "w" in mode else real

    monkeypatch.setattr(write, "open", filling_open, raising=False)  # the CSV writer: 1 MB, then no space
    code, _, err = _run(capsys, "submit", "--variant", "telea", "--param", "radius=5")
    assert code == 2 and "Traceback" not in err, err
    assert ("error: submissions/telea.csv: the disk is full (No space left on device) while writing it; "
            "submissions/telea.csv is unchanged and its temporary file removed") in err
    assert csv.read_bytes() == before_csv and board.read_bytes() == before_board
    assert not list(Path("submissions").glob(".*.tmp"))
    monkeypatch.delattr(write, "open")

    real_to_csv = pd.DataFrame.to_csv

    def to_csv_on_a_full_disk(self, path, *args, **kwargs):  # the leaderboard: half a row, then no space
        real_to_csv(self, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:-100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv_on_a_full_disk)
    code, _, err = _run(capsys, "submit", "--variant", "mean")
    assert code == 2 and ("error: submissions/leaderboard.csv: the disk is full (No space left on device) while "
                          "writing it; the leaderboard is unchanged") in err, err
    assert board.read_bytes() == before_board and not list(Path("submissions").glob(".*.tmp"))


# -- messages: each names the thing and what to do

TEST_DIR = Path("data/sample/Dataset/Testing_Data")


def _edit_test_boxes(edit) -> None:
    import pandas as pd

    info = pd.read_csv(TEST_DIR / "masked_info.csv", index_col=0, dtype=str)
    edit(info)
    info.to_csv(TEST_DIR / "masked_info.csv")


def _fails(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_huge_box_coordinate_is_refused_naming_the_line(workspace, capsys):
    """1e30 once wrapped to y=-9223372036854775808 in the message."""
    _edit_test_boxes(lambda info: info.__setitem__("box1_row", ["1e30"] + list(info["box1_row"][1:])))
    assert _fails(capsys, "validate", "--csv", "x.csv") == (
        f"error: {TEST_DIR}/masked_info.csv: line 2: box1_row='1e30' is out of range (pixel coordinates are below "
        "1048576); mend that line")


def test_a_name_two_test_images_share_names_both(workspace, capsys):
    """The sample holds `Person-Train (1).jpg` and `.jpeg`: a CSV naming the stem names neither."""
    _edit_test_boxes(lambda info: info.__setitem__("filename", ["Person-Train (1)"] + list(info["filename"][1:])))
    assert _fails(capsys, "validate", "--csv", "x.csv") == (
        f"error: {TEST_DIR}/masked_info.csv: line 2: image 'Person-Train (1)' names 2 test images: "
        f"{TEST_DIR}/Person-Train (1).jpeg, {TEST_DIR}/Person-Train (1).jpg; name one of them in full (with its "
        "extension) in the CSV, or rename the other")


@pytest.mark.parametrize("csv_name", ["Microscopy (2).webp", "Microscopy (2).png"])
def test_a_test_image_of_an_extension_not_read_says_which_are(workspace, capsys, csv_name):
    (TEST_DIR / "Microscopy (2).png").rename(TEST_DIR / "Microscopy (2).webp")
    _edit_test_boxes(lambda info: info.__setitem__("filename", info["filename"].replace("Microscopy (2).png", csv_name)))
    line = _fails(capsys, "validate", "--csv", "x.csv")
    assert f"image {csv_name!r} is {TEST_DIR}/Microscopy (2).webp, and .webp is not read: only .jpg, .jpeg, .png " \
           "images are; convert it (and its name in the CSV) or remove both" in line, line


def test_data_a_file_and_csv_a_folder_say_what_they_are(workspace, capsys):
    Path("notes.txt").write_text("hello")
    assert _fails(capsys, "validate", "--csv", "x.csv", "--data", "notes.txt") == (
        "error: notes.txt: is a file, not a folder; the competition is the folder that holds Dataset/ (or train/ and "
        "test/ and the bbox CSV): unpack it if it is an archive")
    Path("submissions").mkdir()
    for argv in (["validate", "--csv", "submissions"], ["score", "--csv", "submissions"]):
        assert _fails(capsys, *argv) == ("error: submissions: is a folder, not a submission file; name the CSV "
                                         "file itself")


def test_a_competition_slug_is_checked_before_any_folder_or_request(workspace, home, capsys):
    Path("x").mkdir()
    (Path("x") / "keep.txt").write_text("not a competition")
    for argv in (["data", "--competition", "../../x"], ["kaggle-scores", "--competition", "a/b"],
                 ["kaggle-submit", "--variant", "mean", "--competition", "photo reconstruction"]):
        line = _fails(capsys, *argv)
        assert f"error: {argv[-1]!r} is not a competition slug: it is letters, digits and dashes" in line, line
    assert sorted(p.name for p in Path("x").iterdir()) == ["keep.txt"] and not Path("data/raw").exists()


def test_an_error_during_a_progress_bar_starts_its_own_line(submitted, capsys):
    lines = submitted.read_text().splitlines(keepends=True)
    lines[2000] = lines[2000].rsplit(",", 1)[0] + ",7\n"  # out of 0..1
    submitted.write_text("".join(lines))
    code, _, err = _run(capsys, "validate", "--csv", str(submitted))
    assert code == 2 and "\nerror: submissions/mean.csv: line 2001: Value is 7: values must lie in 0..1" in err, err


def test_kaggle_submit_knows_one_folder_however_spelled_and_a_csv_of_other_data(workspace, standin, capsys):
    from pipeline.config import data_config
    from pipeline.data.sample import build_sample

    assert _run(capsys, "submit", "--variant", "telea")[0] == 0  # on data/sample, its default
    build_sample(data_config({"root": "data/other", "truth": "data/other-truth"}), train_per_photo=6,
                 test_per_photo=3, seed=5)
    assert _run(capsys, "submit", "--variant", "telea", "--data", "data/other")[0] == 0  # rewrites telea.csv
    line = _fails(capsys, "kaggle-submit", "--variant", "telea", "--competition", "photo-reconstruction")
    assert line.startswith("error: submissions/telea.csv was written for data/other (variant telea, ") and \
        "not for data/sample: run `python -m pipeline submit --variant telea --data data/sample` again to write it for this data" in line, line
    line = _fails(capsys, "validate", "--csv", "submissions/telea.csv")
    assert line.startswith("error: submissions/telea.csv was written for data/other (variant telea, ") and \
        "not for data/sample: validate it there (`python -m pipeline validate --csv submissions/telea.csv --data '<that folder>'`), or write it for this data (" in line, line
    # the folder however spelled is one competition: data/other/Dataset is data/other
    code, out, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", "photo-reconstruction",
                          "--data", "data/other/Dataset")
    assert code == 0 and "Submitting submissions/telea.csv " in out + err, err
    # an uploaded CSV is kept when a submit rewrites telea.csv, and uploads again from where it was kept
    assert _run(capsys, "submit", "--variant", "telea")[0] == 0
    code, out, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", "photo-reconstruction",
                          "--data", "data/other")
    kept = re.search(r"Submitting (submissions/telea\.[0-9a-f]{12}\.csv) ", out + err)
    assert code == 0 and kept, err
    assert Path(kept.group(1)).is_file() and Path("submissions/telea.csv").is_file()
    line = _fails(capsys, "kaggle-submit", "--variant", "mean", "--competition", "photo-reconstruction")
    assert line.startswith("error: variant 'mean' has no submission yet")


def test_an_error_under_a_bar_left_open_starts_its_own_line(workspace, capsys, monkeypatch):
    """Any step (a training loop, say) stopped by an error under its bar: the CLI closes the bar first."""
    from tqdm import tqdm

    import pipeline.cli as cli
    from pipeline.config import ConfigError

    def stops_midway(args):
        bar = tqdm(total=10, desc="train x", unit="step")
        bar.update(3)
        raise ConfigError("params.lr: stopped midway")

    monkeypatch.setattr(cli, "cmd_validate", stops_midway)
    code, _, err = _run(capsys, "validate", "--csv", "x.csv")
    assert code == 2 and "3/10" in err and "\nerror: params.lr: stopped midway" in err, err


def test_kaggle_submit_on_a_folder_never_used_lists_the_newest_folders_only(workspace, capsys):
    from pipeline.leaderboard import Leaderboard

    for name in ("a", "b", "c", "d", "a", "e"):
        Leaderboard().record({"variant": "telea", "data": f"data/{name}", "sha256": name * 64})
    line = _fails(capsys, "kaggle-submit", "--variant", "telea", "--competition", "photo-reconstruction")
    assert line.startswith("error: telea was submitted on data/e, data/a, data/d (and 2 older), not on data/sample: "
                           "pass that folder"), line


def test_a_full_disk_while_predicting_names_the_folder_and_keeps_the_previous_predictions(workspace, capsys,
                                                                                          monkeypatch):
    import pipeline.predict as predict

    assert _run(capsys, "predict", "--variant", "mean", "--splits", "val")[0] == 0
    (folder,) = Path("data/predictions").glob("*/mean/val")
    before = sorted(p.name for p in folder.iterdir())

    def no_space(path, image, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(predict, "write_image", no_space)
    line = _fails(capsys, "submit", "--variant", "mean")
    assert line == (f"error: {folder}.partial: the disk is full (No space left on device) while writing it; the "
                    f"previous predictions in {folder} are unchanged; free some space on it (df -h {folder.parent}) "
                    "and run again"), line
    assert sorted(p.name for p in folder.iterdir()) == before
