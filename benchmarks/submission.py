"""Submission writing + validation throughput and peak memory, against a plain pandas reference.

    .venv/bin/python benchmarks/submission.py [--images 1000]

Each measurement runs in a fresh process so its peak RSS is its own. Predictions come from memory
(a deterministic random image per test image), so what is timed is the CSV path alone: ids, values,
the temporary file, the streaming validation and the rename. Targets (issue 2): at least 5 million
values/s for write + validate together, peak memory under 500 MB and flat in the number of images.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from pipeline.config import data_config  # noqa: E402
from pipeline.data.boxes import random_boxes  # noqa: E402
from pipeline.data.competition import Competition, ImageRecord  # noqa: E402


def fake_competition(images: int, folder: Path) -> Competition:
    cfg = data_config({"root": folder, "truth": None})
    rng = np.random.default_rng(0)
    test = [
        ImageRecord(f"img_{i:05d}", folder / f"img_{i:05d}.png", None, "test",
                    tuple(random_boxes(rng, cfg.image_size, cfg.box_size, cfg.boxes_per_image)))
        for i in range(images)
    ]
    return Competition(folder, cfg, [], [], test, folder / "bboxes.csv")


def prediction(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (256, 256, 3), dtype=np.uint8)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(images: int, queue) -> None:
    from pipeline.submission import validate_submission, write_submission

    with tempfile.TemporaryDirectory() as tmp:
        competition = fake_competition(images, Path(tmp))
        baseline = peak_rss_mb()
        start = time.perf_counter()
        result = write_submission(Path(tmp) / "s.csv", competition, prediction, progress=False)
        both = time.perf_counter() - start
        start = time.perf_counter()
        validate_submission(result.path, competition, progress=False)
        validate = time.perf_counter() - start
        queue.put({"values": result.rows, "write_validate_s": both, "validate_s": validate,
                   "size_mb": result.path.stat().st_size / 2**20, "baseline_mb": baseline,
                   "peak_mb": peak_rss_mb()})


def reference(images: int, queue) -> None:
    """The obvious pandas way: every id and value in one DataFrame, then to_csv."""
    import pandas as pd

    from pipeline.submission import box_values

    with tempfile.TemporaryDirectory() as tmp:
        competition = fake_competition(images, Path(tmp))
        baseline = peak_rss_mb()
        start = time.perf_counter()
        ids, values = [], []
        for i, record in enumerate(competition.test):
            for b, box in enumerate(record.boxes):
                ids += [f"{record.image_id}_{b}_{r}_{c}_{ch}" for r in range(box.h) for c in range(box.w) for ch in range(3)]
            values.append(box_values(prediction(i), record))
        table = pd.DataFrame({"Id": ids, "Predicted": np.concatenate(values)})
        table.to_csv(Path(tmp) / "ref.csv", index=False)
        written = time.perf_counter() - start
        queue.put({"values": len(table), "write_s": written, "baseline_mb": baseline, "peak_mb": peak_rss_mb()})


def measure(target, images: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(images, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--reference-images", type=int, default=200, help="pandas reference size")
    args = parser.parse_args()

    small = measure(ours, max(args.images // 4, 1))
    big = measure(ours, args.images)
    ref = measure(reference, args.reference_images)
    rate = big["values"] / big["write_validate_s"]
    ref_rate = ref["values"] / ref["write_s"]
    print(f"test images                      {args.images // 4:>10d} {args.images:>10d}")
    print(f"values                           {small['values']:>10,d} {big['values']:>10,d}  ({big['size_mb']:.0f} MB CSV)")
    print(f"write + validate, values/s       {small['values'] / small['write_validate_s']:>10,.0f} {rate:>10,.0f}")
    print(f"validate alone, values/s         {small['values'] / small['validate_s']:>10,.0f} {big['values'] / big['validate_s']:>10,.0f}")
    print(f"peak RSS, MB (process baseline)  {small['peak_mb']:>10.0f} {big['peak_mb']:>10.0f}  "
          f"(baseline {big['baseline_mb']:.0f})")
    print(f"pandas reference ({args.reference_images} images): write alone {ref_rate:,.0f} values/s, "
          f"peak {ref['peak_mb']:.0f} MB (baseline {ref['baseline_mb']:.0f})")
    print(f"ratio ours (write+validate) / reference (write only): {rate / ref_rate:.1f}x")
    print(f"targets: >= 5,000,000 values/s: {'met' if rate >= 5e6 else 'NOT met'}; "
          f"peak < 500 MB: {'met' if big['peak_mb'] < 500 else 'NOT met'}; "
          f"peak growth {args.images // 4} -> {args.images} images: {big['peak_mb'] - small['peak_mb']:+.0f} MB")


if __name__ == "__main__":
    main()
