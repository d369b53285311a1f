"""Predictions: run a variant's inpainter over a split and keep its composited images.

    data/predictions/<competition>/<variant>/<split>/<image_id>.png   uint8 RGB, box pixels from
                                       the method, every other pixel from the input
    data/predictions/<competition>/<variant>/<split>/run.json   variant config, images, seconds
                                       per image, the split's fingerprint

<competition> is the data folder's name and a digest of its absolute path, so runs on two data
folders never share predictions; runs of one variant on one folder take turns (a lock).
`val` inputs are the competition's masked copies of the held-out photos (or the photos with the
boxes blanked, data.val_inputs: clean); `test` inputs are the competition's test images. Boxes
are blanked again, so every method sees the same fill whatever the competition used.

Several processes (`accelerate launch --num_processes N -m pipeline ...`, one per GPU): the records
are split between them with accelerate's `split_between_processes` (contiguous, in order); each
process writes its own PNGs into the shared staging folder, plus its timing; the main process
waits for all, checks every record's PNG is there, writes run.json and renames the folder. PNGs
are named by image id, so the merged folder is the same whatever the split, and whatever reads
it (the submission writer) goes through the records in the competition's order.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.config import VariantConfig, naming_a_full_disk
from pipeline.data.boxes import apply_mask, box_pixels, boxes_mask
from pipeline.data.competition import (
    Competition,
    CompetitionError,
    ImageRecord,
    read_image,
    write_image,
)
from pipeline.inpainters.base import InpaintBatch, Inpainter, build_inpainter, composite
from pipeline.score import Scores, score_boxes

PREDICTIONS_DIR = Path("data/predictions")


@dataclass
class PredictionRun:
    folder: Path
    images: int
    seconds_per_image: float


def competition_key(competition: Competition) -> str:
    """A folder name for the competition: its folder's name plus a digest of its absolute path."""
    root = Path(competition.root).resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-") or "data"
    return f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def prediction_dir(variant_name: str, split: str, competition: Competition, root: Path = PREDICTIONS_DIR) -> Path:
    return Path(root) / competition_key(competition) / variant_name / split


@contextmanager
def variant_lock(variant_name: str, competition: Competition, root: Path = PREDICTIONS_DIR):
    """Runs of one variant on one competition take turns: predictions, CSV and leaderboard row
    of a run are its own. A second run waits, saying which process holds the lock."""
    folder = Path(root) / competition_key(competition) / variant_name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            print(f"waiting: {holder} is running {variant_name} on {competition.root}", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} ({' '.join(sys.argv[:6])}, since {time.strftime('%H:%M:%S')})")
        lock.flush()
        yield


def masked_batches(records: Sequence[ImageRecord], size: int, batch_size: int) -> Iterator[tuple[list[ImageRecord], InpaintBatch]]:
    """Batches of method inputs for `records` (val or test), in order: each record's input file
    with its boxes blanked."""
    for start in range(0, len(records), batch_size):
        chunk = list(records[start : start + batch_size])
        images, masks = [], []
        for record in chunk:
            mask = boxes_mask(record.boxes, size, size)
            images.append(apply_mask(read_image(record.input_path, size), mask))
            masks.append(mask)
        yield chunk, InpaintBatch(
            np.stack(images), np.stack(masks), [r.boxes for r in chunk], [r.label for r in chunk],
            [r.image_id for r in chunk],
        )


class SingleProcess:
    """The process state of an ordinary run: accelerate's PartialState interface, one process."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def split_between_processes(self, items):
        yield items


def process_state():
    """accelerate's PartialState when launched as several processes (accelerate launch,
    torchrun: WORLD_SIZE > 1), else SingleProcess (so a classical run never imports torch)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState()
    return SingleProcess()


def _predict_records(records, inpainter, staging: Path, size: int, batch_size: int, bar) -> float:
    """Inpaint `records`, write their PNGs into `staging`; returns the seconds spent inpainting."""
    seconds = 0.0
    for chunk, batch in masked_batches(records, size, batch_size):
        start = time.perf_counter()
        outputs = composite(batch.masked_images, batch.masks, inpainter.inpaint(batch))
        seconds += time.perf_counter() - start
        for record, image in zip(chunk, outputs):
            write_image(staging / f"{record.image_id}.png", image)
        bar.update(len(chunk))
    return seconds


def _merge_shards(staging: Path, records: Sequence[ImageRecord], processes: int) -> float:
    """Check every record's PNG is in `staging` (in record order); total inpainting seconds."""
    missing = [r.image_id for r in records if not (staging / f"{r.image_id}.png").exists()]
    if missing:
        raise CompetitionError(f"{staging}: {len(missing)} prediction(s) missing after all processes "
                               f"finished, first {missing[0]}; re-run the prediction")
    seconds = 0.0
    for rank in range(processes):
        shard = staging / f"shard-{rank}.json"
        seconds += json.loads(shard.read_text())["seconds"]
        shard.unlink()
    return seconds


