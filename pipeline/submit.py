"""The submit step: predict val + test, write and validate the CSV, score it, record a row.

    predictions (pipeline.predict) -> submissions/<variant>.csv (pipeline.submission)
      -> validation scores + test scores read back from the CSV (pipeline.score)
      -> one leaderboard row (pipeline.leaderboard)

Runs of one variant on one competition take turns, and the leaderboard is checked before the
CSV is replaced, so a row's scores are always its own run's and its file is the one it names.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import ConfigError, VariantConfig
from pipeline.data.competition import Competition
from pipeline.files import locked
from pipeline.leaderboard import Leaderboard, kaggle_message
from pipeline.next_step import NextStep

SUBMISSIONS_DIR = Path("submissions")


def predict_splits(variant: VariantConfig, competition: Competition, splits: list[str], inpainter=None):
    """{split: PredictionRun} for `splits`, with the variant's inpainter (`inpainter`, or one
    built here) built once."""
    from pipeline.inpainters.base import build_inpainter
    from pipeline.predict import predict_split

    inpainter = inpainter or build_inpainter(variant)
    return {split: predict_split(variant, competition, split, inpainter) for split in splits}


def submit_variant(variant: VariantConfig, competition: Competition, leaderboard: Leaderboard,
                   out_dir: Path = SUBMISSIONS_DIR, run_dir: str | None = None) -> dict:
    """Predict val + test, write and validate the CSV, score, record a leaderboard row.

    Returns the row ({} on processes other than the main one, which alone writes).
    """
    from pipeline.data.predictions import load_prediction
    from pipeline.inpainters.base import build_inpainter
    from pipeline.predict import process_state, variant_lock
    from pipeline.score import score_boxes, score_split, truth_boxes
    from pipeline.submission import read_submission, submission_spec, write_submission

    state = process_state()
    spec = submission_spec(competition)  # a bad sample submission stops here, before any work
    leaderboard.check()  # a damaged leaderboard stops here, before the CSV is replaced
    splits = ["val", "test"] if competition.val else ["test"]
    with variant_lock(variant.name, competition, state=state):  # the main process alone takes it
        inpainter = build_inpainter(variant)
        runs = predict_splits(variant, competition, splits, inpainter)
        if not state.is_main_process:
            return {}  # several processes predicted; the main one writes the CSV and the row
        size = competition.config.image_size
        test_folder = runs["test"].folder
        val = score_split(competition, "val", runs["val"].folder, variant.name) if "val" in runs else None
        path = out_dir / f"{variant.name}.csv"
        # runs of this variant on other data write the same file: write, read back and record in turn
        with locked(path.with_name(f".{path.name}.lock"), f"writing {path}"):
            keep_if_uploaded(path, leaderboard)
            csv = write_submission(path, competition, lambda i: load_prediction(test_folder, competition.test[i], size),
                                   spec=spec)
            test_rmse = None
            if competition.config.truth is not None:
                # scored from the CSV itself, so the file that would be uploaded is what is measured
                test = score_boxes(read_submission(csv.path, competition, spec), truth_boxes(competition, competition.test))
                test_rmse = test.rmse
            entry = _entry(variant, competition, spec, val, test_rmse, runs, csv, run_dir)
            # a trained method's checkpoint: what its run actually did (steps, stop reason, commit ...)
            return leaderboard.record(entry | getattr(inpainter, "run_facts", {}))


def keep_if_uploaded(path: Path, leaderboard: Leaderboard) -> Path | None:
    """Before `path` is written anew: when the CSV there now was uploaded to Kaggle, keep it as
    `<variant>.<sha12>.csv` beside it (a hard link: no copy) and point its rows there, so the file
    Kaggle scored stays on disk; the kept path, or None."""
    import shutil

    from pipeline.files import atomic_write, file_sha256

    table = leaderboard.read()
    if not path.is_file() or not (table["kaggle_ref"].notna() & (table["submission"] == str(path))).any():
        return None  # no upload recorded for this file name: nothing to hash
    sha = file_sha256(path)
    if leaderboard.uploaded_ref(sha) is None:
        return None
    kept = path.with_name(f"{path.stem}.{sha[:12]}{path.suffix}")
    if not kept.exists():
        try:
            os.link(path, kept)
        except OSError:  # a file system without hard links
            with atomic_write(kept) as tmp:
                shutil.copyfile(path, tmp)
    leaderboard.repoint(sha, kept)
    return kept


def _entry(variant, competition, spec, val, test_rmse, runs, csv, run_dir) -> dict:
    """The leaderboard row of one submission (without the training run's facts)."""
    from pipeline.score import split_fingerprint

    return {
        "variant": variant.name, "method": variant.method, "description": variant.description,
        "data": str(competition.root), "split": split_fingerprint(competition, "val") if val else None,
        "format": spec.fmt.name, "channels": spec.fmt.channels, "values": spec.fmt.values,
        "val_rmse": val.rmse if val else None, "val_rmse_255": val.rmse_255 if val else None,
        "val_psnr": val.psnr if val else None, "val_ssim": val.ssim if val else None,
        "val_rmse_by_class": val.rmse_by_class if val else None,
        "test_rmse": test_rmse, "seconds_per_image": runs["test"].seconds_per_image,
        "submission": str(csv.path), "sha256": csv.sha256, "rows": csv.rows,
        "run_dir": run_dir, "config": variant.to_dict(),
    }


def upload_submission(variant: VariantConfig, competition: Competition, slug: str, leaderboard: Leaderboard):
    """Upload the variant's newest CSV made on `competition` to the Kaggle competition `slug`,
    once it validates and is still the file its leaderboard row recorded (same sha256); records
    the upload on that row. Returns (row, kaggle.KaggleSubmission)."""
    from pipeline import kaggle
    from pipeline.submission import validate_submission

    from pipeline.submission import SubmissionError

    row = leaderboard.submitted_on(variant.name, competition.root)
    csv = Path(row["submission"])
    again = NextStep("submit", {"variant": variant.name, "data": row["data"]})
    if not csv.is_file():
        raise ConfigError(f"{csv}: the CSV of {variant.name}'s newest row ({row['submitted_at']}) is no longer on "
                          f"disk (prune keeps every variant's latest: deleted by hand?); run `{again}` to write it again")

    def refuse_if_rewritten_for_other_data(sha256: str | None = None) -> None:
        # a submit on other data rewrote the variant's CSV since this row was recorded
        other = leaderboard.written_for_other_data(csv, competition.root, sha256)
        if other:
            raise ConfigError(f"{other}: run `{again}` again to write it for this data")

    # a bad file never costs one of the day's submissions: the competition's format, scale and ids
    try:
        result = validate_submission(csv, competition)
    except SubmissionError:
        refuse_if_rewritten_for_other_data()
        raise
    if result.sha256 != row["sha256"]:
        refuse_if_rewritten_for_other_data(result.sha256)
        raise ConfigError(f"{csv} changed since it was recorded; run `{again}` again")
    found = kaggle.submit(slug, csv, kaggle_message(row))
    leaderboard.update_kaggle(result.sha256, found.ref, found.status, found.public_score)
    return row, found
