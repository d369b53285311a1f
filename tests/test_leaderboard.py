

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


OLD_COLUMNS = [  # the leaderboard's header before the run's facts came
    "variant", "method", "description", "data", "split", "format", "channels", "values", "submitted_at",
    "val_rmse", "val_rmse_255", "val_psnr", "val_ssim", "val_rmse_by_class", "test_rmse",
    "seconds_per_image", "submission", "sha256", "rows",
    "kaggle_ref", "kaggle_status", "kaggle_public_score", "run_dir", "config",
]


def test_a_leaderboard_written_before_the_run_facts_reads_and_takes_new_rows(tmp_path):
    import csv

    import pandas as pd

    from pipeline.leaderboard import COLUMNS, Leaderboard

    path = tmp_path / "leaderboard.csv"
    old = {c: "" for c in OLD_COLUMNS} | {"variant": "telea", "method": "telea", "split": "s1", "val_rmse": "0.15",
                                          "sha256": "ab" * 32, "config": '{"method": "telea"}'}
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, OLD_COLUMNS)
        writer.writeheader()
        writer.writerow(old)
    board = Leaderboard(path)
    table = board.read()
    assert list(table.columns[:len(OLD_COLUMNS)]) == OLD_COLUMNS and set(COLUMNS) <= set(table.columns)
    assert table.loc[0, "stop_reason"] is None and pd.isna(table.loc[0, "steps"])

    board.record({"variant": "unet", "method": "pix2pix", "split": "s1", "val_rmse": 0.12, "steps": 634,
                  "epochs": 17.135, "stop_reason": "max_minutes", "train_seconds": 3600.0, "git_dirty": False,
                  "git_commit": "c" * 40, "seed": 0, "checkpoint_sha256": "d" * 64,
                  "config": {"method": "pix2pix", "params": {"epochs": 24}}})
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == COLUMNS  # rewritten with the new header
    table = board.read()
    assert table["variant"].tolist() == ["telea", "unet"] and table.loc[0, "sha256"] == "ab" * 32
    assert table.loc[1, "git_dirty"] == "false" and table.loc[1, "steps"] == 634
    shown = board.format()
    unet = next(line for line in shown.splitlines() if line.strip().startswith("unet"))
    assert "634/888 max_minutes" in unet and "+0.0300" in unet and "+20.0%" in unet
