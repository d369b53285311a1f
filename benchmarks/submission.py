"""Submission writing + validation throughput and peak memory, against a plain pandas reference.

    .venv/bin/python benchmarks/submission.py [--images 200] [--format photo-reconstruction]

Each measurement runs in a fresh process so its peak RSS is its own. Predictions come from memory
(a deterministic random image per test image), so what is timed is the CSV path alone: ids, values,
the temporary file, the streaming validation and the rename. The default is the real competition:
200 test images named like `Tiger (1024).jpeg`, its format (ids in image coordinates, values
pixel/255 with four decimals): 6,750,000 values. Targets: at least 5 million values/s for write +
validate together, peak memory under 500 MB and flat in the number of images.
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


FORMAT = "photo-reconstruction"
CLASSES = ("Cat", "Dog", "Elephant", "Tiger")


def fake_competition(images: int, folder: Path) -> Competition:
    cfg = data_config({"root": folder, "truth": None, "format": FORMAT})
    rng = np.random.default_rng(0)
    names = [f"{CLASSES[i % 4]}-Train ({1000 + i}).{('jpeg', 'jpg', 'png')[i % 3]}" for i in range(images)]
    test = [
        ImageRecord(name, folder / name, None, "test",
                    tuple(random_boxes(rng, cfg.image_size, cfg.box_size, cfg.boxes_per_image)))
        for name in names
    ]
    return Competition(folder, cfg, "photo-reconstruction", [], [], test, folder / "masked_info.csv", folder)


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
    """The obvious pandas way: every id and value in one DataFrame, then to_csv (same format)."""
    import pandas as pd

    from pipeline.data.boxes import box_pixels

    with tempfile.TemporaryDirectory() as tmp:
        competition = fake_competition(images, Path(tmp))
        baseline = peak_rss_mb()
        start = time.perf_counter()
        ids, values = [], []
        for i, record in enumerate(competition.test):
            for b, box in enumerate(record.boxes, start=1):
                ids += [f"{record.image_id}_box{b}_{r}_{c}_{ch}" for r in range(box.y, box.y + box.h)
                        for c in range(box.x, box.x + box.w) for ch in range(3)]
            values.append(box_pixels(prediction(i), record.boxes).reshape(-1) / 255)
        table = pd.DataFrame({"filename_box_pixel": ids, "Value": np.concatenate(values)})
        table.to_csv(Path(tmp) / "ref.csv", index=False, float_format="%.4f")
        written = time.perf_counter() - start
        queue.put({"values": len(table), "write_s": written, "baseline_mb": baseline, "peak_mb": peak_rss_mb()})


def run(target, images: int, fmt: str, queue) -> None:
    global FORMAT
    FORMAT = fmt
    target(images, queue)


def measure(target, images: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=run, args=(target, images, FORMAT, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="test images (the competition has 200)")
    parser.add_argument("--reference-images", type=int, default=100, help="pandas reference size")
    parser.add_argument("--format", default="photo-reconstruction", help="submission format preset (or default)")
    args = parser.parse_args()
    global FORMAT
    FORMAT = args.format

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
