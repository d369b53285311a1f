"""The training data loader's speed with each hole fill, and each fill's RMSE as an inpainter.

    .venv/bin/python benchmarks/loader.py                      # configs/pix2pix.yaml's loader, 1 worker
    .venv/bin/python benchmarks/loader.py --variant unet-l2 --workers 2 --fills telea,onion

A GPU step outruns a loader that feeds fewer images than it trains on: on 4 Kaggle cores (3 loader
workers) the issue-15 goal is at least 100 images/s per worker. The loader is the one `train`
builds (pipeline.train.build_loaders: decode, augmentation, JPEG, boxes, the config's hole fill),
with only `hole_fill` changed between rows, timed after its first batch (worker start-up); the
median of `--rounds` rounds. Other processes' load changes the figures: compare rows of one run.
A device fill (fill.DEVICE_FILLS: onion) leaves the loader the boxes unfilled, so its row is the
`none` row: its cost moves to the network's input on the GPU (its per-image cost printed here is
the CPU reference's).

It also prints, per fill, its cost per image in the main process and its RMSE on the sample's
validation boxes as an inpainter on its own (what a residual generator starts from).
Writes nothing but the sample competition, built where missing (as `make sample` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.inpainters.fill import fill_holes  # noqa: E402


def fill_quality(competition, fills: list[str], size: int) -> dict[str, tuple[float, float]]:
    """{fill: (RMSE 0..1 on the validation box pixels, ms per image)}: the fill alone as the inpainter."""
    from pipeline.data.boxes import apply_mask, boxes_mask
    from pipeline.data.competition import read_image

    sse, seconds, count = dict.fromkeys(fills, 0.0), dict.fromkeys(fills, 0.0), 0
    for record in competition.val:
        image = read_image(record.path, size)
        mask = boxes_mask(list(record.boxes), size, size)
        masked = apply_mask(read_image(record.masked_path, size) if record.masked_path else image, mask)
        for fill in fills:
            start = time.perf_counter()
            filled = fill_holes(masked, mask, fill)
            seconds[fill] += time.perf_counter() - start
            sse[fill] += np.square(filled[mask].astype(np.float64) - image[mask]).sum()
        count += int(mask.sum()) * 3
    n = len(competition.val)
    return {f: (float(np.sqrt(sse[f] / count)) / 255, 1000 * seconds[f] / n) for f in fills}


def training_loader(variant, competition, fill: str | None, workers: int):
    """The training loader `train` builds for `variant`, its hole fill set to `fill` (None: the config's)."""
    from pipeline.train import build_loaders, plan, start_accelerator

    params = {**variant.params, "num_workers": workers}
    if fill is not None:
        params["hole_fill"] = fill
    run = plan(dataclasses.replace(variant, params=params), resume=False, restart=True)  # touches no file
    start_accelerator(run)
    return build_loaders(run, competition)[0]


def loader_rate(loader, batches: int) -> float:
    """images/s over `batches` batches after the first (start-up), across epochs as needed."""
    images, started, epoch = 0, None, 0
    while True:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if started is None:
                started = time.perf_counter()
                continue
            images += batch["target"].shape[0]
            if images >= batches * loader.batch_size:
                return images / (time.perf_counter() - started)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="pix2pix", help="config whose loader is timed (default: pix2pix)")
    parser.add_argument("--workers", type=int, default=1, help="loader processes (the figure is also given per worker)")
    parser.add_argument("--fills", default="none,telea,pyramid,telea-half,onion", help="comma-separated hole fills to compare")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    args = parser.parse_args()
    os.chdir(REPO)  # the configs' data.root (data/sample) is relative to the repository
    # one core, as in a loader worker; and a worker forked while OpenCV's thread pool is busy hangs
    cv2.setNumThreads(1)
    from benchmarks.train_step import ensure_sample
    from pipeline.config import load_variant
    from pipeline.data.competition import load_competition

    variant = load_variant(args.variant)
    ensure_sample(variant.data)
    competition = load_competition(variant.data)
    fills = args.fills.split(",")
    if "hole_fill" not in variant.params and fills != ["none"]:
        print(f"note: {args.variant} has no hole_fill param (its family fills nothing); timing its loader as is")
        fills = [None]

    quality = fill_quality(competition, [f for f in fills if f], variant.data.image_size)
    print(f"hole fills on the sample's {len(competition.val)} validation images (the fill alone as the inpainter):")
    for fill, (rmse, ms) in quality.items():
        print(f"  {fill:14s} RMSE {rmse:.4f}   {ms:6.2f} ms/image")

    rates, batch_size = {}, 0
    for fill in fills:  # one loader at a time: its workers end before the next one's start
        loader = training_loader(variant, competition, fill, args.workers)
        rates[fill], batch_size = [loader_rate(loader, args.batches) for _ in range(args.rounds)], loader.batch_size
        del loader
    print(f"{args.variant}'s training loader, {args.workers} worker(s), batch {batch_size}, "
          f"median of {args.rounds} rounds of {args.batches} batches ({os.cpu_count()} cores here):")
    for fill, values in rates.items():
        rate = statistics.median(values)
        print(f"  hole_fill {fill or variant.params.get('hole_fill', '-'):14s} {rate:7.1f} images/s, "
              f"{rate / max(args.workers, 1):6.1f} per worker")


if __name__ == "__main__":
    main()