def predict_split(
    variant: VariantConfig,
    competition: Competition,
    split: str,
    inpainter: Inpainter | None = None,
    root: Path = PREDICTIONS_DIR,
    progress: bool = True,
    state=None,
) -> PredictionRun:
    """Predict every image of `split` ("val" or "test") and write the composited PNGs.

    The folder is written beside its final place and renamed over it when complete, so a killed
    run leaves the previous predictions intact. `state` (default: `process_state()`) splits the
    records between processes; every process must call this, and all return the same run.
    seconds_per_image is inpainting time summed over processes per image (device-seconds).
    """
    if split not in ("val", "test"):
        raise ValueError(f"predict val or test, not {split!r}")
    records = competition.split(split)
    if not records:
        raise CompetitionError(f"{competition.root}: split {split!r} is empty (data.val_count?)")
    state = state or process_state()
    inpainter = inpainter or build_inpainter(variant)
    final = prediction_dir(variant.name, split, competition, root)
    staging = final.with_name(final.name + ".partial")
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    size = competition.config.image_size
    kept = f"the previous predictions in {final} are unchanged" if final.exists() else "nothing else was written"
    with state.split_between_processes(list(records)) as mine, naming_a_full_disk(staging, kept):
        # the bar closes before an error is printed, so the message is not glued to it
        with tqdm(total=len(mine), desc=f"{variant.name} {split}", unit="img",
                  disable=not (progress and state.is_main_process)) as bar:
            seconds = _predict_records(mine, inpainter, staging, size, variant.batch_size, bar)
        (staging / f"shard-{state.process_index}.json").write_text(
            json.dumps({"images": len(mine), "seconds": seconds}))
    state.wait_for_everyone()
    if state.is_main_process:
        seconds = _merge_shards(staging, records, state.num_processes)
        (staging / "run.json").write_text(json.dumps(
            {"variant": variant.to_dict(), "split": split, "images": len(records),
             "split_fingerprint": split_fingerprint(competition, split),
             "seconds_per_image": seconds / len(records), "processes": state.num_processes}, indent=2))
        # swap so that some complete folder exists at every moment, even if killed in between
        previous = final.with_name(final.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            final.rename(previous)
        staging.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
    state.wait_for_everyone()
    return PredictionRun(final, len(records), json.loads((final / "run.json").read_text())["seconds_per_image"])


def split_fingerprint(competition: Competition, split: str) -> str:
    """A digest of what a split's scores depend on: the data folder, each image's id, boxes,
    input and truth files (path, size, modification time). Predictions made on anything else
    (another folder, seed, val_count, a rebuilt sample) do not match."""
    def stat(path: Path) -> list:
        try:
            info = path.stat()
        except OSError:
            return [str(path), None]
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]

    entries = []
    for record in competition.split(split):
        files = [record.input_path] + ([truth_path(competition, record)] if split == "val" else [])
        entries.append([record.image_id, [b.as_xyxy() for b in record.boxes]] + [stat(p) for p in files])
    text = json.dumps([str(Path(competition.root).resolve()), entries])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_prediction(folder: Path, record: ImageRecord, size: int) -> np.ndarray:
    path = Path(folder) / f"{record.image_id}.png"
    if not path.exists():
        raise CompetitionError(f"{path}: prediction missing; re-run `make predict`")
    return read_image(path, size)


def truth_path(competition: Competition, record: ImageRecord) -> Path:
    """Where the unmasked image of `record` lies: the photo itself for val, data.truth for test
    (`<truth>/<test name>`, or `<truth>/<test name>.png` as the sample writes it)."""
    if record.split != "test":
        return record.path
    truth_root = competition.config.truth
    if truth_root is None:
        raise CompetitionError(
            "no ground truth for the test set (data.truth is unset): score on the validation split"
        )
    rel = record.path.relative_to(competition.test_root)
    for path in (Path(truth_root) / rel, Path(truth_root) / f"{rel}.png"):
        if path.is_file():
            return path
    raise CompetitionError(f"{Path(truth_root) / rel}(.png): ground truth of test image {record.image_id} not found")


def truth_boxes(competition: Competition, records: Sequence[ImageRecord]) -> np.ndarray:
    """uint8 (N, boxes, S, S, 3): the true pixels of each record's boxes."""
    size = competition.config.image_size
    return np.stack([box_pixels(read_image(truth_path(competition, r), size), r.boxes) for r in records])


def score_split(competition: Competition, split: str, folder: Path, variant_name: str | None = None) -> Scores:
    """Score the predictions in `folder` against the truth of `split`.

    Refuses predictions made on other images or boxes (another data folder, val_count or seed,
    a rebuilt sample): outside the current boxes a prediction is the untouched photo, so it
    would score near zero.
    """
    records = competition.split(split)
    if not records:
        raise CompetitionError(f"the {split} split is empty (data.val_count = 0?); score a CSV instead")
    run_file = Path(folder) / "run.json"
    name = variant_name or Path(folder).parent.name
    if not run_file.exists():
        raise CompetitionError(f"{name} has no {split} predictions for {competition.root} ({folder}); "
                               "predict or submit it first")
    if json.loads(run_file.read_text()).get("split_fingerprint") != split_fingerprint(competition, split):
        raise CompetitionError(
            f"{folder}: {name}'s predictions were made on other {split} images, boxes or files than "
            f"{competition.root} holds now (rebuilt data, data.val_count / val_seed changed); predict it again"
        )
    size = competition.config.image_size
    predicted = np.stack([box_pixels(load_prediction(folder, r, size), r.boxes) for r in records])
    return score_boxes(predicted, truth_boxes(competition, records), [r.label for r in records])
