"""Predictions: run a variant's inpainter over the val or test split and keep its composited
images, with a run.json, in the variant's prediction folder (pipeline/data/predictions.py).
Runs of one variant on one data folder take turns; several processes (accelerate launch) split
the records and the main one checks and publishes the merged folder. Under several processes the
main one alone takes the variant's lock, and one process per machine checks the data."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.config import DataConfig, VariantConfig
from pipeline.data.boxes import apply_mask, boxes_mask
from pipeline.data.competition import (
    Competition,
    CompetitionError,
    ImageRecord,
    load_competition,
    read_image,
    write_image,
)
from pipeline.data.predictions import PREDICTIONS_DIR, competition_key, prediction_dir
from pipeline.files import locked, naming_a_full_disk, replace_folder
from pipeline.inpainters.base import InpaintBatch, Inpainter, build_inpainter, composite
from pipeline.score import split_fingerprint


@dataclass
class PredictionRun:
    folder: Path
    images: int
    seconds_per_image: float


@contextmanager
def variant_lock(variant_name: str, competition: Competition, root: Path = PREDICTIONS_DIR,
                 state=None) -> Iterator[None]:
    """Runs of one variant on one competition take turns: predictions, CSV and leaderboard row
    of a run are its own. A second run waits, saying which process holds the lock.

    Under several processes (`state`, default `process_state()`) the main one alone takes the
    lock and the others wait at a barrier until it holds it: a rank waiting in the lock while the
    main one waits for it at a barrier would never end. (A barrier gives up after the process
    group's timeout, torch's default 30 minutes (10 with NCCL), so a launch queued longer than
    that behind another run of the variant fails.)
    """
    state = state or process_state()
    folder = Path(root) / competition_key(competition) / variant_name
    lock = locked(folder / ".lock", f"running {variant_name} on {competition.root}")
    with lock if state.is_main_process else nullcontext():
        state.wait_for_everyone()
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
    is_local_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def local_main_process_first(self):
        yield

    @contextmanager
    def split_between_processes(self, items):
        yield items


def process_state():
    """accelerate's PartialState when launched as several processes (accelerate launch,
    torchrun: WORLD_SIZE > 1), else SingleProcess (so a classical run never imports torch)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pipeline.devices import partial_state

        return partial_state()
    return SingleProcess()


def load_competition_once(cfg: DataConfig, check=None, state=None) -> Competition:
    """load_competition(cfg) with its image checks, then `check(competition)` (training: every
    photo decoded), done by one process per machine: under several processes (`state`, default
    `process_state()`) the machine's main process goes first and the others, once it is through,
    read the same manifest without the checks. A failed check raises on that process, and the
    launcher (accelerate launch, torchrun) then ends the others."""
    state = state or process_state()
    with state.local_main_process_first():
        first = state.is_local_main_process
        competition = load_competition(cfg, check_images=first)
        if first and check is not None:
            check(competition)
    return competition


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
        replace_folder(staging, final)  # some complete folder exists at every moment
    state.wait_for_everyone()
    return PredictionRun(final, len(records), json.loads((final / "run.json").read_text())["seconds_per_image"])
