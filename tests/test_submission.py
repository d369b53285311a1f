"""Submission CSVs: the real competition's format and the default one, round trips, streaming
validation of every bad case, sample submissions, and files left by killed writers."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.config import data_config
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import load_competition
from pipeline.files import remove_stale_temporaries
from pipeline.score import score_boxes, truth_boxes
from pipeline.submission import SubmissionError, read_submission, submission_spec, validate_submission, write_submission
from tests.conftest import small_data_config


def _predictions(competition, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in competition.test]


def _in_memory(competition, predictions):
    return np.stack([box_pixels(p, r.boxes) for p, r in zip(predictions, competition.test)])


@pytest.fixture
def written(competition, workspace):
    predictions = _predictions(competition)
    result = write_submission(workspace / "submissions/x.csv", competition, predictions.__getitem__, progress=False)
    return result, predictions


def test_real_format_header_ids_and_decimal_values(competition, written):
    result, predictions = written
    assert result.rows == len(competition.test) * 2 * 75 * 75 * 3
    lines = result.path.read_text().splitlines()
    first = competition.test[0]
    (box1, box2) = first.boxes
    assert lines[0] == "filename_box_pixel,Value"
    # the file name with its extension, box numbered from 1, image coordinates, channel 0 = red
    assert lines[1] == f"{first.image_id}_box1_{box1.y}_{box1.x}_0,{predictions[0][box1.y, box1.x, 0] / 255:.4f}"
    assert lines[2] == f"{first.image_id}_box1_{box1.y}_{box1.x}_1,{predictions[0][box1.y, box1.x, 1] / 255:.4f}"
    second = 1 + 75 * 75 * 3 + 3 * (75 + 1)  # box 2, row 1, col 1, channel 0
    assert lines[second].startswith(f"{first.image_id}_box2_{box2.y + 1}_{box2.x + 1}_0,")
    assert len({line.split(",")[0].rsplit("_box", 1)[0] for line in lines[1:]}) == len(competition.test)


def test_round_trip_scores_what_kaggle_would(competition, written):
    result, predictions = written
    decoded = read_submission(result.path, competition)
    in_memory = _in_memory(competition, predictions)
    assert np.abs(decoded - in_memory).max() <= 255 * 0.00005 + 1e-9  # four decimals of pixel/255
    truth = truth_boxes(competition, competition.test)
    assert score_boxes(decoded, truth).rmse == pytest.approx(score_boxes(in_memory, truth).rmse, abs=2e-5)
    assert validate_submission(result.path, competition, progress=False).sha256 == result.sha256


def test_bgr_channel_order_writes_blue_as_channel_0(workspace):
    cfg = data_config({**vars(small_data_config(workspace)), "channels": "bgr"})
    competition = load_competition(cfg)
    predictions = _predictions(competition)
    result = write_submission(workspace / "submissions/b.csv", competition, predictions.__getitem__, progress=False)
    first, box = competition.test[0], competition.test[0].boxes[0]
    line = result.path.read_text().splitlines()[1]
    assert line == f"{first.image_id}_box1_{box.y}_{box.x}_0,{predictions[0][box.y, box.x, 2] / 255:.4f}"
    assert np.allclose(np.round(read_submission(result.path, competition)), _in_memory(competition, predictions))


def test_default_format_on_the_generic_layout(generic, workspace):
    twin = next(p for p in (generic.root / "test").rglob("*.jpeg") if p.with_suffix(".jpg").exists())
    with pytest.raises(SubmissionError, match=r"both get the id prefix .* use a format whose ids hold \{name\}"):
        submission_spec(load_competition(generic))
    twin.unlink()
    table = pd.read_csv(generic.root / "bboxes.csv")
    table[table.image_id != twin.name].to_csv(generic.root / "bboxes.csv", index=False)
    competition = load_competition(generic)
    predictions = _predictions(competition)
    result = write_submission(workspace / "submissions/g.csv", competition, predictions.__getitem__, progress=False)
    lines = result.path.read_text().splitlines()
    first, box = competition.test[0], competition.test[0].boxes[0]
    assert lines[0] == "Id,Predicted"
    assert lines[1] == f"{first.path.stem}_0_0_0_0,{predictions[0][box.y, box.x, 0]}"
    assert (read_submission(result.path, competition) == _in_memory(competition, predictions)).all()


def _edit(path, change):
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    changed = change(table)  # a new table, or None where the change edited `table` in place
    (table if changed is None else changed).to_csv(path, index=False)


def _set(row, column, value):
    return lambda t: t.loc.__setitem__((row, column), value)


def _replace(row, old, new):
    return lambda t: t.loc.__setitem__((row, "filename_box_pixel"), t.loc[row, "filename_box_pixel"].replace(old, new))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(index=10), r"expected id\(s\) missing, e\.g\. .*_box1_\d+_\d+_1"),
        (_set(20, "filename_box_pixel", None), None),  # placeholder, replaced below
        (_set(7, "Value", "1.2"), r"line 9: Value is 1.2: values must lie in 0..1"),
        (_set(7, "Value", "84"), r"line 9: Value is 84: values must lie in 0..1; this competition's values are pixel/255"),
        (_set(7, "Value", "-0.1"), r"line 9: Value is -0.1"),
        (_set(9, "Value", ""), r"line 11: Value is empty"),
        (_set(9, "Value", "NaN"), r"line 11: Value is NaN, not a number"),
        (_set(9, "Value", "abc"), r"line 11: Value 'abc' is not a number"),
        (_set(3, "filename_box_pixel", "Nobody (1).jpg_box1_0_1_0"), r"line 5: id 'Nobody \(1\).jpg_box1_0_1_0' names no test image"),
        (_replace(3, "_box1_", "_box3_"), r"line 5: id .* is not a pixel inside its box"),
        (_replace(3, "_box1_", "_box0_"), r"line 5: id .* is not a pixel inside its box"),
        (lambda t: t.loc.__setitem__((3, "filename_box_pixel"), "garbage"),
         r"line 5: id 'garbage' is not of the form \{name\}_box\{box\}_\{row\}_\{col\}_\{channel\}"),
        (lambda t: t.rename(columns={"Value": "Predicted"}), r"header is \['filename_box_pixel', 'Predicted'\], expected"),
    ],
)
def test_bad_submissions_are_rejected_with_the_line(competition, written, change, message):
    result, _ = written
    if message is None:  # one id written twice
        table = pd.read_csv(result.path, dtype=str)
        table.loc[20, "filename_box_pixel"] = table.loc[19, "filename_box_pixel"]
        table.to_csv(result.path, index=False)
        message = rf"line 22: id '{table.loc[19, 'filename_box_pixel']}' appears more than once".replace("(", r"\(").replace(")", r"\)")
    else:
        _edit(result.path, change)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(result.path, competition, progress=False)


def test_a_0_255_file_is_refused_for_this_competition(competition, written):
    result, predictions = written
    table = pd.read_csv(result.path, dtype=str)
    table["Value"] = (table["Value"].astype(float) * 255).round().astype(int).astype(str)
    table.to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match=r"values are pixel/255 on 0..1 \(the file looks like 0..255 integers\)"):
        validate_submission(result.path, competition, progress=False)


def test_leading_zeros_are_not_the_expected_ids(competition, written):
    result, _ = written
    table = pd.read_csv(result.path, dtype=str)
    name, rest = table.loc[3, "filename_box_pixel"].rsplit("_box", 1)
    box, row, col, channel = rest.split("_")
    table.loc[3, "filename_box_pixel"] = f"{name}_box{box}_0{row}_{col}_{channel}"
    table.to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match="line 5: .*numbers without leading zeros"):
        validate_submission(result.path, competition, progress=False)


def test_rows_in_another_order_are_valid_and_checked(competition, written):
    result, _ = written
    table = pd.read_csv(result.path, dtype=str).sample(frac=1.0, random_state=0)
    table.to_csv(result.path, index=False)
    assert validate_submission(result.path, competition, progress=False).rows == result.rows
    table.iloc[100, 0] = table.iloc[200_000, 0]  # one id twice, another gone, far apart
    table.to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match=r"appears more than once"):
        validate_submission(result.path, competition, progress=False)


def test_blank_lines(competition, written):
    result, _ = written
    text = result.path.read_text()
    result.path.write_text(text + "\n\n")  # Kaggle accepts trailing blank lines
    assert validate_submission(result.path, competition, progress=False).rows == result.rows
    lines = text.splitlines(keepends=True)
    result.path.write_text("".join(lines[:5] + ["\n"] + lines[5:]))
    with pytest.raises(SubmissionError, match="line 6: blank line inside the file"):
        validate_submission(result.path, competition, progress=False)


@pytest.mark.parametrize("content, message", [
    (b"\x1f\x8b\x08\x00" + bytes(range(200)), r"is a gzip archive, not a CSV text file"),
    ("filename_box_pixel,Value\nCaf\xe9.jpg_box1_0_0_0,0.5\n".encode("latin-1"), r"line 2 is not UTF-8 text \(byte 0xe9 at column 4\)"),
    (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), r"is not UTF-8 text|not a CSV text file"),
])
def test_a_file_that_is_not_text_is_named(competition, workspace, content, message):
    path = workspace / "submissions/bad.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(path, competition, progress=False)


def test_unwritable_temp_file_fails_fast(competition, workspace, monkeypatch):
    """The writer thread cannot open its file: the error surfaces, nothing hangs."""
    import threading

    import pipeline.submission.write as write

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(write, "open", refuse, raising=False)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_attempt(
        lambda: write_submission(workspace / "submissions/y.csv", competition, _predictions(competition).__getitem__,
                                 progress=False))), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "write_submission hung"
    assert isinstance(outcome[0], PermissionError)
    assert not (workspace / "submissions/y.csv").exists()


def _attempt(call):
    try:
        call()
    except Exception as exc:  # the test inspects it
        return exc
    return None


def test_a_failed_write_keeps_the_previous_file(competition, written):
    result, _ = written
    before = result.path.read_bytes()

    def broken(i):
        raise RuntimeError("prediction lost")

    with pytest.raises(RuntimeError, match="prediction lost"):
        write_submission(result.path, competition, broken, progress=False)
    assert result.path.read_bytes() == before
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["x.csv"]  # no temp file left


def test_temporaries_of_killed_writers_are_removed(competition, written):
    result, _ = written
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = result.path.with_name(f".x.csv.{int(dead.stdout)}.tmp")
    live = result.path.with_name(f".x.csv.{os.getppid()}.tmp")  # a running process's file stays
    other = result.path.with_name(f".y.csv.{int(dead.stdout)}.tmp")  # another submission's stays
    for path in (stale, live, other):
        path.write_bytes(b"x" * 1000)
    write_submission(result.path, competition, _predictions(competition).__getitem__, progress=False)
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(result.path.with_name("y.csv")) == [other]


def _sample_rows(competition):
    rows = []
    for record in competition.test:
        for b, box in enumerate(record.boxes, start=1):
            for y in range(box.y, box.y + 75):
                for x in range(box.x, box.x + 75):
                    rows.extend(f"{record.image_id}_box{b}_{y}_{x}_{c}" for c in range(3))
    rng = np.random.default_rng(1)
    return [rows[i] for i in rng.permutation(len(rows))]  # Kaggle's order need not be ours


def test_sample_submission_columns_ids_and_order(workspace, competition):
    """With sample_submission.csv: its columns, its ids, its order; its values' range decides the scale."""
    cfg = small_data_config(workspace)
    rows = _sample_rows(competition)
    sample = cfg.root / "sample_submission.csv"
    pd.DataFrame({"pixel_id": rows, "value": 128}).to_csv(sample, index=False)
    competition = load_competition(cfg)
    assert submission_spec(competition).fmt.values == "integer"  # the sample's values are 0..255

    predictions = _predictions(competition, seed=2)
    result = write_submission(workspace / "submissions/s.csv", competition, predictions.__getitem__, progress=False)
    written = pd.read_csv(result.path, dtype={"pixel_id": str})
    assert list(written.columns) == ["pixel_id", "value"]
    assert written["pixel_id"].tolist() == rows
    index = {r.image_id: i for i, r in enumerate(competition.test)}
    for pixel_id, value in written.sample(200, random_state=0).itertuples(index=False):
        image, rest = pixel_id.rsplit("_box", 1)
        _, y, x, c = rest.split("_")
        assert value == predictions[index[image]][int(y), int(x), int(c)]
    assert (read_submission(result.path, competition) == _in_memory(competition, predictions)).all()

    written.drop(index=5).to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match="ids differ from .*sample_submission.csv"):
        validate_submission(result.path, competition, progress=False)


