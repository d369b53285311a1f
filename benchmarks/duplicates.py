"""The duplicates search at the real competition's size, against a brute-force search in the same run.

    .venv/bin/python benchmarks/duplicates.py [--photos 7000] [--queries 200] [--copies 20]

Synthetic data, built in memory: `--photos` training photos (smooth random colour fields with
detail at every scale, stored as JPEG bytes, decoded on each read as files would be) and
`--queries` test images, `--copies` of them planted copies of random photos (flipped or rotated,
re-encoded, resized a few percent, shifted and recoloured), the others new photos. Every query
gets two 75x75 boxes blanked and a JPEG round trip at quality 75, as the competition's masked test
images. What is timed is `pipeline.duplicates.search`: thumbnails of every photo, the coarse
search, the exact check of the top candidates.

The brute-force reference is the exact check (registration + colour fit) of every photo under
every flip/rotation, with no coarse stage. It is measured on a subset (`--brute-queries` queries
against `--brute-photos` photos, a planted copy's source among them) and extrapolated per
(query, photo, transform) to the full size; the fast search on the same subset must pick the same
best photo and transform. With fewer photos than 7,000 the fast search's photo-dependent stages are
extrapolated linearly too, and said so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.data.boxes import apply_mask, boxes_mask, random_boxes  # noqa: E402
from pipeline.data.sample import jpeg_round_trip  # noqa: E402
from pipeline.duplicates import COPY_RMSE, Query, SearchParams, d4, exact_match, known_mask, search  # noqa: E402

SIZE, BOX = 256, 75
KINDS = ("flip", "rot90", "jpeg", "resize", "shift-colour")


def synthetic_photo(seed: int) -> np.ndarray:
    """uint8 (256, 256, 3): random colour noise at 4..128 px scales, amplitude falling with frequency."""
    rng = np.random.default_rng(seed)
    out = np.zeros((SIZE, SIZE, 3), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.7), (16, 0.45), (32, 0.3), (64, 0.2), (128, 0.12)):
        noise = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        noise[..., 1:] = 0.6 * noise[..., :1] + 0.4 * noise[..., 1:]  # colours correlate, as in photos
        out += weight * cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    out = (out - out.mean()) / (out.std() + 1e-6)
    return np.clip(128 + 45 * out + rng.uniform(-30, 30, 3), 0, 255).astype(np.uint8)


def planted(photo: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A copy of `photo` and the D4 transform that maps the photo onto it."""
    k = int(rng.integers(0, 8))
    image = d4(photo, k)
    if kind == "jpeg":
        image = jpeg_round_trip(image, 40)
    elif kind == "resize":
        grown = int(SIZE * rng.uniform(1.02, 1.05))
        big = cv2.resize(image, (grown, grown), interpolation=cv2.INTER_CUBIC)
        off = (grown - SIZE) // 2
        image = big[off : off + SIZE, off : off + SIZE]
    elif kind == "shift-colour":
        big = cv2.resize(image, (262, 262), interpolation=cv2.INTER_CUBIC)
        dy, dx = rng.integers(0, 7, 2)
        image = np.clip(big[dy : dy + SIZE, dx : dx + SIZE] * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15), 0, 255)
    return np.ascontiguousarray(image).astype(np.uint8), k


def as_query(image_id: str, image: np.ndarray, rng: np.random.Generator) -> Query:
    """The competition's masked test image: boxes blacked out, JPEG at quality 75, boxes blanked again."""
    boxes = random_boxes(rng, SIZE, BOX, 2)
    mask = boxes_mask(boxes, SIZE, SIZE)
    masked = apply_mask(jpeg_round_trip(apply_mask(image, mask), 75), mask)
    return Query(image_id, "test", masked, known_mask(boxes, SIZE, SearchParams().margin))


