"""Faults that once gave a wrong result with exit 0, or a traceback: each stays fixed."""

import multiprocessing as mp
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import data_config
from pipeline.data.competition import load_competition, read_image
from pipeline.data.sample import build_sample
from pipeline.leaderboard import Leaderboard


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _submit(root: str, data: str, queue) -> None:
    import contextlib
    import io
    import os

    os.chdir(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["submit", "--variant", "telea", "--data", data])
    queue.put((code, err.getvalue()))


def test_concurrent_submits_of_one_variant_on_two_folders_score_their_own_run(workspace, capsys):
    """Two `make submit VARIANT=telea DATA=...` at once: each row carries its own folder's scores."""
    other = workspace / "data/other"
    build_sample(data_config({"root": other, "truth": workspace / "data/other-truth"}), train_per_photo=6,
                 test_per_photo=3, seed=5)
    folders = ["data/sample", "data/other"]
    alone = {}
    for folder in folders:  # each alone, one after the other: the truth
        assert _run(capsys, "submit", "--variant", "telea", "--data", folder)[0] == 0
        alone[folder] = Leaderboard().read().iloc[-1]["val_rmse"]
    assert alone["data/sample"] != pytest.approx(alone["data/other"])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_submit, args=(str(workspace), folder, queue)) for folder in folders * 2]
    for w in workers:
        w.start()
    for w in workers:
        w.join(240)
    results = [queue.get(timeout=5) for _ in workers]
    assert [code for code, _ in results] == [0, 0, 0, 0], [err[-500:] for _, err in results]
    rows = Leaderboard().read().iloc[2:]
    assert len(rows) == 4
    for _, row in rows.iterrows():
        assert row["val_rmse"] == pytest.approx(alone[row["data"]], abs=1e-12), row["data"]


def test_one_variant_on_one_folder_waits_for_the_running_one(workspace, capsys):
    import fcntl

    from pipeline.data.predictions import competition_key

    competition = load_competition(data_config({"root": "data/sample", "truth": "data/sample-truth"}))
    lock_path = Path("data/predictions") / competition_key(competition) / "telea" / ".lock"
    lock_path.parent.mkdir(parents=True)
    holder = open(lock_path, "w")
    holder.write("pid 4242 (make submit VARIANT=telea)")
    holder.flush()
    fcntl.flock(holder, fcntl.LOCK_EX)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    worker = ctx.Process(target=_submit, args=(str(workspace), "data/sample", queue))
    worker.start()
    worker.join(8)
    assert worker.is_alive(), "the second run must wait for the first"
    assert not Path("submissions/telea.csv").exists()
    holder.close()  # the first run ends
    worker.join(120)
    code, err = queue.get(timeout=5)
    assert code == 0 and Path("submissions/telea.csv").exists()
    assert "waiting: pid 4242 (make submit VARIANT=telea) is running telea on data/sample" in err


def test_scores_refuse_predictions_of_a_rebuilt_sample(workspace, capsys):
    """A sample rebuilt with another seed has the same ids and boxes layout but other photos."""
    assert _run(capsys, "predict", "--variant", "telea", "--splits", "val")[0] == 0
    cfg = data_config({"root": workspace / "data/sample", "truth": workspace / "data/sample-truth"})
    build_sample(cfg, train_per_photo=6, test_per_photo=3, seed=1, force=True)
    code, _, err = _run(capsys, "score", "--variant", "telea")
    assert code == 2 and "predictions were made on other val images, boxes or files" in err
    assert "predict it again" in err


def test_scoring_a_variant_never_predicted_says_so(workspace, capsys):
    code, _, err = _run(capsys, "score", "--variant", "navier-stokes")
    assert code == 2 and "navier-stokes was never predicted on data/sample" in err
    assert "python -m pipeline submit --variant navier-stokes" in err


def test_exif_orientation_is_ignored_everywhere_images_are_read(workspace, capsys):
    """A test JPEG tagged 'rotate 90': its boxes refer to the stored pixels, and so does the CSV."""
    test_dir = workspace / "data/sample/Dataset/Testing_Data"
    path = next(p for p in sorted(test_dir.glob("*.jpeg")))
    stored = read_image(path)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(path, format="JPEG", quality=100, exif=exif.tobytes())
    as_stored = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
    rotated = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert not np.array_equal(as_stored, rotated), "the tag must matter for this test to mean anything"
    assert np.array_equal(read_image(path), as_stored)
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    from pipeline.data.predictions import load_prediction, prediction_dir

    competition = load_competition(data_config({"root": "data/sample", "truth": "data/sample-truth"}))
    record = next(r for r in competition.test if r.image_id == path.name)
    predicted = load_prediction(prediction_dir("mean", "test", competition), record, 256)
    outside = ~np.zeros((256, 256), bool)
    for box in record.boxes:
        outside[box.slices] = False
    assert np.array_equal(predicted[outside], as_stored[outside])  # the stored pixels, not rotated ones


def test_a_damaged_leaderboard_stops_submit_before_anything_is_replaced(workspace, capsys):
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    assert _run(capsys, "submit", "--variant", "telea")[0] == 0
    board = Path("submissions/leaderboard.csv")
    text = board.read_text()
    damaged = text[: text.index("\n", text.index("\n") + 1) + 1] + text.splitlines(keepends=True)[2][:40] + "\n"
    board.write_text(damaged)  # a truncated last row
    before_csv = Path("submissions/telea.csv").read_bytes()
    code, _, err = _run(capsys, "submit", "--variant", "telea", "--param", "radius=3")
    assert code == 2 and "submissions/leaderboard.csv: line 3:" in err and "fields, expected" in err
    assert "the rows before that line are intact" in err
    assert board.read_text() == damaged  # never rewritten with fewer rows
    assert Path("submissions/telea.csv").read_bytes() == before_csv
    for argv in (["leaderboard"], ["compare"]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "line 3" in err


def test_a_hand_edited_leaderboard_value_is_named(workspace, capsys):
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    board = Path("submissions/leaderboard.csv")
    table = pd.read_csv(board, dtype=str)
    table.loc[0, "val_rmse"] = "0.1x"
    table.to_csv(board, index=False)
    code, _, err = _run(capsys, "submit", "--variant", "mean")
    assert code == 2 and "line 2: val_rmse '0.1x' is not a number" in err


def test_not_utf8_submission_is_named_by_validate_and_score(workspace, capsys):
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    csv = Path("submissions/mean.csv")
    data = csv.read_bytes()
    csv.write_bytes(data[:100] + b"\xe9" + data[100:])
    for argv in (["validate", "--csv", str(csv)], ["score", "--csv", str(csv)]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "line 3 is not UTF-8 text (byte 0xe9" in err, err
