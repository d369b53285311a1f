"""`prune`: each variant's latest CSV and every CSV uploaded to Kaggle stay; older CSVs, the
temporaries of stopped processes and unheld lock files go, only with --apply; `submit` keeps an
uploaded CSV when it writes the variant's anew; with a row's CSV gone the leaderboard and the
report still work, and an upload of it says what happened."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from pipeline.leaderboard import Leaderboard
from pipeline.prune import apply_prune, plan_prune

MB = 1_000_000


def _csv(path: str, content: bytes) -> tuple[str, str]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def _row(board: Leaderboard, variant: str, path: str, sha: str, **fields) -> None:
    board.record({"variant": variant, "method": variant, "submission": path, "sha256": sha, "val_rmse": 0.1, **fields})


@pytest.fixture
def submissions(tmp_path, monkeypatch):
    """A leaderboard whose rows name: telea.csv (telea's latest), old-telea.csv (an older telea
    CSV), uploaded.csv (older, uploaded to Kaggle), pix.csv (pix's latest), plus a file no row
    names, one outside submissions/, a stale temporary and a lock file an older version left."""
    monkeypatch.chdir(tmp_path)
    board = Leaderboard()
    _row(board, "telea", *_csv("elsewhere/telea.csv", b"x" * MB))  # an older telea CSV, but not in submissions/
    old = _csv("submissions/old-telea.csv", b"a" * (2 * MB))
    up = _csv("submissions/uploaded.csv", b"b" * MB)
    _row(board, "telea", *old)
    _row(board, "telea", *up)
    board.update_kaggle(up[1], "51234", "complete", 0.1)
    _row(board, "telea", *_csv("submissions/telea.csv", b"c" * MB))
    _row(board, "pix", *_csv("submissions/pix.csv", b"d" * MB))
    Path("submissions/notes.csv").write_text("mine\n")
    Path("submissions/.telea.csv.999999999.tmp").write_bytes(b"e" * 1000)  # no such pid
    Path("submissions/.pix.csv.lock").write_text("pid 1 (old filelock holder)")
    return board


def _names(entries):
    return sorted(str(e.path) for e in entries)


def test_a_dry_run_lists_what_would_go_and_changes_nothing(submissions, capsys, monkeypatch):
    before = sorted(str(p) for p in Path("submissions").iterdir())
    board_before = Path("submissions/leaderboard.csv").read_bytes()
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli(["prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prune would free 2.0 MB in 3 file(s): run `make prune APPLY=1` to delete them")
    assert "remove  submissions/old-telea.csv" in out and "an older CSV of telea: not its latest, never uploaded" in out
    assert "keep    submissions/uploaded.csv" in out and "uploaded to Kaggle (ref 51234)" in out
    assert "keep    submissions/telea.csv" in out and "telea's latest" in out
    assert "notes.csv" not in out and "leaderboard.csv" not in out  # no row names them as a submission
    assert sorted(str(p) for p in Path("submissions").iterdir()) == before
    assert Path("submissions/leaderboard.csv").read_bytes() == board_before


def test_apply_keeps_the_latest_and_the_uploaded_and_removes_the_rest(submissions, capsys):
    plan = plan_prune(submissions)
    assert _names(plan.keep) == ["submissions/pix.csv", "submissions/telea.csv", "submissions/uploaded.csv"]
    assert _names(plan.remove) == ["submissions/.pix.csv.lock", "submissions/.telea.csv.999999999.tmp",
                                   "submissions/old-telea.csv"]
    assert cli(["prune", "--apply"]) == 0
    assert capsys.readouterr().out.startswith("pruned: 3 file(s), 2.0 MB freed")
    assert sorted(p.name for p in Path("submissions").iterdir()) == [
        "leaderboard.csv", "notes.csv", "pix.csv", "telea.csv", "uploaded.csv"]
    table = submissions.read()
    assert len(table) == 5 and table["submission"].iloc[1] == "submissions/old-telea.csv"  # the rows stay
    assert Path("elsewhere/telea.csv").exists()
    assert cli(["leaderboard", "--all"]) == 0  # and read as before
    assert cli(["prune"]) == 0
    assert capsys.readouterr().out.splitlines()[-4].startswith("nothing to prune")


def test_a_held_lock_file_and_a_csv_made_latest_since_the_listing_stay(submissions):
    plan = plan_prune(submissions)
    holder = os.open("submissions/.pix.csv.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a submit of pix running now
    assert "submissions/.pix.csv.lock" not in _names(plan_prune(submissions).remove)  # not listed while held
    _row(submissions, "old", "submissions/old-telea.csv", hashlib.sha256(b"a" * (2 * MB)).hexdigest())
    try:
        removed = apply_prune(plan, submissions)
    finally:
        os.close(holder)
    assert _names(removed) == ["submissions/.telea.csv.999999999.tmp"]
    assert Path("submissions/old-telea.csv").exists() and Path("submissions/.pix.csv.lock").exists()


def test_submit_keeps_an_uploaded_csv_when_it_writes_the_variants_anew(workspace, capsys):
    assert cli(["submit", "--variant", "telea"]) == 0
    board = Leaderboard()
    first = board.read().iloc[-1]
    board.update_kaggle(first["sha256"], "777", "complete", 0.1)
    assert cli(["submit", "--variant", "telea", "--param", "radius=9"]) == 0  # another CSV
    table = board.read()
    kept = Path(f"submissions/telea.{first['sha256'][:12]}.csv")
    assert kept.is_file() and hashlib.sha256(kept.read_bytes()).hexdigest() == first["sha256"]
    assert table["submission"].tolist() == [str(kept), "submissions/telea.csv"]  # its row points at it
    assert table["sha256"].iloc[1] != first["sha256"]
    assert cli(["submit", "--variant", "telea", "--param", "radius=5"]) == 0  # not uploaded: replaced
    assert sorted(p.name for p in Path("submissions").glob("*.csv")) == ["leaderboard.csv", kept.name, "telea.csv"]
    plan = plan_prune(board)
    assert _names(plan.keep) == [str(kept), "submissions/telea.csv"]
    assert [e for e in plan.remove if e.path.suffix == ".csv"] == []


def test_uploading_a_csv_no_longer_on_disk_says_so(workspace, capsys, monkeypatch):
    assert cli(["submit", "--variant", "telea"]) == 0
    Path("submissions/telea.csv").unlink()
    assert cli(["compare"]) == 0 and cli(["leaderboard"]) == 0  # they read the rows, not the CSVs
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli(["kaggle-submit", "--variant", "telea", "--competition", "photo-reconstruction"]) == 2
    err = capsys.readouterr().err
    assert "submissions/telea.csv: the CSV of telea's newest row" in err and "is no longer on disk" in err
    assert "run `make submit VARIANT=telea DATA=data/sample` to write it again" in err