def test_a_bad_sample_submission_is_refused(workspace, competition):
    cfg = small_data_config(workspace)
    rows = _sample_rows(competition)
    sample = cfg.root / "sample_submission.csv"
    pd.DataFrame({"pixel_id": rows[:10] + [rows[3]] + rows[10:], "value": 0.5}).to_csv(sample, index=False)
    with pytest.raises(SubmissionError, match=r"sample_submission.csv: lines 5 and 12 hold the same id"):
        submission_spec(load_competition(cfg))
    pd.DataFrame({"pixel_id": rows, "value": [0.5] * 7 + [300] + [0.5] * (len(rows) - 8)}).to_csv(sample, index=False)
    cfg = data_config({**vars(cfg), "values": "decimal"})
    with pytest.raises(SubmissionError, match=r"line 9: value 300 is outside 0..1"):
        submission_spec(load_competition(cfg))


def test_a_format_of_ones_own_any_field_order(workspace):
    """A format YAML of the user's: fields in another order, box coordinates, integer values."""
    fmt = workspace / "my-format.yaml"
    fmt.write_text('columns: [pixel, v]\nid: "{channel}:{row}:{col}@{name}#{box}"\ncoords: box\nbox_base: 0\n'
                   "values: integer\n")
    competition = load_competition(data_config({**vars(small_data_config(workspace)), "format": str(fmt)}))
    predictions = _predictions(competition, seed=4)
    result = write_submission(workspace / "submissions/m.csv", competition, predictions.__getitem__, progress=False)
    lines = result.path.read_text().splitlines()
    first, box = competition.test[0], competition.test[0].boxes[0]
    assert lines[0] == "pixel,v" and lines[2] == f"1:0:0@{first.image_id}#0,{predictions[0][box.y, box.x, 1]}"
    assert (read_submission(result.path, competition) == _in_memory(competition, predictions)).all()
    fmt.write_text('columns: [pixel, v]\nid: "{row}_{col}_{channel}"\n')
    with pytest.raises(Exception, match=r"needs \{name\} or \{stem\}"):
        submission_spec(load_competition(data_config({**vars(small_data_config(workspace)), "format": str(fmt)})))
