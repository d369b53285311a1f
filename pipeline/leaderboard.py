"""The leaderboard: one row per submission made, kept in submissions/leaderboard.csv.

Columns (CSV, one row per `make submit`; re-runs append, nothing is overwritten):
    variant, method, description, data        what was run, on which competition folder
    submitted_at                              UTC, ISO 8601
    val_rmse, val_rmse_255, val_psnr, val_ssim, val_rmse_by_class (JSON)
                                              local scores on the fixed validation boxes
    test_rmse                                 local score of the CSV against known test truth (sample)
    seconds_per_image                         the method's inference time per test image
    submission, sha256, rows                  the CSV and its checksum
    kaggle_ref, kaggle_status, kaggle_public_score   filled by kaggle-submit / kaggle-scores
    run_dir                                   TensorBoard folder of the training run, if any
    config                                    the variant config (JSON)

Every write goes to a temporary file renamed over the old one, so the file is never half-written.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

LEADERBOARD_PATH = Path("submissions/leaderboard.csv")
COLUMNS = [
    "variant", "method", "description", "data", "submitted_at",
    "val_rmse", "val_rmse_255", "val_psnr", "val_ssim", "val_rmse_by_class", "test_rmse",
    "seconds_per_image", "submission", "sha256", "rows",
    "kaggle_ref", "kaggle_status", "kaggle_public_score", "run_dir", "config",
]
SHOWN = ["variant", "method", "val_rmse", "val_rmse_255", "val_psnr", "val_ssim", "test_rmse",
         "kaggle_public_score", "seconds_per_image", "submitted_at"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Leaderboard:
    def __init__(self, path: Path = LEADERBOARD_PATH):
        self.path = Path(path)

    def read(self) -> pd.DataFrame:
        """All rows, in the order they were recorded (empty frame with COLUMNS if none)."""
        if not self.path.exists():
            return pd.DataFrame(columns=COLUMNS)
        table = pd.read_csv(self.path, dtype={"kaggle_ref": str, "kaggle_status": str, "sha256": str})
        for column in COLUMNS:
            if column not in table:
                table[column] = None
        return table

    def _write(self, table: pd.DataFrame) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, self.path)

    @contextmanager
    def _locked(self):
        """Serialise read-modify-write between processes (two `make submit`s at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def record(self, entry: dict) -> dict:
        """Append one submission's row; unknown keys are an error, missing ones empty."""
        unknown = set(entry) - set(COLUMNS)
        if unknown:
            raise KeyError(f"not leaderboard columns: {sorted(unknown)}")
        row = {column: entry.get(column) for column in COLUMNS}
        row["submitted_at"] = row["submitted_at"] or now()
        for column in ("config", "val_rmse_by_class"):
            if isinstance(row[column], (dict, list)):
                row[column] = json.dumps(row[column], sort_keys=True)
        new = pd.DataFrame([row], columns=COLUMNS)
        with self._locked():
            table = self.read()
            self._write(new if table.empty else pd.concat([table, new], ignore_index=True))
        return row

    def update_kaggle(self, sha256: str, ref: str | None, status: str | None, public_score: float | None) -> bool:
        """Set the Kaggle fields of the rows whose CSV has this checksum; False if none has."""
        with self._locked():
            return self._update_kaggle(sha256, ref, status, public_score)

    def _update_kaggle(self, sha256, ref, status, public_score) -> bool:
        table = self.read()
        rows = table["sha256"] == sha256
        if not rows.any():
            return False
        table["kaggle_ref"] = table["kaggle_ref"].astype(object)
        table["kaggle_status"] = table["kaggle_status"].astype(object)
        table.loc[rows, "kaggle_ref"] = ref
        table.loc[rows, "kaggle_status"] = status
        if public_score is not None:
            table.loc[rows, "kaggle_public_score"] = public_score
        self._write(table)
        return True

    def latest(self, variants: list[str] | None = None) -> pd.DataFrame:
        """The latest row of each variant (optionally only `variants`), best local RMSE first."""
        table = self.read()
        if variants:
            table = table[table["variant"].isin(variants)]
        table = table.drop_duplicates("variant", keep="last")
        return table.sort_values("val_rmse", na_position="last").reset_index(drop=True)

    def format(self, all_rows: bool = False, variants: list[str] | None = None) -> str:
        table = self.read() if all_rows else self.latest(variants)
        if table.empty:
            return f"{self.path}: no submissions yet (make submit VARIANT=...)"
        if all_rows:
            table = table.sort_values("val_rmse", na_position="last")
        shown = table[SHOWN].copy()
        for column in ("val_rmse", "test_rmse", "kaggle_public_score", "val_ssim"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        for column in ("val_rmse_255", "val_psnr"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
        shown["seconds_per_image"] = shown["seconds_per_image"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        return shown.to_string(index=False)
