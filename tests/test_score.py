import numpy as np
import pytest

from pipeline.score import rmse, score_boxes


def test_rmse_against_hand_computed_value():
    truth = np.zeros((2, 2, 8, 8, 3), dtype=np.uint8)
    prediction = truth.copy()
    prediction[0] = 102  # 0.4 on the 0..1 scale, on half of the pixels
    # sqrt(mean(0.4^2 over half, 0 over half)) = sqrt(0.08)
    assert rmse(prediction, truth) == pytest.approx(np.sqrt(0.08), abs=1e-12)
    scores = score_boxes(prediction, truth, ["cat", "dog"])
    assert scores.rmse == pytest.approx(0.28284271247, abs=1e-9)
    assert scores.rmse_255 == pytest.approx(0.28284271247 * 255, abs=1e-6)
    # PSNR from the pooled MSE: 10 log10(255^2 / mse_255), mse_255 = 102^2 / 2
    assert scores.psnr == pytest.approx(10 * np.log10(255**2 / (102**2 / 2)), abs=1e-9)
    assert scores.rmse_by_class == pytest.approx({"cat": 0.4, "dog": 0.0})
    assert scores.images == 2


def test_perfect_prediction_scores_zero_and_ssim_one():
    truth = np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    scores = score_boxes(truth.copy(), truth)
    assert scores.rmse == 0.0
    assert scores.ssim == pytest.approx(1.0)
    assert scores.psnr == float("inf")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        score_boxes(np.zeros((1, 2, 8, 8, 3), np.uint8), np.zeros((1, 1, 8, 8, 3), np.uint8))
