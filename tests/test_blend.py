"""Blending variants: the weights, the cross-fitted score (recomputed here independently), the
refusal of parts predicted on another split, and the blend as a variant of its own (predictions,
a valid submission, a leaderboard row with its weights)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.blend import fit_weights
from pipeline.cli import main
from pipeline.config import DataConfig
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import load_competition, read_image
from pipeline.leaderboard import Leaderboard
from pipeline.data.predictions import prediction_dir
from pipeline.score import truth_path
from pipeline.submission import validate_submission
from tests.conftest import REPO


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_part_equal_to_the_truth_takes_all_the_weight():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (4, 2, 9, 9, 3), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 30, truth.shape), 0, 255).astype(np.uint8)
    flat = np.full_like(truth, 128)
    weights = fit_weights(np.stack([noisy, truth, flat]), truth, per_channel=False)
    assert weights.shape == (3,) and weights[1] == pytest.approx(1.0, abs=1e-6)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    # per channel: each part is the truth in some channels only
    red_right, rest_right = noisy.copy(), noisy.copy()
    red_right[..., 0] = truth[..., 0]
    rest_right[..., 1:] = truth[..., 1:]
    weights = fit_weights(np.stack([red_right, rest_right]), truth, per_channel=True)
    assert np.allclose(weights, [[1, 0, 0], [0, 1, 1]], atol=1e-6)


def test_two_equally_noisy_parts_share_the_weight():
    rng = np.random.default_rng(1)
    truth = rng.integers(60, 200, (6, 2, 15, 15, 3), dtype=np.uint8)
    parts = np.stack([np.clip(truth + rng.normal(0, 20, truth.shape), 0, 255).astype(np.uint8) for _ in range(2)])
    weights = fit_weights(parts, truth, per_channel=False)
    assert weights == pytest.approx([0.5, 0.5], abs=0.03)


def _val_boxes(competition, folder):
    return np.stack([box_pixels(read_image(Path(folder) / f"{r.image_id}.png", 256), r.boxes) for r in competition.val])


def _two_part_weight(a, b, y):
    """argmin over w in [0, 1] of |w a + (1 - w) b - y|^2, in closed form."""
    a, b, y = (v.astype(np.float64).ravel() for v in (a, b, y))
    return float(np.clip(np.dot(a - b, y - b) / np.dot(a - b, a - b), 0, 1))


def _blend(a, b, w):
    return np.clip(np.round(w * a.astype(np.float64) + (1 - w) * b.astype(np.float64)), 0, 255).astype(np.uint8)


def _rmse(p, t):
    return float(np.sqrt(np.mean((p.astype(np.float64) - t.astype(np.float64)) ** 2)) / 255)


def test_blend_is_cross_fitted_and_submitted_as_a_variant(workspace, capsys):
    for variant in ("telea", "mean"):
        assert _run(capsys, "submit", "--variant", variant)[0] == 0
    code, out, err = _run(capsys, "blend", "--variants", "telea,mean", "--name", "tm")
    assert code == 0, err
    competition = load_competition(DataConfig())
    truth = np.stack([box_pixels(read_image(truth_path(competition, r), 256), r.boxes) for r in competition.val])
    telea, mean = (_val_boxes(competition, prediction_dir(v, "val", competition)) for v in ("telea", "mean"))
    # cross-fitted by hand: halves by position, each scored with the other's closed-form weight
    even = np.arange(len(truth)) % 2 == 0
    crossed = np.empty_like(truth)
    for fit, score in ((even, ~even), (~even, even)):
        crossed[score] = _blend(telea[score], mean[score], _two_part_weight(telea[fit], mean[fit], truth[fit]))
    cross_fit = _rmse(crossed, truth)
    w = _two_part_weight(telea, mean, truth)
    assert 0 < w < 1  # a real blend, not one part
    lines = {line.strip().split("  ")[0]: line for line in out.splitlines()}
    assert f"{_rmse(telea, truth):.4f}" in lines["telea"] and f"{_rmse(mean, truth):.4f}" in lines["mean"]
    assert f"{cross_fit:.4f}" in lines["blend, cross-fitted (the honest one)"]
    # the blend is a variant: its config, predictions in the parts' layout, a valid CSV, a row
    config = yaml.safe_load(Path("submissions/tm.yaml").read_text())
    assert config["method"] == "blend" and config["params"]["variants"] == ["telea", "mean"]
    assert config["params"]["weights"] == pytest.approx([w, 1 - w], abs=1e-4)
    assert config["params"]["cross_fit_rmse"] == pytest.approx(cross_fit, abs=1e-5)
    blended = _val_boxes(competition, prediction_dir("tm", "val", competition))
    assert np.abs(blended.astype(int) - _blend(telea, mean, w).astype(int)).max() <= 1
    validate_submission(Path("submissions/tm.csv"), competition)
    row = Leaderboard().latest(["tm"]).iloc[0]
    assert row["method"] == "blend" and json.loads(row["config"])["params"]["weights"] == config["params"]["weights"]
    assert row["val_rmse"] == pytest.approx(_rmse(blended, truth), abs=1e-6)
    assert row["split"] == Leaderboard().latest(["telea"]).iloc[0]["split"]
    test_run = json.loads((prediction_dir("tm", "test", competition) / "run.json").read_text())
    assert test_run["images"] == len(competition.test)
    # the other commands take it by its config file
    code, out, _ = _run(capsys, "score", "--variant", "submissions/tm.yaml")
    assert code == 0 and f"RMSE {row['val_rmse']:.4f}" in out
    # the report's table says what the blend is made of
    code, _, err = _run(capsys, "compare", "--variants", "telea,mean,tm")
    assert code == 0, err
    page = Path("submissions/report.html").read_text()
    assert f"blend {w:.2f} telea + {1 - w:.2f} mean; cross-fitted validation RMSE {cross_fit:.4f}" in page


def test_parts_predicted_on_another_split_are_refused_by_name(workspace, capsys):
    other = yaml.safe_load((REPO / "configs/telea.yaml").read_text())
    other.update(name="telea-seed1", data={**(other.get("data") or {}), "val_seed": 1})
    Path("telea-seed1.yaml").write_text(yaml.safe_dump(other))
    assert _run(capsys, "submit", "--variant", "telea-seed1.yaml")[0] == 0
    assert _run(capsys, "submit", "--variant", "mean")[0] == 0
    code, _, err = _run(capsys, "blend", "--variants", "mean,telea-seed1")
    assert code == 2 and "telea-seed1" in err and "another split or competition" in err
    assert not Path("submissions/blend-mean_telea-seed1.csv").exists()
    code, _, err = _run(capsys, "blend", "--variants", "mean,never-submitted")
    assert code == 2 and "never-submitted has no val predictions" in err
