"""The leaderboard: one row per submission made, kept in submissions/leaderboard.csv.

Columns (CSV, one row per `submit`; re-runs append, nothing is overwritten):
    variant, method, description, data        what was run, on which competition folder
    split                                     fingerprint of the validation split it was scored on
    format, channels, values                  the submission format, channel order, value kind
    submitted_at                              UTC, ISO 8601
    val_rmse, val_rmse_255, val_psnr, val_ssim, val_rmse_by_class (JSON)
                                              local scores on the fixed validation boxes
    test_rmse                                 local score of the CSV against known test truth (sample)
    seconds_per_image                         the method's inference time per test image
    submission, sha256, rows                  the CSV and its checksum
    kaggle_ref, kaggle_status, kaggle_public_score   filled by kaggle-submit / kaggle-scores
    run_dir                                   TensorBoard folder of the training run, if any
    steps, epochs, stop_reason, train_seconds what the checkpoint's training run actually did: optimizer
                                              steps, epochs (a fraction where it stopped mid-epoch), why
                                              it stopped (finished, max_steps, max_minutes, interrupted),
                                              training time
    checkpoint_sha256                         the checkpoint the predictions came from
    git_commit, git_dirty, seed               the code that trained it (dirty: true / false; empty
                                              outside a git checkout) and params.seed
    (all empty for methods that are not trained; files written before these columns read as empty)
    config                                    the variant config (JSON)

Scores are only comparable on one validation split: rankings group rows by `split`. Every write
goes to a temporary file renamed over the old one, under a lock, and a damaged file is never
rewritten: it stops the command with the line to mend.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.config import ConfigError, PipelineError
from pipeline.data.competition import competition_home
from pipeline.files import atomic_write, disk_full, file_sha256, locked
from pipeline.inpainters.base import METHODS
from pipeline.next_step import NextStep

LEADERBOARD_PATH = Path("submissions/leaderboard.csv")
COLUMNS = [
    "variant", "method", "description", "data", "split", "format", "channels", "values", "submitted_at",
    "val_rmse", "val_rmse_255", "val_psnr", "val_ssim", "val_rmse_by_class", "test_rmse",
    "seconds_per_image", "submission", "sha256", "rows",
    "kaggle_ref", "kaggle_status", "kaggle_public_score", "run_dir",
    "steps", "epochs", "stop_reason", "train_seconds", "checkpoint_sha256", "git_commit", "git_dirty", "seed",
    "config",  # last: the longest field, and where a cut-off row ends
]
NUMBERS = ["val_rmse", "val_rmse_255", "val_psnr", "val_ssim", "test_rmse", "seconds_per_image", "rows",
           "kaggle_public_score", "steps", "epochs", "train_seconds", "seed"]
TEXT = [c for c in COLUMNS if c not in NUMBERS]
JSON = ["val_rmse_by_class", "config"]
SHOWN = ["variant", "method", "channels", "val_rmse", "gain", "gain_pct", "val_rmse_255", "val_psnr", "val_ssim",
         "test_rmse", "kaggle_public_score", "seconds_per_image", "run", "submitted_at"]
# the classical methods are the baselines every learned variant has to beat
BASELINE_METHODS = frozenset(m for m, target in METHODS.items() if target.startswith("pipeline.inpainters.classical:"))


def is_baseline(method) -> bool:
    return method in BASELINE_METHODS


def gains_over_baseline(table: pd.DataFrame, column: str = "val_rmse") -> pd.DataFrame:
    """`table` (rows scored on one validation split) with `gain` and `gain_pct`: how far each
    row's `column` is below the best baseline row's (positive: better than every baseline), in
    RMSE and in percent of the baseline's. NaN where the table holds no scored baseline."""
    baselines = table.loc[table["method"].map(is_baseline), column].dropna()
    best = float(baselines.min()) if len(baselines) else float("nan")
    values = pd.to_numeric(table[column], errors="coerce")
    return table.assign(gain=best - values, gain_pct=100.0 * (best - values) / best)


