"""`verdict`: the variant that won on the validation split, its gain over Telea, the ranking, and
the next steps as the person would type them; a clear error without a Telea row."""

from __future__ import annotations

import pytest

from pipeline.cli import main as cli
from pipeline.config import ConfigError
from pipeline.leaderboard import Leaderboard
from pipeline.verdict import format_verdict, verdict


def _rows(board: Leaderboard, rows, split="val-1", data="data/sample") -> None:
    for variant, method, rmse in rows:
        board.record({"variant": variant, "method": method, "val_rmse": rmse, "split": split, "data": data})


@pytest.fixture
def board(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    board = Leaderboard()
    _rows(board, [("pix2pix-cpu", "pix2pix", 0.05)], split="old-split", data="data/old")  # another split
    _rows(board, [("mean", "mean", 0.2), ("navier-stokes", "navier-stokes", 0.11), ("telea", "telea", 0.10),
                  ("pix2pix-cpu", "pix2pix", 0.09), ("pix2pix-cpu", "pix2pix", 0.08), ("nearest", "nearest", 0.12)])
    return board


def test_the_winner_and_its_gain_over_telea_on_the_newest_split(board):
    result = verdict(board)
    assert result.best_learned == result.winner
    assert result.winner.variant == "pix2pix-cpu" and result.winner.val_rmse == pytest.approx(0.08)  # its latest row
    assert result.winner.gain_over_telea == pytest.approx(0.02)
    assert result.winner.gain_over_telea_pct == pytest.approx(20.0)
    assert [r.variant for r in result.ranking] == ["pix2pix-cpu", "telea", "navier-stokes", "nearest", "mean"]
    assert result.telea.variant == "telea" and result.best_baseline.variant == "telea"
    assert result.data == ["data/sample"]  # the older split's row is not ranked with these
    # the best baseline's gain is leaderboard.gains_over_baseline's
    assert result.winner.gain_over_baseline == pytest.approx(0.02)


def test_the_verdict_reads_as_make_commands_under_the_makefile(board, capsys, monkeypatch):
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli(["verdict"]) == 0
    out = capsys.readouterr().out
    assert "pix2pix-cpu wins: validation RMSE 0.0800, 0.0200 (20.0%) below Telea's 0.1000" in out
    assert "\n  mean             0.2000  +0.1000 (+100.0%)\n" in out and "\n  telea            0.1000  (Telea)\n" in out
    for step in ("make compare", "make serve", "make data COMPETITION=<slug>",
                 "make submit VARIANT=pix2pix-cpu DATA=data/raw/<slug>",
                 "make kaggle-submit VARIANT=pix2pix-cpu COMPETITION=<slug> DATA=data/raw/<slug>"):
        assert any(line.startswith(f"  {step} ") and "  # " in line for line in out.splitlines()), step
    monkeypatch.delenv("PIPELINE_VIA")
    assert cli(["verdict"]) == 0
    assert "\n  python -m pipeline compare " in capsys.readouterr().out


def test_when_the_winner_is_no_network_the_best_learned_model_is_named_too(board):
    _rows(board, [("nearest", "nearest", 0.07)])  # copies of training photos: the sample's winner
    text = format_verdict(verdict(board))
    assert "nearest wins: validation RMSE 0.0700, 0.0300 (30.0%) below Telea's 0.1000" in text
    assert "best learned model: pix2pix-cpu (pix2pix), RMSE 0.0800, 0.0200 (20.0%) below Telea's" in text


def test_when_telea_wins_or_another_baseline_beats_it_the_verdict_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    board = Leaderboard()
    _rows(board, [("telea", "telea", 0.10), ("navier-stokes", "navier-stokes", 0.095), ("pix", "pix2pix", 0.12)])
    text = format_verdict(verdict(board))
    assert "navier-stokes wins: validation RMSE 0.0950, 0.0050 (5.0%) below Telea's 0.1000" in text
    assert "best learned model: pix (pix2pix), RMSE 0.1200, 0.0200 (20.0%) above Telea's" in text
    assert "best classical baseline: navier-stokes (0.0950), not Telea" in text
    _rows(board, [("navier-stokes", "navier-stokes", 0.2)])
    assert "Telea wins: validation RMSE 0.1000; no other variant beat it" in format_verdict(verdict(board))


def test_without_a_telea_row_the_verdict_names_the_step_that_makes_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    board = Leaderboard()
    with pytest.raises(ConfigError, match="no variant scored on a validation split yet"):
        verdict(board)
    _rows(board, [("pix", "pix2pix", 0.12)])
    monkeypatch.setenv("PIPELINE_VIA", "make")
    assert cli(["verdict"]) == 2
    err = capsys.readouterr().err
    assert "no Telea row on this validation split (data/sample)" in err
    assert "run `make submit VARIANT=telea DATA=data/sample` first" in err
