"""The figures behind `nearest` on the offline sample: the copy threshold, and nearest against telea.

    .venv/bin/python benchmarks/nearest_sample.py     # in a scratch working folder: it writes data/

Builds the sample if it is not there (data/sample, its planted copies listed in
data/sample-truth/copies.csv), searches duplicates (or reuses the current file), predicts telea and
nearest on the validation split and the test set, and prints:

1. the known-pixel RMSE of the best match of the planted copies (true copies) against that of the
   test images cut from photos that never fed training (none can have a copy): where the default
   `max_known_rmse` sits between them;
2. every image with a match under the threshold: box RMSE filled from the match against telea's;
3. nearest against telea on the planted copies' boxes, and on the other images: byte-equal PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.config import DataConfig, load_variant  # noqa: E402
from pipeline.data.boxes import box_pixels  # noqa: E402
from pipeline.data.competition import load_competition, read_image  # noqa: E402
from pipeline.data.sample import COPIES_FILE, build_sample  # noqa: E402
from pipeline.duplicates import load_or_find  # noqa: E402
from pipeline.predict import predict_split  # noqa: E402
from pipeline.score import truth_boxes  # noqa: E402


def box_rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(((predicted.astype(float) - truth.astype(float)) ** 2).mean()) / 255)


def main() -> None:
    cfg = DataConfig()
    build_sample(cfg)
    competition = load_competition(cfg)
    copies = pd.read_csv(Path(cfg.truth) / COPIES_FILE)
    planted = dict(zip(copies["test_image"], copies["kind"]))
    result = load_or_find(competition, progress=False)
    nearest = load_variant("nearest")
    threshold = nearest.params["max_known_rmse"]

    # 1. the threshold
    copy_rmse = {qid: result.best("test", qid).rmse for qid in planted}
    other_rmse = {r.image_id: result.best("test", r.image_id).rmse for r in competition.test if r.image_id not in planted}
    print(f"1. known-pixel RMSE of the best match: planted copies {min(copy_rmse.values()):.4f}..{max(copy_rmse.values()):.4f}"
          f" ({', '.join(f'{planted[q]} {v:.4f}' for q, v in copy_rmse.items())}); test images of photos never in "
          f"training: lowest {min(other_rmse.values()):.4f}, median {np.median(list(other_rmse.values())):.4f} "
          f"({len(other_rmse)} images); max_known_rmse {threshold}")

    # 2. + 3. predictions
    runs = {}
    for variant in (nearest, load_variant("telea")):
        runs[variant.name] = {split: predict_split(variant, competition, split, progress=False).folder
                              for split in ("val", "test")}
    print(f"   {nearest.description}")
    print("2. images with a match under the threshold: box RMSE, nearest vs telea")
    equal = unequal = 0
    pooled = {"nearest": [], "telea": []}
    for split in ("val", "test"):
        records = competition.split(split)
        truth = truth_boxes(competition, records)
        for record, true in zip(records, truth):
            best = result.best(split, record.image_id)
            files = {name: runs[name][split] / f"{record.image_id}.png" for name in runs}
            if best.rmse > threshold:
                same = files["nearest"].read_bytes() == files["telea"].read_bytes()
                equal, unequal = equal + same, unequal + (not same)
                continue
            scores = {name: box_rmse(box_pixels(read_image(f), record.boxes), true) for name, f in files.items()}
            tag = planted.get(record.image_id, "natural near-copy" if split == "val" else "?")
            print(f"   {split:4s} {record.image_id:38s} {tag:18s} known {best.rmse:.4f}  box RMSE nearest "
                  f"{scores['nearest']:.4f}  telea {scores['telea']:.4f}")
            if record.image_id in planted:
                for name in pooled:
                    pooled[name].append(box_pixels(read_image(files[name]), record.boxes).astype(float) - true)
    print(f"3. planted copies' boxes, pooled RMSE: nearest "
          f"{np.sqrt(np.mean(np.concatenate(pooled['nearest']) ** 2)) / 255:.4f}, telea "
          f"{np.sqrt(np.mean(np.concatenate(pooled['telea']) ** 2)) / 255:.4f}; images without a match: {equal} "
          f"byte-equal to telea's PNG, {unequal} not")


if __name__ == "__main__":
    main()
