"""Run a command that may start processes of its own (torchrun starts each rank in a session of its
own) under a hard timeout: on a hang every process it started is killed and the test fails, so a
deadlock fails CI instead of hanging it."""

from __future__ import annotations

import signal
import subprocess
import tempfile

import psutil
import pytest


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it (children in other sessions included)."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_with_timeout(cmd: list[str], timeout: float, env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    """subprocess.run(cmd) with text stdout/stderr; after `timeout` seconds the whole process tree is
    killed and the test fails, naming `what` and showing the end of stderr. Output goes through
    files, not pipes, so a straggler holding them cannot block the test."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            err.seek(0)
            pytest.fail(f"{what} still running after {timeout:.0f} s (deadlock?); stderr ends:\n{err.read()[-3000:]}")
        finally:
            if proc.returncode is None:
                kill_tree(proc.pid)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
