"""Shared files: an atomic write leaves the old file on failure and no temporary behind; a lock
makes the second holder wait, tells it who holds the lock, and leaves no file behind."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.checkpoint import read_checkpoint, save_checkpoint
from pipeline.files import atomic_write, locked, temporary_path, write_bytes_atomic
from pipeline.leaderboard import Leaderboard


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    path = tmp_path / "new" / "folder" / "out.txt"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.name == f".out.txt.{os.getpid()}.tmp"
        tmp.write_text("new")
        assert not path.exists()  # nothing is visible before the block ends
    assert path.read_text() == "new"
    write_bytes_atomic(path, b"newer")
    assert path.read_bytes() == b"newer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert not temporary_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failed_checkpoint_save_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"config": {}, "step": lambda: 2})  # a lambda cannot be pickled
    assert read_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_leaderboard_writes_leave_only_the_csv(tmp_path):
    board = Leaderboard(tmp_path / "leaderboard.csv")
    board.record({"variant": "telea", "method": "telea", "val_rmse": 0.1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv"]
    assert board.read()["variant"].tolist() == ["telea"]


def test_a_waiting_holder_is_told_who_holds_the_lock(tmp_path, capsys):
    path = tmp_path / "runs" / ".lock"
    events = []

    def second():
        with locked(path, "testing the lock"):
            events.append("second holds it")

    with locked(path, "testing the lock"):
        assert path.read_text().startswith(f"pid {os.getpid()} (")  # who holds it, in the lock file
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert events == [], "the second holder must wait for the first"
        events.append("first lets go")
    waiter.join(10)
    assert events == ["first lets go", "second holds it"]
    err = capsys.readouterr().err
    assert err.startswith(f"waiting: pid {os.getpid()} (") and err.rstrip().endswith("is testing the lock")
    assert list(path.parent.iterdir()) == []  # released: no lock file left


# each process takes the lock `rounds` times; inside it, it creates a marker file that must not
# exist (O_EXCL: a second holder at the same moment fails there), appends its turn, removes it
CONTENDER = """
import os, sys, time
from pathlib import Path
from pipeline.files import locked

folder, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(folder / f"ready-{name}").touch()
while len(list(folder.glob("ready-*"))) < int(sys.argv[4]):
    time.sleep(0.01)  # start together
for turn in range(rounds):
    with locked(folder / "locks" / ".board.lock", f"round {turn} of {name}"):
        marker = os.open(folder / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with open(folder / "turns.log", "a") as log:
            log.write(f"{name} {turn}\\n")
        time.sleep(0.002)
        os.close(marker)
        os.unlink(folder / "inside")
"""


def test_processes_contending_for_a_lock_take_turns_and_leave_no_lock_file(tmp_path):
    processes, rounds = 4, 60
    (tmp_path / "locks").mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), f"p{i}", str(rounds), str(processes)],
                                stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
               for i in range(processes)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * processes, [e[-800:] for e in errors]
    turns = (tmp_path / "turns.log").read_text().split("\n")[:-1]
    assert len(turns) == processes * rounds  # every turn ran, none lost to a second holder at once
    assert list((tmp_path / "locks").iterdir()) == []  # no lock file left behind
    waits = [line for e in errors for line in e.splitlines() if line.startswith("waiting: ")]
    assert waits, "with four processes contending, some must have waited"
    assert all(" is round " in line for line in waits), waits


def test_an_uncontended_lock_prints_nothing(tmp_path, capsys):
    with locked(tmp_path / ".lock", "testing"):
        pass
    with locked(tmp_path / ".lock", "testing"):
        pass
    assert capsys.readouterr().err == ""


def test_replace_folder_publishes_whole_and_puts_the_old_one_back_when_the_rename_fails(tmp_path, monkeypatch):
    from pipeline.files import replace_folder

    final, staging = tmp_path / "out", tmp_path / "staging"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_folder(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"] and not staging.exists()
    assert not (tmp_path / "out.previous").exists()

    again = tmp_path / "again"
    again.mkdir()
    real_rename = Path.rename

    def failing(self, target):
        if self == again:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        replace_folder(again, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]  # the published folder is back
