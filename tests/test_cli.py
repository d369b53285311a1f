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
    assert telea["rows"] == 12 * 2 * 75 * 75 * 3 and len(telea["sha256"]) == 64
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
    assert code == 0 and '"radius": 1' in Path("data/predictions/telea/val/run.json").read_text()
    code, _, err = _run(capsys, "predict", "--variant", "telea", "--param", "radios=1")
    assert code == 2 and "unknown key(s) radios" in err
    code, _, err = _run(capsys, "submit", "--variant", "no-such-variant")
    assert code == 2 and "available:" in err and "telea" in err


def test_validate_names_the_bad_line(workspace, capsys):
    _run(capsys, "submit", "--variant", "mean")
    csv = Path("submissions/mean.csv")
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",300"
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = _run(capsys, "validate", "--csv", str(csv))
    assert code == 2 and "line 6" in err and "300" in err


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
    assert "24 train, 24 validation, 12 test images, boxes from bboxes.csv" in out
    assert (workspace / "data/raw" / SLUG / "bboxes.csv").exists()


def test_data_rejects_a_broken_download(workspace, standin, capsys):
    broken = workspace / "broken"
    shutil.copytree(workspace / "data/sample", broken)
    (broken / "bboxes.csv").write_text("image_id,x,y,width,height\nretina_000,0,0,75,75\n")
    standin.state.data_zip = _zip_folder(broken)
    code, _, err = _run(capsys, "data", "--competition", SLUG)
    assert code == 2 and "has 1 box(es) (lines 2), expected 2" in err


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
    assert code == 0 and "val split is empty" in err and "no-val test: 12 images" in out
    code, _, err = _run(capsys, "score", "--variant", "no-val.yaml")
    assert code == 2 and "make score CSV=" in err


def test_score_refuses_predictions_made_on_other_boxes(workspace, capsys):
    _run(capsys, "predict", "--variant", "telea", "--splits", "val")
    Path("seed7.yaml").write_text("name: telea\nmethod: telea\ndata: {val_seed: 7}\n")
    code, _, err = _run(capsys, "score", "--variant", "seed7.yaml")
    assert code == 2 and "other val images or boxes" in err


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
