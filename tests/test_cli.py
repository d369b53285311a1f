"""The commands end to end on the small sample, and the Kaggle steps against the local stand-in."""

import io
import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.leaderboard import Leaderboard

SLUG = "photo-reconstruction"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_submit_records_every_run_and_leaderboard_sorts(workspace, capsys):
    for variant in ("mean", "telea", "telea"):
        code, out, _ = _run(capsys, "submit", "--variant", variant)
        assert code == 0
        assert "validated" in out and "validation RMSE" in out and "test RMSE" in out
    table = Leaderboard().read()
    assert table["variant"].tolist() == ["mean", "telea", "telea"]  # re-runs append, never overwrite
    assert Path("submissions/telea.csv").exists() and Path("submissions/mean.csv").exists()
    telea = table.iloc[-1]
    assert telea["val_rmse"] < table.iloc[0]["val_rmse"]  # Telea beats a flat colour
    assert telea["rows"] == 19 * 2 * 75 * 75 * 3 and len(telea["sha256"]) == 64
    assert (telea["format"], telea["channels"], telea["values"]) == ("photo-reconstruction", "rgb", "decimal")
    assert telea["split"] and telea["data"] == "data/sample"
    assert Path("submissions/telea.csv").read_text().startswith("filename_box_pixel,Value\n")
    from pipeline.data.competition import load_competition
    from pipeline.config import DataConfig

    val_labels = {r.label for r in load_competition(DataConfig()).val}
    by_class = json.loads(telea["val_rmse_by_class"])
    assert set(by_class) == val_labels and all(0 < v < 1 for v in by_class.values())

    code, out, _ = _run(capsys, "leaderboard")
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["telea", "mean"]  # latest per variant, best first

    code, out, _ = _run(capsys, "score", "--variant", "telea")
    assert code == 0 and f"RMSE {telea['val_rmse']:.4f}" in out
    code, out, _ = _run(capsys, "score", "--csv", "submissions/telea.csv")
    assert code == 0 and f"RMSE {telea['test_rmse']:.4f}" in out
    code, out, _ = _run(capsys, "validate", "--csv", "submissions/telea.csv")
    assert code == 0 and telea["sha256"] in out


def test_param_override_and_bad_variant(workspace, capsys):
    code, _, err = _run(capsys, "predict", "--variant", "telea", "--param", "radius=1", "--splits", "val")
    (run,) = Path("data/predictions").glob("sample-*/telea/val/run.json")
    assert code == 0 and '"radius": 1' in run.read_text()
    code, _, err = _run(capsys, "predict", "--variant", "telea", "--param", "radios=1")
    assert code == 2 and "--param radios=1: telea has no parameter 'radios'" in err
    code, _, err = _run(capsys, "submit", "--variant", "telea", "--param", "radius=-3")
    assert code == 2 and "--param radius=-3: the radius must be a positive number" in err
    code, _, err = _run(capsys, "submit", "--variant", "telea", "--param", "radius=big")
    assert code == 2 and "--param radius=big: expected float" in err and "telea.yaml" not in err
    assert not Path("submissions/telea.csv").exists()
    code, _, err = _run(capsys, "submit", "--variant", "no-such-variant")
    assert code == 2 and "available:" in err and "telea" in err


def test_validate_names_the_bad_line(workspace, capsys):
    _run(capsys, "submit", "--variant", "mean")
    csv = Path("submissions/mean.csv")
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",3.5"
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = _run(capsys, "validate", "--csv", str(csv))
    assert code == 2 and "line 6: Value is 3.5: values must lie in 0..1" in err


# ---------------------------------------------------------------------------------------------
# Kaggle steps through the real client, against tests/kaggle_standin.py


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_data_downloads_and_validates_the_competition(workspace, standin, capsys):
    standin.state.data_zip = _zip_folder(workspace / "data/sample")
    code, out, err = _run(capsys, "data", "--competition", SLUG)
    assert code == 0, err
    assert "photo-reconstruction layout, 24 train, 24 validation, 19 test images" in out
    assert "submission format photo-reconstruction: filename_box_pixel,Value" in out
    assert (workspace / "data/raw" / SLUG / "Dataset/Testing_Data/masked_info.csv").exists()


def test_data_rejects_a_broken_download(workspace, standin, capsys):
    broken = workspace / "broken"
    shutil.copytree(workspace / "data/sample", broken)
    info = broken / "Dataset/Testing_Data/masked_info.csv"
    lines = info.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:2] + ["300", "0", "0", "0"])
    info.write_text("\n".join(lines) + "\n")
    standin.state.data_zip = _zip_folder(broken)
    code, _, err = _run(capsys, "data", "--competition", SLUG)
    assert code == 2 and "masked_info.csv: line 2" in err and "lies outside the 256x256 image" in err


def test_data_without_credentials_says_how_to_provide_them(workspace, home, offline, capsys):
    code, _, err = _run(capsys, "data", "--competition", SLUG)
    assert code == 2 and "kaggle.json" in err and "KAGGLE_USERNAME" in err


