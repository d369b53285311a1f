"""The comparison report (pipeline/report.py, `compare`) and the notebooks, on baseline submissions
made for the small sample."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from nbclient import NotebookClient

from pipeline import report
from pipeline.cli import main
from pipeline.submit import submit_variant
from pipeline.config import ConfigError
from pipeline.data.boxes import boxes_mask
from pipeline.data.competition import load_competition, read_image
from pipeline.leaderboard import Leaderboard
from tests.conftest import REPO, small_data_config, variant

BASELINES = ("mean", "telea", "navier-stokes")
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def baselines(sample_template, tmp_path_factory) -> Path:
    """A workspace where the three baselines were submitted on the small sample."""
    root = tmp_path_factory.mktemp("baselines")
    shutil.copytree(sample_template / "data", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        competition = load_competition(small_data_config(root))
        for name in BASELINES:
            submit_variant(variant(name, root), competition, Leaderboard())
    return root


@pytest.fixture
def board(baselines, tmp_path, monkeypatch) -> Path:
    """A copy of the baselines' predictions and leaderboard in tmp_path, the working directory."""
    for folder in ("data/predictions", "submissions"):
        shutil.copytree(baselines / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class ReportParser(HTMLParser):
    """Table cells by table class -> variant -> data-column: (data-value, text); elements with a
    data-field inside a cell as "field:<name>" (with "details:<name>" when inside a <details>);
    a table row's classes under "class"; images (attributes) in page order; text by element class."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, tuple[str | None, str]]]] = {}
        self.images: list[dict[str, str]] = []
        self.texts: dict[str, list[str]] = {}
        self._table = self._row = self._cell = self._field = None
        self._text: list[str] = []
        self._field_text: list[str] = []
        self._details = 0
        self._classed: list[tuple[str, str, list[str]]] = []  # (tag, class, text) open elements with a class

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("class") and tag in ("p", "ul", "div", "section", "th"):
            self._classed.append((tag, attrs["class"], []))
        if tag == "details":
            self._details += 1
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), {})
        elif tag == "tr" and "data-variant" in attrs and self._table is not None:
            self._row = self._table.setdefault(attrs["data-variant"], {})
            self._row["class"] = (None, attrs.get("class") or "")
        elif tag == "td" and self._row is not None and "data-column" in attrs:
            self._cell = (attrs["data-column"], attrs.get("data-value"))
            self._text = []
        elif "data-field" in attrs and self._cell:
            self._field = attrs["data-field"]
            self._field_text = []
        elif tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        if self._cell:
            self._text.append(data)
        if self._field:
            self._field_text.append(data)
        for _, _, text in self._classed:
            text.append(data)

    def handle_endtag(self, tag):
        if self._classed and self._classed[-1][0] == tag:
            _, classes, text = self._classed.pop()
            for name in classes.split():
                self.texts.setdefault(name, []).append(" ".join("".join(text).split()))
        if tag == "details":
            self._details -= 1
        if self._field and tag in ("code", "dd", "pre"):
            text = "".join(self._field_text).strip()
            self._row[f"field:{self._field}"] = (None, text)
            if self._details:
                self._row[f"details:{self._field}"] = (None, text)
            self._field = None
        if tag == "td" and self._cell:
            column, value = self._cell
            self._row[column] = (value, "".join(self._text).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text())
    return parser


def decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "image does not decode"
    return image


def test_report_table_equals_the_leaderboard_and_its_images_decode(board):
    written = report.build_report(Leaderboard(), board / "submissions/report.html", progress=False)
    rows = Leaderboard().latest()
    parsed = parse(written.html)

    assert written.variants == list(rows["variant"]) and set(written.variants) == set(BASELINES)
    table = parsed.tables["board"]
    assert list(table) == list(rows["variant"])
    for _, row in rows.iterrows():
        cells = table[row["variant"]]
        for column, (_, fmt) in report.TABLE_COLUMNS.items():
            value, text = cells[column]
            if row[column] is None or (isinstance(row[column], float) and math.isnan(row[column])):
                assert value == "", f"{row['variant']} {column}"
            else:
                assert float(value) == float(row[column]), f"{row['variant']} {column}"
                assert text == fmt.format(float(row[column]))
        # the config is on demand, inside the row's <details>, not a column of its own
        assert cells["details:config"][1] == {"mean": "mean"}.get(row["method"], f"{row['method']} radius=5.0")
        assert json.loads(cells["details:config_json"][1]) == json.loads(row["config"])
        assert "config" not in cells
        assert cells["variant"][1].startswith(row["variant"]) and "baseline" in cells["variant"][1]
        for label, score in json.loads(row["val_rmse_by_class"]).items():
            assert float(parsed.tables["classes"][row["variant"]][f"class:{label}"][0]) == score
    # only baselines: the best of them is highlighted, and the page says no variant is there to beat it
    best = rows.iloc[0]
    assert "best-row" in table[best["variant"]]["class"][1]
    assert [v for v in table if "best-row" in table[v]["class"][1]] == [best["variant"]]
    assert parsed.texts["headline"] == [
        f"Only baselines here; the best is {best['variant']}, validation RMSE {best['val_rmse']:.4f}."]

    # chart and per-class heatmap inlined and decodable; no training curves (nothing trained), said so
    figures = [image for image in parsed.images if image.get("class") in ("chart", "heatmap", "curves")]
    assert [image["class"] for image in figures] == ["chart", "heatmap"]
    chart, heatmap = (decode_png(base64.b64decode(image["src"].split(",", 1)[1])) for image in figures)
    assert "there are no training curves" in parsed.texts["no-curves"][0]
    # the gallery: every box of every gallery image, for the input, the truth and each variant, a
    # 1x crop (box + margin) that the page shows CROP_SCALE times larger, pixelated
    crops = [image for image in parsed.images if image.get("class") == "box"]
    side = 75 + 2 * report.CROP_MARGIN
    assert len(crops) == report.GALLERY_IMAGES * (2 + len(BASELINES)) * 2
    for crop in crops:
        assert decode_png(base64.b64decode(crop["src"].split(",", 1)[1])).shape == (side, side, 3)
        assert (int(crop["width"]), int(crop["height"])) == (side * 3, side * 3) and crop["data-scale"] == "3"
    png = decode_png(written.png.read_bytes())
    # below them the PNG's gallery: a row per picture (input, truth, 3 variants), a column per box
    assert png.shape[0] >= chart.shape[0] + heatmap.shape[0] + 5 * 150 and png.shape[1] >= 12 * 150
    assert not written.notes and written.curves == []


def test_gallery_shows_the_scored_pixels_of_fixed_images(board):
    rows = report.select_rows(Leaderboard())
    competition = load_competition(report.gallery_data(rows), check_images=False)
    gallery = report.load_gallery(rows, competition, count=len(competition.val), progress=False)
    assert not gallery.notes
    for _, row in rows.iterrows():
        # every validation image's box RMSE, pooled, is the leaderboard's validation RMSE
        errors = [gallery.box_rmse(row["variant"], i) for i in range(len(gallery.records))]
        assert math.sqrt(np.mean(np.square(errors))) == pytest.approx(row["val_rmse"], rel=1e-9)
    for record, masked, truth in zip(gallery.records, gallery.masked, gallery.truth):
        mask = boxes_mask(record.boxes, 256, 256)
        model_input = read_image(record.input_path, 256)  # the competition's masked JPEG copy
        assert (masked[mask] == 0).all() and (masked[~mask] == model_input[~mask]).all()
    # a few rows: one image of each class first, the same ones every time
    val_classes = sorted({r.label for r in competition.val})
    first = report.gallery_records(competition, len(val_classes))
    assert len(val_classes) > 1 and sorted(r.label for r in first) == val_classes
    assert first == report.gallery_records(competition, len(val_classes))


def test_missing_predictions_get_a_note_and_training_runs_a_link(board):
    (predictions,) = (board / "data/predictions").glob("sample-*")
    shutil.rmtree(predictions / "navier-stokes/val")
    run_file = predictions / "mean/val/run.json"
    run = json.loads(run_file.read_text())
    run["variant"]["data"]["val_seed"] = 7  # predicted on other validation boxes than are scored now
    run["split_fingerprint"] = "predicted-elsewhere"
    run_file.write_text(json.dumps(run))
    (board / "runs/pix2pix-small").mkdir(parents=True)
    Leaderboard().record({"variant": "pix2pix-small", "method": "pix2pix", "val_rmse": 0.1,
                          "split": Leaderboard().read().iloc[0]["split"],
                          "val_rmse_by_class": {"cat": 0.09}, "kaggle_public_score": 0.2,
                          "run_dir": "runs/pix2pix-small", "description": "<script>alert(1)</script> & co"})
    written = report.build_report(Leaderboard(), board / "submissions/report.html", progress=False)

    assert set(written.notes) == {"navier-stokes", "pix2pix-small", "mean"}
    assert "python -m pipeline submit --variant navier-stokes" in written.notes["navier-stokes"]
    assert "other validation images" in written.notes["mean"] and "val_seed 7" in written.notes["mean"]
    text = written.html.read_text()
    assert 'href="../runs/pix2pix-small"' in text and "-m tensorboard.main --logdir runs" in text
    # its run folder holds no event file: no curves, and the curves section says why
    parsed = parse(written.html)
    assert written.curves == [] and not any(image.get("class") == "curves" for image in parsed.images)
    assert parsed.texts["curve-notes"] == ["pix2pix-small: no training curves: runs/pix2pix-small holds no "
                                           "TensorBoard scalars (no events.out.tfevents file)"]
    # the best row is highlighted, with its margin over the best baseline in RMSE and percent
    telea = Leaderboard().latest(["telea"]).iloc[0]["val_rmse"]
    gain = telea - 0.1
    assert parsed.texts["headline"] == [f"Best variant: pix2pix-small, validation RMSE 0.1000, {gain:.4f} "
                                        f"({100 * gain / telea:.1f}%) below the best baseline, telea ({telea:.4f})."]
    board_table = parsed.tables["board"]
    assert [v for v in board_table if "best-row" in board_table[v]["class"][1]] == ["pix2pix-small"]
    assert float(board_table["pix2pix-small"]["gain"][0]) == pytest.approx(gain, abs=1e-12)
    assert board_table["pix2pix-small"]["gain"][1] == f"+{gain:.4f} (+{100 * gain / telea:.1f}%)"
    assert board_table["telea"]["gain"][1] == "+0.0000 (+0.0%)" and board_table["mean"]["gain"][1].startswith("-")
    # the template escapes every value: a description shows as text, never as markup
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    cells = board_table["pix2pix-small"]
    assert "baseline" not in cells["variant"][1] and float(cells["kaggle_public_score"][0]) == 0.2
    # the chart marks baselines by method: grey hatched bars, the learned variant in colour
    bars = report.rmse_chart(Leaderboard().latest()).axes[0].patches
    assert [b.get_facecolor() for b in bars] == [to_rgba(report.VARIANT_COLOR)] + [to_rgba(report.BASELINE_COLOR)] * 3
    assert [bool(b.get_hatch()) for b in bars] == [False, True, True, True]  # pix2pix-small is best, on top


def test_compare_command_selects_variants(board, capsys):
    out = board / "elsewhere/report.html"
    assert main(["compare", "--variants", "telea,mean", "--images", "2", "--out", str(out)]) == 0
    table = parse(out).tables["board"]
    assert list(table) == ["telea", "mean"] and out.with_suffix(".png").exists()
    assert main(["compare", "--variants", "telea,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no submissions yet"):
        report.select_rows(Leaderboard(board / "empty.csv"))


@pytest.mark.parametrize("name", ["exploration", "results"])
def test_stored_notebook_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.parametrize("name, figures", [("exploration", 5), ("results", 3)])
def test_notebook_runs_top_to_bottom_on_the_sample(name, figures, baselines, monkeypatch):
    monkeypatch.setenv("PIPELINE_ROOT", str(baselines))
    for unset in ("PIPELINE_DATA", "VARIANTS"):
        monkeypatch.delenv(unset, raising=False)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # raises CellExecutionError, with the cell and its traceback, if any cell fails
    NotebookClient(notebook, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs)
    assert f"python: {sys.executable}\n" in printed, "the notebook ran in another Python than the project's"
    assert f"workspace: {baselines.resolve()}\n" in printed
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= figures


def test_rows_of_another_validation_split_are_listed_apart(board):
    """A variant scored on other validation images is not ranked beside the others: it gets a note."""
    Leaderboard().record({"variant": "elsewhere", "method": "telea", "val_rmse": 0.01, "split": "another-split",
                          "data": "data/raw/other"})
    rows = report.select_rows(Leaderboard(), split=Leaderboard().read().iloc[0]["split"])
    assert "elsewhere" not in set(rows["variant"]) and set(BASELINES) <= set(rows["variant"])
    written = report.build_report(Leaderboard(), board / "submissions/report.html", images=0, progress=False,
                                  data_root=Leaderboard().read().iloc[0]["data"])
    assert "elsewhere" not in written.variants
    assert "elsewhere: scored on other validation splits (data/raw/other), so not ranked here" in written.notes["other splits"]


TINY = dict(ngf=8, depth=4, norm="instance", dropout=False, hole_fill="telea", objective="l1",
            train_batch_size=4, epochs=1, lr=0.001, mixed_precision="no", num_workers=0, max_minutes=0.0,
            log_every=1, seed=0)


@pytest.fixture(scope="module")
def trained_board(baselines, tmp_path_factory):
    """The baselines' workspace plus a tiny U-Net trained 4 steps (TensorBoard run in runs/tiny)
    and submitted like `submit` does, with its run_dir; returns (workspace, training result)."""
    from pipeline.config import load_variant
    from pipeline.train import train

    root = tmp_path_factory.mktemp("trained-board")
    for folder in ("data/predictions", "submissions"):
        shutil.copytree(baselines / folder, root / folder)
    # the baselines' competition folder itself: scores compare on one split of one folder
    (root / "tiny.yaml").write_text(json.dumps({
        "name": "tiny", "method": "pix2pix", "batch_size": 4, "params": TINY,
        "data": {"root": str(baselines / "data/sample"), "truth": str(baselines / "data/sample-truth"),
                 "val_count": 6}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = train(load_variant(root / "tiny.yaml"), max_steps=4, progress=False)
        tiny = load_variant(root / "tiny.yaml")
        submit_variant(tiny, load_competition(tiny.data), Leaderboard(), run_dir="runs/tiny")
    return root, result


@pytest.fixture
def trained_copy(trained_board, tmp_path, monkeypatch) -> Path:
    root, _ = trained_board
    for folder in ("data/predictions", "submissions", "runs", "checkpoints"):
        shutil.copytree(root / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_training_curves_come_from_the_runs_tensorboard_scalars(trained_board, trained_copy):
    _, result = trained_board
    written = report.build_report(Leaderboard(), trained_copy / "submissions/report.html", images=1,
                                  progress=False)
    assert written.curves == ["tiny"]
    parsed = parse(written.html)
    (curves,) = [image for image in parsed.images if image.get("class") == "curves"]
    assert decode_png(base64.b64decode(curves["src"].split(",", 1)[1])).shape[1] >= 1000
    # what is drawn is what training logged: the validation RMSE it kept best.pt on, the l1 box loss
    scalars = report.read_scalars("runs/tiny")
    steps, values = scalars[report.VAL_RMSE_TAG]
    assert steps[-1] == result.steps and values.min() == pytest.approx(result.best_val_rmse, rel=1e-6)
    assert report.main_loss_tag(scalars) == "loss/box_l1" and len(scalars["loss/box_l1"][0]) == result.steps
    baseline = Leaderboard().latest(["telea"]).iloc[0]["val_rmse"]
    loss_ax, val_ax = report.curves_figure({"tiny": scalars}, baseline).axes
    (loss_line,) = loss_ax.get_lines()
    assert loss_line.get_label() == "tiny (loss/box_l1)"
    assert list(loss_line.get_ydata()) == list(scalars["loss/box_l1"][1])
    val_line, baseline_line = val_ax.get_lines()
    assert list(val_line.get_xdata()) == list(steps) and list(val_line.get_ydata()) == list(values)
    assert list(baseline_line.get_ydata()) == [baseline, baseline]
    # the row links its run; the table row has the gain of the trained variant like any other
    cells = parsed.tables["board"]["tiny"]
    assert cells["details:run_dir"][1] == "runs/tiny"
    gain = baseline - Leaderboard().latest(["tiny"]).iloc[0]["val_rmse"]
    assert float(cells["gain"][0]) == pytest.approx(gain, abs=1e-12)

    # the run folder gone (trained on another machine): no curves, a note that says so
    shutil.rmtree("runs/tiny")
    written = report.build_report(Leaderboard(), trained_copy / "submissions/report.html", images=0,
                                  progress=False)
    parsed = parse(written.html)
    assert written.curves == [] and not any(image.get("class") == "curves" for image in parsed.images)
    assert parsed.texts["curve-notes"][0].startswith("tiny: no training curves: its TensorBoard run runs/tiny is "
                                                     "not here")


def test_details_show_training_steps_and_stop_reason_when_the_row_has_them(trained_copy):
    """Rows written since the leaderboard records training (steps, stop_reason, ...) show them in
    the row's <details>, summarised in its summary line; older rows without these columns work."""
    path = Path("submissions/leaderboard.csv")
    # the submit of the trained run recorded its facts: the summary line says what was run
    written = report.build_report(Leaderboard(), trained_copy / "submissions/report.html", images=0, progress=False)
    cells = parse(written.html).tables["board"]["tiny"]
    row = Leaderboard().latest(["tiny"]).iloc[0]
    assert cells["details:training"][1].startswith(f"{int(row['steps'])} steps, ")
    assert f"stopped: {row['stop_reason']}" in cells["details"][1]
    extra = {"steps": "4", "epochs": "0.31", "stop_reason": "max_steps", "train_seconds": "75.2", "seed": "0",
             "git_commit": "0123456789abcdef0123", "git_dirty": "True", "checkpoint_sha256": "ab" * 32}
    # a row written before the leaderboard recorded training: no training line, the report still works
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    tiny = table["variant"] == "tiny"
    table.drop(columns=list(extra)).to_csv(path, index=False)
    written = report.build_report(Leaderboard(), trained_copy / "submissions/report.html", images=0, progress=False)
    cells = parse(written.html).tables["board"]["tiny"]
    assert "details:training" not in cells and "steps" not in cells["details"][1]
    for column, value in extra.items():
        table[column] = ""
        table.loc[tiny, column] = value
    table.to_csv(path, index=False)

    written = report.build_report(Leaderboard(), trained_copy / "submissions/report.html", images=0, progress=False)
    parsed = parse(written.html)
    cells = parsed.tables["board"]["tiny"]
    assert cells["details:training"][1] == "4 steps, 0.31 epochs, stopped: max_steps, 1.3 min"
    assert cells["details:git commit"][1] == "0123456789ab (uncommitted changes)"
    assert cells["details:seed"][1] == "0" and cells["details:checkpoint sha256"][1] == "ab" * 6
    assert cells["details"][1].startswith("config · 4 steps, 0.31 epochs, stopped: max_steps")
    # a classical row has none of these: its summary is the config alone
    assert parsed.tables["board"]["telea"]["details"][1].split("\n")[0] == "config"
    assert "details:training" not in parsed.tables["board"]["telea"]


def test_classes_with_too_few_validation_images_are_flagged(board, monkeypatch):
    competition = load_competition(report.gallery_data(report.select_rows(Leaderboard())), check_images=False)
    counts = Counter(record.label for record in competition.val)
    assert min(counts.values()) < 2 <= max(counts.values())  # the small sample: classes of 1 and more images
    monkeypatch.setattr(report, "MIN_CLASS_IMAGES", 2)
    written = report.build_report(Leaderboard(), board / "submissions/report.html", images=0, progress=False)
    text = written.html.read_text()
    heads = dict(re.findall(r'<th data-class="([^"]+)"( class="few")?>', text))
    assert set(heads) == set(counts)
    for label, count in counts.items():
        assert (heads[label] == ' class="few"') == (count < 2), label
    parsed = parse(written.html)
    assert "fewer than 2 validation images is shaded and marked \"too few to rank\"" in parsed.texts["few-note"][0]
    assert text.count("too few to rank</span>") == sum(count < 2 for count in counts.values())
    # a flagged class's cells are shaded and never mark a best: one photo decides it
    cells = re.findall(r'<td class="num([^"]*)" data-column="class:([^"]+)"', text)
    assert len(cells) == len(counts) * len(BASELINES)
    assert all(("few" in classes) == (counts[label] < 2) for classes, label in cells)
    assert all("best" not in classes for classes, label in cells if counts[label] < 2)
    assert any("best" in classes for classes, label in cells if counts[label] >= 2)


def test_headline_names_the_best_and_its_margin_or_that_no_variant_beats_the_baselines():
    def rows(*entries):
        return pd.DataFrame([{"variant": v, "method": m, "val_rmse": r} for v, m, r in entries])

    assert report.headline(rows(("telea", "telea", 0.15), ("unet", "pix2pix", 0.12), ("mean", "mean", 0.2))) == (
        "Best variant: unet, validation RMSE 0.1200, 0.0300 (20.0%) below the best baseline, telea (0.1500).")
    assert report.headline(rows(("telea", "telea", 0.15), ("unet", "pix2pix", 0.18))) == (
        "No variant beats the best baseline: telea is best, validation RMSE 0.1500; the closest variant, "
        "unet (0.1800), is 0.0300 (20.0%) above it.")
    assert report.headline(rows(("telea", "telea", 0.15), ("unet", "pix2pix", 0.15))) == (
        "No variant beats the best baseline: unet ties telea, validation RMSE 0.1500.")
    assert report.headline(rows(("unet", "pix2pix", 0.12))).startswith(
        "Best: unet, validation RMSE 0.1200. No baseline was scored on these images")
    assert report.headline(rows(("unet", "pix2pix", float("nan")))) == ""


def test_a_damaged_or_empty_run_folder_gets_a_note_not_a_crash(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged/events.out.tfevents.1.host.1.0").write_bytes(b"\x00not a record" * 20)
    rows = pd.DataFrame([{"variant": name, "run_dir": str(tmp_path / name)} for name in ("empty", "damaged", "gone")]
                        + [{"variant": "telea", "run_dir": None}])
    curves, notes = report.training_curves(rows)
    assert curves == {} and set(notes) == {"empty", "damaged", "gone"}
    assert "no events.out.tfevents file" in notes["empty"] and "damaged" in notes["damaged"]
    assert "is not here" in notes["gone"] and report.curves_figure(curves) is None


def test_make_tensorboard_serves_the_runs_scalars_from_the_projects_environment(trained_copy):
    """`make tensorboard` starts TensorBoard with the project's Python (it is not on PATH outside
    .venv), on LOGDIR / PORT / HOST; the server it starts lists the trained run's scalars."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logdir = trained_copy / "runs"
    # -o: never (re)make setup here, even when requirements.txt is newer than .venv (no pip install in a test)
    make = ["make", "--no-print-directory", "-o", "setup", "-o", ".venv/.installed"]
    dry = subprocess.run(make + ["-n", "tensorboard", f"LOGDIR={logdir}", f"PORT={port}", "HOST=127.0.0.1"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    assert dry == f".venv/bin/python -m tensorboard.main --logdir {logdir} --port {port} --host 127.0.0.1"
    server = subprocess.Popen(dry.split(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline and "tiny" not in tags:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as answer:
                    tags = json.loads(answer.read())
            except OSError:
                time.sleep(1)
        assert {"val/rmse", "loss/box_l1"} <= set(tags.get("tiny", {})), tags
    finally:
        server.terminate()
        server.wait(timeout=30)
    # no runs folder: the target says what to do instead of starting an empty TensorBoard
    missing = subprocess.run(make + ["-s", "tensorboard", f"LOGDIR={trained_copy / 'nope'}"], cwd=REPO,
                             capture_output=True, text=True, env={**os.environ, "MAKEFLAGS": ""})
    assert missing.returncode == 2 and "train a variant first" in missing.stdout
