"""notebooks/kaggle.ipynb top to bottom, as on Kaggle: the source and the competition read-only
under an input folder, the package installed from there, every output in a working folder
elsewhere. The parameters cell is replaced (the sample, unet-l2-cpu for 2 steps, pip --target)."""

import shutil
import subprocess
import sys

import nbformat

from tests.conftest import REPO
from tests.test_package import files_in, read_only_mount, source_copy

NOTEBOOK = REPO / "notebooks/kaggle.ipynb"
# runs in a process of its own, so that a mount namespace can hold the read-only input
EXECUTE = """
import sys
import nbformat
from nbclient import NotebookClient

notebook = nbformat.read(sys.argv[1], as_version=4)
try:  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": sys.argv[3]}}).execute()
finally:
    nbformat.write(notebook, sys.argv[2])
"""


def test_stored_kaggle_notebook_has_no_outputs_and_one_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])] == code[:1]
    assert 'VARIANT = "unet-l2"' in code[0].source and "/kaggle/input/photo-pipeline-src" in code[0].source


def test_kaggle_notebook_installs_submits_trains_and_ranks(sample_template, tmp_path):
    inputs, work, site = tmp_path / "input", tmp_path / "working", tmp_path / "site"
    source = source_copy(inputs / "photo-pipeline-src")
    shutil.copytree(sample_template / "data/sample", inputs / "photo-reconstruction")
    site.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells[1].source = "\n".join([
        f"SOURCE = {str(source)!r}",
        f"DATA = {str(inputs / 'photo-reconstruction/Dataset')!r}",
        f"WORK = {str(work)!r}",
        'VARIANT = "unet-l2-cpu"',
        "MAX_STEPS = 2",
        f"INSTALL_TARGET = {str(site)!r}",
    ])
    given, done = tmp_path / "given.ipynb", tmp_path / "done.ipynb"
    nbformat.write(notebook, given)
    before = files_in(inputs)
    execute = [sys.executable, "-c", EXECUTE, str(given), str(done), str(tmp_path)]
    prefix = read_only_mount()
    if prefix:  # the input read-only even for root, as /kaggle/input is
        script = f"mount --bind -o ro {inputs} {inputs} && ! touch {inputs}/probe 2>/dev/null && exec \"$@\""
        execute = [*prefix, "sh", "-c", script, "sh", *execute]
    ran = subprocess.run(execute, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert files_in(inputs) == before  # nothing written, moved or touched in the input
    outputs = [o for cell in nbformat.read(done, as_version=4).cells if cell.cell_type == "code" for o in cell.outputs]
    printed = "".join(o.get("text", "") for o in outputs)
    assert f"pipeline from: {site / 'pipeline'}\n" in printed  # the installed package, not the checkout
    for variant in ("telea", "unet-l2-cpu"):
        assert (work / f"submissions/{variant}.csv").is_file()
    assert (work / "checkpoints/unet-l2-cpu/best.pt").is_file()
    ranked = [line.split()[0] for line in printed.splitlines() if line.strip()]  # leaderboard rows start with the name
    assert "telea" in ranked and "unet-l2-cpu" in ranked
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the leaderboard's table