@pytest.mark.parametrize("status, advice", [(401, "credentials"), (403, "rules"), (404, SLUG)])
def test_data_http_errors_become_advice(workspace, standin, capsys, status, advice):
    standin.fail("DownloadDataFiles", status, "nope")
    code, _, err = _run(capsys, "data", "--competition", SLUG)
    assert code == 2 and advice in err


def test_kaggle_submit_validates_first_then_uploads_and_records(workspace, standin, capsys):
    _run(capsys, "submit", "--variant", "telea")
    csv = Path("submissions/telea.csv")
    good = csv.read_bytes()
    half = good[: good.index(b"\n", len(good) // 2) + 1]
    csv.write_bytes(half)  # a truncated upload must not cost one of the day's submissions
    code, _, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", SLUG)
    assert code == 2 and "expected id(s) missing" in err
    assert standin.call_names() == []  # nothing was uploaded

    csv.write_bytes(good)
    code, out, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", SLUG)
    assert code == 0, err
    (upload,) = standin.state.uploads.values()
    with zipfile.ZipFile(io.BytesIO(upload)) as zf:
        assert zf.read(zf.namelist()[0]) == good
    row = Leaderboard().read().iloc[-1]
    assert row["kaggle_status"] == "pending" and str(row["kaggle_ref"]) in out

    standin.state.submissions[0].update(status="COMPLETE", publicScore="0.1234")
    code, out, _ = _run(capsys, "kaggle-scores", "--competition", SLUG)
    assert code == 0 and "1 leaderboard row(s) updated" in out
    row = Leaderboard().read().iloc[-1]
    assert row["kaggle_public_score"] == pytest.approx(0.1234) and row["kaggle_status"] == "complete"


def test_kaggle_submit_reports_the_daily_limit(workspace, standin, capsys):
    _run(capsys, "submit", "--variant", "mean")
    standin.state.list_new_submissions = False
    code, _, err = _run(capsys, "kaggle-submit", "--variant", "mean", "--competition", SLUG)
    assert code == 2 and "limit" in err
    assert pd.isna(Leaderboard().read().iloc[-1]["kaggle_ref"])


def test_empty_validation_split_is_skipped_and_explained(workspace, capsys):
    Path("no-val.yaml").write_text("name: no-val\nmethod: mean\ndata: {val_count: 0}\n")
    code, out, err = _run(capsys, "predict", "--variant", "no-val.yaml")
    assert code == 0 and "val split is empty" in err and "no-val test: 19 images" in out
    code, _, err = _run(capsys, "score", "--variant", "no-val.yaml")
    assert code == 2 and "python -m pipeline score --csv <file>" in err


def test_score_refuses_predictions_made_on_other_boxes(workspace, capsys):
    _run(capsys, "predict", "--variant", "telea", "--splits", "val")
    Path("seed7.yaml").write_text("name: telea\nmethod: telea\ndata: {val_seed: 7}\n")
    code, _, err = _run(capsys, "score", "--variant", "seed7.yaml")
    assert code == 2 and "predictions were made on other val images, boxes or files" in err


def test_kaggle_scores_take_the_newest_submission_of_a_file(workspace, standin, capsys):
    _run(capsys, "submit", "--variant", "mean")
    sha = Leaderboard().read().iloc[-1]["sha256"]
    description = f"mean: baseline [sha {sha[:12]}]"
    standin.state.submissions = [  # newest first, as Kaggle lists them
        {"ref": 12, "date": "2026-11-02T00:00:00.000Z", "description": description, "status": "COMPLETE",
         "publicScore": "0.2000", "fileName": "mean.zip"},
        {"ref": 11, "date": "2026-11-01T00:00:00.000Z", "description": description, "status": "COMPLETE",
         "publicScore": "0.3000", "fileName": "mean.zip"},
    ]
    code, _, _ = _run(capsys, "kaggle-scores", "--competition", SLUG)
    row = Leaderboard().read().iloc[-1]
    assert code == 0 and str(row["kaggle_ref"]) == "12" and row["kaggle_public_score"] == pytest.approx(0.2)


def _record_rows(path, start):
    board = Leaderboard(Path(path))
    for i in range(30):
        board.record({"variant": f"v{start + i}", "method": "mean", "val_rmse": 0.1})


def test_concurrent_submits_lose_no_leaderboard_row(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    path = tmp_path / "leaderboard.csv"
    workers = [ctx.Process(target=_record_rows, args=(str(path), start)) for start in (0, 100)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(Leaderboard(path).read()["variant"]) == sorted([f"v{i}" for i in range(30)] + [f"v{100 + i}" for i in range(30)])


def test_real_layout_from_download_to_upload_scores_what_was_uploaded(workspace, standin, capsys):
    """make data -> make submit DATA= -> make kaggle-submit, then the uploaded bytes scored."""
    from pipeline.config import data_config
    from pipeline.data.competition import load_competition
    from pipeline.score import score_boxes, truth_boxes
    from pipeline.submission import read_submission

    standin.state.data_zip = _zip_folder(workspace / "data/sample")
    assert _run(capsys, "data", "--competition", SLUG)[0] == 0
    data = f"data/raw/{SLUG}"
    code, out, err = _run(capsys, "submit", "--variant", "telea", "--data", data)
    assert code == 0, err
    row = Leaderboard().read().iloc[-1]
    assert row["data"] == data and row["test_rmse"] != row["test_rmse"]  # no truth for a download: NaN

    code, _, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", SLUG)
    assert code == 2 and f"telea was submitted on {data}, not on data/sample: pass that folder" in err
    assert "StartSubmissionUpload" not in standin.call_names()
    code, out, err = _run(capsys, "kaggle-submit", "--variant", "telea", "--competition", SLUG, "--data", data)
    assert code == 0, err
    create = next(c for c in standin.state.calls if c.name == "CreateSubmission")
    assert "[channels rgb]" in json.dumps(create.body)
    (upload,) = standin.state.uploads.values()
    uploaded = workspace / "uploaded.csv"
    with zipfile.ZipFile(io.BytesIO(upload)) as zf:
        uploaded.write_bytes(zf.read(zf.namelist()[0]))
    # the uploaded file, re-read with the competition's format, scores as the sample's truth says
    competition = load_competition(data_config({"root": data, "truth": "data/sample-truth"}))
    uploaded_rmse = score_boxes(read_submission(uploaded, competition), truth_boxes(competition, competition.test)).rmse
    _run(capsys, "submit", "--variant", "telea")
    assert uploaded_rmse == pytest.approx(Leaderboard().read().iloc[-1]["test_rmse"], abs=1e-4)
    assert 0.05 < uploaded_rmse < 0.3


def test_channels_on_the_command_line_are_recorded(workspace, capsys):
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    rgb = Path("submissions/mean.csv").read_text().splitlines()[1:4]  # one pixel: channels 0, 1, 2
    code, out, err = _run(capsys, "submit", "--variant", "mean", "--channels", "bgr")
    assert code == 0, err
    assert "channels bgr" in out and Leaderboard().read().iloc[-1]["channels"] == "bgr"
    bgr = Path("submissions/mean.csv").read_text().splitlines()[1:4]
    value = lambda line: line.rsplit(",", 1)[1]  # noqa: E731
    assert [value(line) for line in bgr] == [value(line) for line in reversed(rgb)]  # channel 0 is now blue
    assert len({value(line) for line in rgb}) > 1, "the pixel's channels must differ for this to mean anything"


def test_leaderboard_ranks_rows_of_one_validation_split(workspace, capsys):
    _run(capsys, "submit", "--variant", "mean")
    Path("seed7.yaml").write_text("name: telea-seed7\nmethod: telea\ndata: {val_seed: 7}\n")
    _run(capsys, "submit", "--variant", "seed7.yaml")
    _run(capsys, "submit", "--variant", "telea")
    code, out, _ = _run(capsys, "leaderboard")
    ranked, apart = out.split("scored on another validation split")
    assert "telea " in ranked and "mean " in ranked and "telea-seed7" not in ranked
    assert "telea-seed7" in apart and "not ranked with the above" in apart


def test_read_only_competition_with_outputs_elsewhere(workspace, tmp_path, monkeypatch, capsys):
    """As on Kaggle: the data under a read-only input folder, everything written to the working one."""
    import os
    import stat

    data = tmp_path / "input/photo-reconstruction"
    shutil.copytree(workspace / "data/sample", data)

    def snapshot():
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "input").rglob("*")}

    for path in [data, *data.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = snapshot()
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    try:
        code, out, err = _run(capsys, "submit", "--variant", "telea", "--data", str(data / "Dataset"))
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert code == 0, err
    assert snapshot() == before  # nothing written, moved or touched in the input
    assert (working / "submissions/telea.csv").exists() and (working / "submissions/leaderboard.csv").exists()
    assert any((working / "data/predictions").iterdir())
    assert os.access(working / "submissions/telea.csv", os.R_OK)


def test_kaggle_submit_refuses_a_csv_on_the_wrong_scale_or_format(workspace, standin, capsys):
    _run(capsys, "submit", "--variant", "mean")
    csv = Path("submissions/mean.csv")
    table = pd.read_csv(csv, dtype=str)
    table["Value"] = (table["Value"].astype(float) * 255).round().astype(int).astype(str)
    table.to_csv(csv, index=False)  # 0..255 integers, as a generic pipeline writes them
    code, _, err = _run(capsys, "kaggle-submit", "--variant", "mean", "--competition", SLUG)
    assert code == 2 and "values are pixel/255 on 0..1" in err
    table.rename(columns={"filename_box_pixel": "Id", "Value": "Predicted"}).to_csv(csv, index=False)
    code, _, err = _run(capsys, "kaggle-submit", "--variant", "mean", "--competition", SLUG)
    assert code == 2 and "header is ['Id', 'Predicted'], expected ['filename_box_pixel', 'Value']" in err
    assert "StartSubmissionUpload" not in standin.call_names()
