"""Files several processes share: written whole or not at all (`atomic_write`), a full disk named
(`disk_full`), and locks that say who holds them (`locked`)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.config import PipelineError

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


class DiskFullError(PipelineError, OSError):
    """No space left on the disk (or the quota used up) while writing; names the file."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException, path, kept: str) -> DiskFullError | None:
    """The DiskFullError for `exc` raised while writing `path` (None if it is another error);
    `kept` says what is left as it was."""
    if isinstance(exc, DiskFullError) or not (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return None
    return DiskFullError(f"{path}: the disk is full ({os.strerror(exc.errno)}) while writing it; {kept}; free some "
                         f"space on it (df -h {Path(path).parent}) and run again")


@contextmanager
def naming_a_full_disk(path, kept: str):
    """Turn a full disk while writing `path` into a DiskFullError that names it."""
    try:
        yield
    except OSError as exc:
        error = disk_full(exc, path, kept)
        if error is None:
            raise
        raise error from None


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: `.<name>.<pid>.tmp` beside it
    (the same folder, so the rename is atomic; one per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields the temporary path to write `path`'s new content to; when the block ends without an
    error it is renamed over `path`, otherwise it is removed and `path` keeps what it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`path` holds `data`, or (killed, disk full) what it held before."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def replace_folder(staging: Path, final: Path) -> None:
    """Publish the complete folder `staging` as `final`: the old `final` is moved aside, `staging`
    renamed into place, then the old one removed; some complete folder exists at every moment,
    and if the rename fails the old folder is put back."""
    staging, final = Path(staging), Path(final)
    previous = final.with_name(final.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        final.rename(previous)
    try:
        staging.rename(final)
    except OSError:
        if previous.exists() and not final.exists():
            previous.rename(final)  # put the old folder back rather than leave nothing
        raise
    shutil.rmtree(previous, ignore_errors=True)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of `path` left by processes that no longer run (a kill -9)."""
    path = Path(path)
    removed = [tmp for tmp in stale_temporaries(path.parent) if _TMP.match(tmp.name).group("name") == path.name]
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def stale_temporaries(folder: Path) -> list[Path]:
    """The temporary files in `folder` (`.<name>.<pid>.tmp`) whose process no longer runs."""
    found = []
    for tmp in sorted(Path(folder).glob(".*.tmp")):
        match = _TMP.match(tmp.name)
        if match and not _alive(int(match.group("pid"))):
            found.append(tmp)
    return found


def lock_is_held(path: Path) -> bool:
    """Whether some process holds the lock file `path` now (False when it is gone)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the flock taken to look


def remove_unheld_lock(path: Path) -> bool:
    """Remove the lock file `path` when no process holds it (one an earlier version of `locked`
    left behind); False when one does, or it is gone. Removed under its lock, as `locked` does."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _names(Path(path), fd):
            return False
        Path(path).unlink()
        return True
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (PermissionError: it does)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextmanager
def locked(path: Path, doing: str) -> Iterator[None]:
    """Hold the lock file `path` (an flock on it; its folder is created) for the block, and leave
    no file behind.

    The holder writes who it is into the lock file ("pid 123 (python -m pipeline submit ...,
    since 12:00:00)"); a process that has to wait first prints `waiting: <holder> is <doing>` on
    stderr. On release the holder removes the file while it still holds it, then unlocks; a
    waiter that then gets the lock on that removed file finds the path gone or naming another
    file, and starts again on the path as it is now, so at most one process holds the lock on
    the file the path names.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    print(f"waiting: {_holder(path)} is {doing}", file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(path, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before removed this file: lock the one the path names now
    try:
        _write_holder(fd)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: see the docstring
        os.close(fd)  # closing the last descriptor releases the flock


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _write_holder(fd: int) -> None:
    text = f"pid {os.getpid()} ({' '.join(sys.argv[:6])}, since {time.strftime('%H:%M:%S')})"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 4 MB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
