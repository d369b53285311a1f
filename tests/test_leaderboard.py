

def test_gains_over_baseline_measure_each_row_against_the_best_classical_row():
    import pandas as pd

    from pipeline.leaderboard import gains_over_baseline, is_baseline

    table = pd.DataFrame({"variant": ["pix", "telea", "mean", "worse"],
                          "method": ["pix2pix", "telea", "mean", "pconv"],
                          "val_rmse": [0.12, 0.15, 0.19, 0.16]})
    gains = gains_over_baseline(table)
    assert is_baseline("telea") and is_baseline("navier-stokes") and not is_baseline("pix2pix")
    assert gains["gain"].round(6).tolist() == [0.03, 0.0, -0.04, -0.01]
    assert round(float(gains["gain_pct"].iloc[0]), 6) == 20.0
    # no baseline scored: no gain to state
    assert gains_over_baseline(table[table["variant"] == "pix"])["gain"].isna().all()