def build(photos: int, queries: int, copies: int, seed: int = 0):
    """(JPEG bytes of the photos, queries, {query id: (photo index, transform)} of the copies)."""
    encoded = []
    for i in range(photos):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(synthetic_photo(seed * 1_000_000 + i), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        encoded.append(data)
    rng = np.random.default_rng(seed + 1)
    sources = rng.choice(photos, size=copies, replace=False)
    out, truth = [], {}
    for q in range(queries):
        qid = f"Test ({q}).jpeg"
        if q < copies:
            kind = KINDS[q % len(KINDS)]
            image, k = planted(decode(encoded[sources[q]]), kind, rng)
            truth[qid] = (int(sources[q]), k, kind)
        else:
            image = synthetic_photo(seed * 1_000_000 + photos + q)
        out.append(as_query(qid, image, rng))
    return encoded, out, truth


def decode(data: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def brute_force(queries, encoded, photo_ids, params: SearchParams):
    """Every photo under every transform, exact check; {query id: (photo index, transform, rmse)}."""
    best = {}
    for query in queries:
        for i in range(len(photo_ids)):
            photo = decode(encoded[i])
            for k in range(8):
                rmse = exact_match(query, photo, k, params.max_shift, params.max_scale)[3]
                if query.image_id not in best or rmse < best[query.image_id][2]:
                    best[query.image_id] = (i, k, rmse)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=7000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--brute-queries", type=int, default=2)
    parser.add_argument("--brute-photos", type=int, default=40)
    args = parser.parse_args()
    params = SearchParams()

    # 1. data
    start = time.perf_counter()
    encoded, queries, truth = build(args.photos, args.queries, args.copies)
    ids = [f"Train ({i}).jpg" for i in range(args.photos)]
    print(f"built {args.photos} photos and {args.queries} queries ({args.copies} planted copies) "
          f"in {time.perf_counter() - start:.1f} s (not timed below); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")

    # 2. the search
    timings: dict = {}
    start = time.perf_counter()
    found = search(queries, ids, lambda i: decode(encoded[i]), params, progress=False, timings=timings)
    fast = time.perf_counter() - start
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    print(f"fast search: {fast:.1f} s for {args.queries} queries x {args.photos} photos ({stages})")
    if args.photos != 7000 or args.queries != 200:
        scaled = (timings["thumbnails"] * 7000 / args.photos + timings["coarse"] * 7000 * 200 / (args.photos * args.queries)
                  + timings["exact"] * 200 / args.queries)
        print(f"  extrapolated to 200 x 7000 (thumbnails linear in photos, coarse in photos x queries, exact in "
              f"queries): {scaled:.0f} s")
    hits = sum(1 for qid, (i, k, _) in truth.items()
               if found[qid][0].photo_id == ids[i] and found[qid][0].transform == k and found[qid][0].rmse <= COPY_RMSE)
    false = [qid for qid, ms in found.items() if qid not in truth and ms and ms[0].rmse <= COPY_RMSE]
    worst_copy = max(found[qid][0].rmse for qid in truth) if truth else float("nan")
    best_other = min(ms[0].rmse for qid, ms in found.items() if qid not in truth)
    print(f"  planted copies found (right photo and transform, known RMSE <= {COPY_RMSE}): {hits} of {len(truth)}; "
          f"non-copies under it: {len(false)}; worst copy {worst_copy:.4f}, best non-copy {best_other:.4f}")

    # 3. brute force on a subset, the fast search on the same subset
    copy_id = next(iter(truth))
    subset_queries = [q for q in queries if q.image_id == copy_id] + [q for q in queries if q.image_id not in truth]
    subset_queries = subset_queries[: args.brute_queries]
    source = truth[copy_id][0]
    subset = [source] + [i for i in range(args.photos) if i != source][: args.brute_photos - 1]
    sub_encoded, sub_ids = [encoded[i] for i in subset], [ids[i] for i in subset]
    start = time.perf_counter()
    brute = brute_force(subset_queries, sub_encoded, sub_ids, params)
    brute_seconds = time.perf_counter() - start
    per_check = brute_seconds / (len(subset_queries) * len(subset) * 8)
    full = per_check * 200 * 7000 * 8
    print(f"brute force: {brute_seconds:.1f} s for {len(subset_queries)} queries x {len(subset)} photos x 8 transforms "
          f"({per_check * 1000:.1f} ms per check); extrapolated to 200 x 7000 x 8: {full / 3600:.0f} h, "
          f"{full / max(fast, 1e-9) if args.photos == 7000 and args.queries == 200 else full / max(scaled, 1e-9):.0f}x "
          f"the fast search")
    sub_found = search(subset_queries, sub_ids, lambda i: decode(sub_encoded[i]), params, progress=False)
    agree = sum(1 for q in subset_queries
                if (sub_found[q.image_id][0].photo_id, sub_found[q.image_id][0].transform)
                == (sub_ids[brute[q.image_id][0]], brute[q.image_id][1])
                or abs(sub_found[q.image_id][0].rmse - brute[q.image_id][2]) < 1e-3)
    print(f"  on that subset the fast search picks the brute force's best match (or one as close) for {agree} of "
          f"{len(subset_queries)} queries; brute best RMSE "
          + ", ".join(f"{brute[q.image_id][2]:.4f}" for q in subset_queries) + "; fast "
          + ", ".join(f"{sub_found[q.image_id][0].rmse:.4f}" for q in subset_queries))


if __name__ == "__main__":
    main()
