"""`pip install .` gives the same CLI, configs and formats included, run from any folder; it
installs from a read-only copy (a Kaggle dataset) and writes nothing into the source folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# what a copy of the source leaves out: at the top, what the pipeline generates, the environments
# and git; anywhere, caches and build outputs
NOT_SOURCE_AT_TOP = shutil.ignore_patterns(".git", ".venv*", "data", "submissions", "checkpoints", "runs")
NOT_SOURCE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc")


def source_copy(folder: Path) -> Path:
    """The repository's source files (no data, environments or build outputs) copied to `folder`."""
    def ignore(path, names):
        top = NOT_SOURCE_AT_TOP(path, names) if Path(path) == REPO else set()
        return top | NOT_SOURCE(path, names)

    shutil.copytree(REPO, folder, ignore=ignore)
    return folder


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def pip_install(source: Path, target: Path, *, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    """pip install --no-deps --target `target` `source` (pip fetches the build backend, hatchling)."""
    return subprocess.run([*wrap, sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps",
                           "--target", str(target), str(source)], capture_output=True, text=True, cwd=target.parent)


def read_only_mount() -> list[str] | None:
    """A command prefix that runs `sh -c SCRIPT` in a mount namespace of its own, where SCRIPT can
    bind-mount a folder read-only (root ignores chmod): `unshare --mount`, mapped to root when not."""
    if not shutil.which("unshare"):
        return None
    prefix = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*prefix, "sh", "-c", "mount --bind -o ro / /mnt"], capture_output=True, text=True)
    return prefix if probe.returncode == 0 else None


def test_installed_package_runs_the_pipeline_from_anywhere(workspace, tmp_path):
    source = source_copy(tmp_path / "src")
    before = files_in(source)
    target = tmp_path / "site"
    done = pip_install(source, target)
    assert done.returncode == 0, done.stderr
    # nothing written into the checkout: no egg-info, no build/
    assert files_in(source) == before
    assert (target / "pipeline/configs/telea.yaml").is_file()
    assert (target / "pipeline/submission/formats/photo-reconstruction.yaml").is_file()
    assert (target / "pipeline/templates/report.html.j2").is_file()
    assert (target / "bin/photo-pipeline").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "submit", "--variant", "mean", "--data", "data/sample"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "format photo-reconstruction" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import pipeline.config as c; print(c.CONFIG_DIR)"],
                           cwd=workspace, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "pipeline/configs")
    page = subprocess.run([sys.executable, "-c", "import pipeline.report as r; print(r.page_template().filename)"],
                          cwd=workspace, env=env, capture_output=True, text=True)
    assert page.stdout.strip() == str(target / "pipeline/templates/report.html.j2"), page.stderr
    assert (workspace / "submissions/mean.csv").read_text().startswith("filename_box_pixel,Value")


def test_pip_installs_from_a_read_only_folder(tmp_path):
    """The README's `pip install /kaggle/input/photo-pipeline-src`: the source on a read-only mount."""
    prefix = read_only_mount()
    if prefix is None:
        pytest.skip("no `unshare --mount` with a read-only bind mount here (root ignores chmod, so a chmod'ed "
                    "copy would prove nothing)")
    source = source_copy(tmp_path / "src")
    target = tmp_path / "site"
    target.mkdir()
    install = (f"mount --bind -o ro {source} {source} && ! touch {source}/probe 2>/dev/null && "
               f"exec {sys.executable} -m pip install -q --no-cache-dir --no-deps --target {target} {source}")
    done = subprocess.run([*prefix, "sh", "-c", install], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (source / "probe").exists()
    script = target / "bin/photo-pipeline"
    assert script.is_file() and (target / "pipeline/configs/unet-l2-cpu.yaml").is_file()
    # the installed script, not the checkout's package
    done = subprocess.run([sys.executable, str(script), "--help"], env={**os.environ, "PYTHONPATH": str(target)},
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "submit" in done.stdout, done.stderr


def test_serve_without_its_extra_says_how_to_install_it(monkeypatch, capsys):
    from pipeline.cli import main

    for name in [m for m in sys.modules if m == "pipeline.serve" or m.startswith(("pipeline.serve.", "fastapi"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails as if not installed
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "fastapi" in err and "pip install '.[serve]'" in err