class LeaderboardError(PipelineError, ValueError):
    """The leaderboard file is damaged; the message names the line and how to recover."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Leaderboard:
    def __init__(self, path: Path = LEADERBOARD_PATH):
        self.path = Path(path)

    def check(self) -> int:
        """Raise LeaderboardError if the file is damaged; returns its row count."""
        if not self.path.exists():
            return 0
        recover = (f"the rows before that line are intact: move the file aside (mv {self.path} {self.path}.damaged), "
                   f"or mend or delete the line; nothing was written")
        line = 1
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                # strict: a quoted field still open at the end of the file (cut off) is an error
                reader = csv.reader(f, strict=True)
                header = next(reader, None)
                if not header or "variant" not in header or "val_rmse" not in header:
                    raise LeaderboardError(f"{self.path}: line 1: header {header} is not the leaderboard's; {recover}")
                rows = 0
                while True:
                    line = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
                    row = next(reader, None)
                    if row is None:
                        break
                    if len(row) != len(header):
                        raise LeaderboardError(f"{self.path}: line {line}: {len(row)} fields, expected "
                                               f"{len(header)} (truncated or hand-edited); {recover}")
                    for name, value in zip(header, row):
                        if name in NUMBERS and value.strip():
                            try:
                                float(value)
                            except ValueError:
                                raise LeaderboardError(f"{self.path}: line {line}: {name} {value!r} is not "
                                                       f"a number; {recover}") from None
                        if name in JSON and value.strip():
                            try:
                                json.loads(value)
                            except ValueError:
                                raise LeaderboardError(f"{self.path}: line {line}: {name} is not valid JSON "
                                                       f"({_clip(value)}; truncated or hand-edited); {recover}") from None
                    rows += 1
        except UnicodeDecodeError as exc:
            raise LeaderboardError(f"{self.path}: not UTF-8 text ({exc}); {recover}") from None
        except csv.Error as exc:
            raise LeaderboardError(f"{self.path}: line {line}: malformed CSV ({exc}; a quoted field cut off "
                                   f"or hand-edited); {recover}") from None
        return rows

    def read(self) -> pd.DataFrame:
        """All rows, in the order they were recorded (empty frame with COLUMNS if none)."""
        if not self.path.exists():
            return pd.DataFrame(columns=COLUMNS)
        self.check()
        try:
            table = pd.read_csv(self.path, dtype={c: str for c in TEXT}, keep_default_na=False,
                                na_values={c: [""] for c in NUMBERS})
        except pd.errors.ParserError as exc:  # what check() did not foresee, still without a traceback
            raise LeaderboardError(f"{self.path}: malformed CSV ({exc}); move it aside (mv {self.path} "
                                   f"{self.path}.damaged) or mend it; nothing was written") from None
        for column in COLUMNS:
            if column not in table:
                table[column] = None
        for column in TEXT:
            table[column] = table[column].astype(object).where(table[column].astype(str) != "", None)
        return table

    def _write(self, table: pd.DataFrame, before: int) -> None:
        if len(table) < before:  # never lose a row someone recorded
            raise LeaderboardError(f"{self.path}: refusing to write {len(table)} rows over {before}")
        try:
            with atomic_write(self.path) as tmp:
                table.to_csv(tmp, index=False)
        except OSError as exc:
            raise disk_full(exc, self.path, "the leaderboard is unchanged") or exc from None

    def _locked(self):
        """Serialise read-modify-write between processes (two submits at once)."""
        return locked(self.path.with_name(f".{self.path.name}.lock"), f"updating {self.path}")

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
        if isinstance(row["git_dirty"], bool):
            row["git_dirty"] = "true" if row["git_dirty"] else "false"
        new = pd.DataFrame([row], columns=COLUMNS)
        with self._locked():
            table = self.read()
            self._write(new if table.empty else pd.concat([table[COLUMNS], new], ignore_index=True), len(table))
        return row

    def update_kaggle(self, sha256: str, ref: str | None, status: str | None, public_score: float | None) -> bool:
        """Set the Kaggle fields of the rows whose CSV has this checksum; False if none has."""
        with self._locked():
            table = self.read()
            rows = table["sha256"] == sha256
            if not rows.any():
                return False
            table.loc[rows, "kaggle_ref"] = ref
            table.loc[rows, "kaggle_status"] = status
            if public_score is not None:
                table.loc[rows, "kaggle_public_score"] = public_score
            self._write(table, len(table))
            return True

    def uploaded_ref(self, sha256: str) -> str | None:
        """The Kaggle ref of a row whose CSV has this checksum, None if none was uploaded."""
        table = self.read()
        rows = table[(table["sha256"] == sha256) & table["kaggle_ref"].notna()]
        return None if rows.empty else str(rows["kaggle_ref"].iloc[-1])

    def repoint(self, sha256: str, path: Path) -> int:
        """Name `path` as the CSV of the rows whose CSV has this checksum (it was kept under
        another name); the number of rows changed."""
        with self._locked():
            table = self.read()
            rows = table["sha256"] == sha256
            table.loc[rows, "submission"] = str(path)
            self._write(table, len(table))
            return int(rows.sum())

    def latest(self, variants: list[str] | None = None, split: str | None = None) -> pd.DataFrame:
        """The latest row of each variant on each split (optionally only `variants` / `split`),
        best local RMSE first."""
        table = self.read()
        if variants:
            table = table[table["variant"].isin(variants)]
        if split is not None:
            table = table[table["split"] == split]
        table = table.assign(_split=table["split"].fillna("")).drop_duplicates(["variant", "_split"], keep="last")
        return table.drop(columns="_split").sort_values("val_rmse", na_position="last").reset_index(drop=True)

    def current_split(self, split: str | None = None) -> str | None:
        """`split` if given, else the split of the newest row (what rankings compare on)."""
        if split is not None:
            return split
        table = self.read()
        return None if table.empty else table["split"].iloc[-1]

    def submitted_on(self, variant_name: str, data_root: str | Path) -> pd.Series:
        """The variant's newest row made on the data folder `data_root`, however it was spelled
        (data/x and data/x/Dataset are one competition); ConfigError if none."""
        table = self.read()
        rows = table[table["variant"] == variant_name]
        if rows.empty:
            raise ConfigError(f"variant {variant_name!r} has no submission yet: run "
                              f"`{NextStep('submit', {'variant': variant_name})}`")
        same = rows[rows["data"].map(competition_home) == competition_home(data_root)]
        if same.empty:
            # the folders it was submitted on, newest first, each once
            folders = list(dict.fromkeys(str(d) for d in reversed(rows["data"].tolist())))
            shown = ", ".join(folders[:3]) + (f" (and {len(folders) - 3} older)" if len(folders) > 3 else "")
            raise ConfigError(
                f"{variant_name} was submitted on {shown}, not on {data_root}: pass that folder "
                f"(`{NextStep('kaggle-submit', {'variant': variant_name, 'competition': '<slug>', 'data': '<folder>'})}`), "
                f"or run `{NextStep('submit', {'variant': variant_name, 'data': data_root})}` first")
        return same.iloc[-1]

    def written_for_other_data(self, csv: Path, data_root: str | Path, sha256: str | None = None) -> str | None:
        """Where this leaderboard says `csv` (as it is now, of checksum `sha256` if known) was
        written, when that is other data than `data_root`; None when it was written for it, or is
        not recorded. Called once a check failed: the common path hashes the file once."""
        if not Path(csv).is_file():
            return None
        try:
            table = self.read()
        except PipelineError:
            return None
        rows = table[table["sha256"] == (sha256 or file_sha256(Path(csv)))]
        if rows.empty or (rows["data"].map(competition_home) == competition_home(data_root)).any():
            return None
        row = rows.iloc[-1]
        return f"{csv} was written for {row['data']} (variant {row['variant']}, {row['submitted_at']}), not for {data_root}"

    def update_from_kaggle(self, submissions) -> int:
        """Copy the ref, status and public score of each Kaggle submission (kaggle.KaggleSubmission,
        newest first) to the rows whose checksum its message carries; the number updated."""
        known = set(self.read()["sha256"].dropna())
        updated = 0
        for submission in reversed(submissions):  # oldest first: newest wins
            sha = next((s for s in known if _sha_tag(s) in (submission.description or "")), None)
            if sha and self.update_kaggle(sha, submission.ref, submission.status, submission.public_score):
                updated += 1
        return updated

    def format(self, all_rows: bool = False, variants: list[str] | None = None, split: str | None = None) -> str:
        """The ranking on one validation split (`split`, or the newest row's), then the rows
        scored on other splits, apart, each under its data folder."""
        table = self.read() if all_rows else self.latest(variants)
        if table.empty:
            return f"{self.path}: no submissions yet"
        if all_rows:
            table = table.sort_values("val_rmse", na_position="last")
        current = self.current_split(split)
        same = table["split"].fillna("") == (current or "")
        parts = [_table(table[same])]
        for other, group in table[~same].groupby(table["split"].fillna(""), sort=False):
            data = ", ".join(sorted({str(d) for d in group["data"].dropna()}))
            parts.append(f"\nscored on another validation split ({other or 'none'}; {data}): not ranked with the above\n"
                         + _table(group))
        return "\n".join(parts)


def kaggle_message(row) -> str:
    """The submission message Kaggle shows: variant, description, channel order, checksum."""
    return (f"{row['variant']}: {row['description'] or row['method']} [channels {row['channels']}] "
            f"{_sha_tag(str(row['sha256']))}")


def _sha_tag(sha256: str) -> str:
    """How a submission message names its CSV, so kaggle-scores finds the row again."""
    return f"[sha {sha256[:12]}]"


def _clip(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def run_summary(row) -> str:
    """A trained row's run in a few characters: "634/888 max_minutes" (steps done / the steps its
    config's epochs make, why it stopped); "" for a row without a run."""
    steps, epochs = row.get("steps"), row.get("epochs")
    if steps is None or pd.isna(steps):
        return ""
    done, planned = f"{int(steps)}", None
    try:
        config_epochs = json.loads(row.get("config") or "{}").get("params", {}).get("epochs")
        if config_epochs and epochs and float(epochs) > 0:
            planned = round(float(steps) / float(epochs) * float(config_epochs))  # steps per epoch x epochs
    except (ValueError, TypeError, AttributeError):
        planned = None
    if planned:
        done += f"/{planned}"
    return f"{done} {row.get('stop_reason') or ''}".strip()


def _table(table: pd.DataFrame) -> str:
    table = gains_over_baseline(table).assign(run=lambda t: t.apply(run_summary, axis=1) if len(t) else "")
    shown = table[SHOWN].copy()
    shown["gain"] = shown["gain"].map(lambda v: "" if pd.isna(v) else f"{float(v):+.4f}")
    shown["gain_pct"] = shown["gain_pct"].map(lambda v: "" if pd.isna(v) else f"{float(v):+.1f}%")
    for column in ("val_rmse", "test_rmse", "kaggle_public_score", "val_ssim", "seconds_per_image"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{float(v):.4f}")
    for column in ("val_rmse_255", "val_psnr"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{float(v):.2f}")
    shown = shown.fillna("").rename(columns={"gain": "gain_vs_baseline", "gain_pct": "gain_%"})
    return shown.to_string(index=False)
