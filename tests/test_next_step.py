"""Next steps in messages: lower layers name a step, the CLI says how it is typed (a make command
under the Makefile, the program's own command line otherwise); and the layers stay apart."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.next_step import NextStep, render_with

PACKAGE = Path(cli.__file__).resolve().parent
REPO = PACKAGE.parent


@pytest.fixture(autouse=True)
def cli_renderer(monkeypatch):
    monkeypatch.delenv("PIPELINE_VIA", raising=False)
    render_with(cli.render_step)
    yield
    render_with(None)


def test_a_next_step_reads_as_make_under_the_makefile_and_as_the_command_line_otherwise(monkeypatch):
    step = NextStep("train", {"variant": "pix2pix-cpu", "resume": True, "restart": False, "data": None})
    assert str(step) == "python -m pipeline train --variant pix2pix-cpu --resume"
    other = NextStep("submit", {"variant": "tiny", "param": "checkpoint=<file>", "data": "my data"})
    assert str(other) == "python -m pipeline submit --variant tiny --param checkpoint=<file> --data 'my data'"
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/photo-pipeline", "train"])  # the installed script
    assert str(step) == "photo-pipeline train --variant pix2pix-cpu --resume"

    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert str(step) == "make train VARIANT=pix2pix-cpu RESUME=1"
    assert str(other) == "make submit VARIANT=tiny CKPT=<file> DATA='my data'"
    # an option the Makefile has no variable for: the command line, which takes it
    assert str(NextStep("predict", {"variant": "telea", "splits": "val"})) == (
        "photo-pipeline predict --variant telea --splits val")


def test_the_cli_names_the_next_step_as_it_was_started(workspace, capsys, monkeypatch):
    assert cli.main(["score", "--variant", "navier-stokes"]) == 2
    err = capsys.readouterr().err
    assert "run `python -m pipeline submit --variant navier-stokes`" in err and "make" not in err
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli.main(["score", "--variant", "navier-stokes", "--data", "data/sample"]) == 2
    assert "run `make submit VARIANT=navier-stokes DATA=data/sample`" in capsys.readouterr().err


def test_the_makefile_tells_the_cli_it_runs_it():
    """Every Makefile line that starts the CLI sets PIPELINE_VIA=make."""
    lines = [line for line in (REPO / "Makefile").read_text().splitlines()
             if "-m pipeline" in line and not line.lstrip().startswith("#")]
    assert len(lines) >= 3  # RUN, TRAIN_RUN and SD_RUN (the last two for accelerate launch)
    for line in lines:
        launches = line.count("-m pipeline")
        assert line.count("PIPELINE_VIA=make") == launches, line


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_only_the_cli_names_make_targets_in_messages():
    """Every string in the package's code (f-string pieces included; docstrings and comments
    aside) outside cli.py is free of `make <target>`: lower layers give a NextStep instead."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "cli.py":
            continue
        for node in _strings_outside_docstrings(ast.parse(path.read_text(), str(path))):
            if re.search(r"\bmake [a-z]", node.value) or re.search(r"\b[A-Z]+=<", node.value):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_scoring_reads_predictions_without_importing_the_predict_step():
    """predict -> score -> data.predictions, one way (imports inside functions count too)."""
    for module in ("score.py", "data/predictions.py", "next_step.py"):
        assert "pipeline.predict" not in _imported(PACKAGE / module), module
    assert "pipeline.score" not in _imported(PACKAGE / "data/predictions.py")
    assert not {m for m in _imported(PACKAGE / "next_step.py") if m.startswith("pipeline.") and m != "pipeline.config"}
