"""Submission CSVs: round trip, streaming validation of every bad case, the sample_submission format."""

import numpy as np
import pandas as pd
import pytest

from pipeline.data.boxes import box_pixels
from pipeline.data.competition import load_competition
from pipeline.predict import truth_boxes
from pipeline.score import score_boxes
from pipeline.submission import SubmissionError, read_submission, validate_submission, write_submission
from tests.conftest import small_data_config


def _predictions(competition, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in competition.test]


@pytest.fixture
def written(competition, workspace):
    predictions = _predictions(competition)
    result = write_submission(workspace / "submissions/x.csv", competition, predictions.__getitem__, progress=False)
    return result, predictions


def test_round_trip_values_and_scores(competition, written):
    result, predictions = written
    assert result.rows == len(competition.test) * 2 * 75 * 75 * 3
    head = result.path.read_text().splitlines()[:3]
    first = competition.test[0]
    box = first.boxes[0]
    assert head[0] == "Id,Predicted"
    assert head[1] == f"{first.image_id}_0_0_0_0,{predictions[0][box.y, box.x, 0]}"
    assert head[2] == f"{first.image_id}_0_0_0_1,{predictions[0][box.y, box.x, 1]}"

    decoded = read_submission(result.path, competition)
    in_memory = np.stack([box_pixels(p, r.boxes) for p, r in zip(predictions, competition.test)])
    assert (decoded == in_memory).all()
    truth = truth_boxes(competition, competition.test)
    assert score_boxes(decoded, truth).rmse == pytest.approx(score_boxes(in_memory, truth).rmse, abs=0)
    assert validate_submission(result.path, competition, progress=False).sha256 == result.sha256


def _edit(path, change):
    table = pd.read_csv(path, dtype=str)
    changed = change(table)  # a new table, or None where the change edited `table` in place
    (table if changed is None else changed).to_csv(path, index=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(index=10), r"expected id\(s\) missing, e\.g\. .*_0_0_3_1"),
        (lambda t: t.loc.__setitem__((20, "Id"), t.loc[19, "Id"]), r"line 22: id '.*_0_0_6_1' appears more than once"),
        (lambda t: t.loc.__setitem__((7, "Predicted"), "256"), r"line 9: Predicted is 256: values must be integers in 0..255"),
        (lambda t: t.loc.__setitem__((7, "Predicted"), "-1"), r"line 9: Predicted is -1:"),
        (lambda t: t.loc.__setitem__((8, "Predicted"), "12.5"), r"line 10: Predicted is 12.5"),
        (lambda t: t.loc.__setitem__((9, "Predicted"), ""), r"line 11: Predicted is empty"),
        (lambda t: t.loc.__setitem__((9, "Predicted"), "abc"), r"line 11: Predicted 'abc' is not a number"),
        (lambda t: t.loc.__setitem__((3, "Id"), "nobody_0_0_1_0"), r"line 5: id 'nobody_0_0_1_0' names no test image"),
        (lambda t: t.loc.__setitem__((3, "Id"), t.loc[3, "Id"].replace("_0_0_1_0", "_0_80_1_0")),
         r"line 5: id '.*_0_80_1_0': row 80 is out of range 0..74"),
        (lambda t: t.loc.__setitem__((3, "Id"), t.loc[3, "Id"].replace("_0_0_1_0", "_2_0_1_0")),
         r"line 5: .*box 2 is out of range 0..1"),
        (lambda t: t.loc.__setitem__((3, "Id"), t.loc[3, "Id"].replace("_0_0_1_0", "_0_00_1_0")),
         r"line 5: .*without leading zeros"),
        (lambda t: t.loc.__setitem__((3, "Id"), "garbage"), r"line 5: id 'garbage' is not <image>_<box>_<row>_<col>_<channel>"),
        (lambda t: t.rename(columns={"Predicted": "Value"}), r"header is \['Id', 'Value'\]"),
    ],
)
def test_bad_submissions_are_rejected_with_the_line(competition, written, change, message):
    result, _ = written
    _edit(result.path, change)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(result.path, competition, progress=False)


def test_rows_in_another_order_are_valid_and_checked(competition, written):
    result, _ = written
    table = pd.read_csv(result.path, dtype=str).sample(frac=1.0, random_state=0)
    table.to_csv(result.path, index=False)
    assert validate_submission(result.path, competition, progress=False).rows == result.rows
    table.iloc[100, 0] = table.iloc[200_000, 0]  # one id twice, another gone, far apart
    table.to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match=rf"id '{table.iloc[100, 0]}' appears more than once"):
        validate_submission(result.path, competition, progress=False)


def test_blank_line_is_named_at_its_true_line(competition, written):
    result, _ = written
    lines = result.path.read_text().splitlines(keepends=True)
    result.path.write_text("".join(lines[:5] + ["\n"] + lines[5:]))
    with pytest.raises(SubmissionError, match="line 6: id ''"):
        validate_submission(result.path, competition, progress=False)


def test_unwritable_temp_file_fails_fast(competition, workspace, monkeypatch):
    """The writer thread cannot open its file: the error surfaces, nothing hangs."""
    import threading

    import pipeline.submission as submission

    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(submission, "open", refuse, raising=False)
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


def test_sample_submission_columns_ids_and_order(workspace):
    """With sample_submission.csv: its columns, its ids (image-coordinate format), its order."""
    cfg = small_data_config(workspace)
    competition = load_competition(cfg)
    rows = []
    for record in competition.test:
        for box in record.boxes:
            for y in range(box.y, box.y + 75):
                for x in range(box.x, box.x + 75):
                    rows.extend(f"{record.image_id}:{y}:{x}:{c}" for c in range(3))
    rng = np.random.default_rng(1)
    rows = [rows[i] for i in rng.permutation(len(rows))]  # Kaggle's order need not be ours
    pd.DataFrame({"pixel_id": rows, "value": 0}).to_csv(cfg.root / "sample_submission.csv", index=False)
    cfg.id_pattern = r"^(?P<image>.+):(?P<y>\d+):(?P<x>\d+):(?P<channel>\d)$"
    competition = load_competition(cfg)
    assert competition.sample_submission is not None

    predictions = _predictions(competition, seed=2)
    result = write_submission(workspace / "submissions/s.csv", competition, predictions.__getitem__, progress=False)
    written = pd.read_csv(result.path, dtype={"pixel_id": str})
    assert list(written.columns) == ["pixel_id", "value"]
    assert written["pixel_id"].tolist() == rows
    index = {r.image_id: i for i, r in enumerate(competition.test)}
    for pixel_id, value in written.sample(200, random_state=0).itertuples(index=False):
        image, y, x, c = pixel_id.split(":")
        assert value == predictions[index[image]][int(y), int(x), int(c)]
    decoded = read_submission(result.path, competition)
    in_memory = np.stack([box_pixels(p, r.boxes) for p, r in zip(predictions, competition.test)])
    assert (decoded == in_memory).all()

    written.drop(index=5).to_csv(result.path, index=False)
    with pytest.raises(SubmissionError, match="ids differ from .*sample_submission.csv"):
        validate_submission(result.path, competition, progress=False)
