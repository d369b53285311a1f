"""Duplicates: for every test and validation image, the training photos closest to it on its known
pixels (outside its boxes), under the eight flips and rotations, a small affine registration and a
per-channel gain + offset, with the known-pixel RMSE of each match.

    competition (manifest) -> data/predictions/<competition>/duplicates.json   the matches
                           -> submissions/duplicates.html                     the closest pairs

Two stages, so 200 test images against 7,000 training photos take seconds, not hours:

1. coarse: every photo as a small colour thumbnail (`thumb` px square, area-averaged); each query
   (with its known-pixel mask) under the 8 inverse D4 transforms against all thumbnails at once,
   the gain + offset fit per channel solved in closed form from masked sums (9 matrix products);
   the `top_k` closest photos per query go on.
2. exact: each candidate at full size (after the closest, only those with a coarse RMSE under
   `refine_below`), D4-transformed, registered onto the query by OpenCV's ECC
   (affine, on the known pixels, at half resolution), colour-fitted by least squares on the known
   pixels; its RMSE over the known pixels that the warped photo covers (0..1 scale) is the match's.

Known pixels exclude a `margin` around each box: the masked JPEGs ring there. Test images are
searched against every training photo (validation photos included: they are known photos);
validation images against the training photos left after the hold-out, so a validation score never
uses its own photo. The file records the fingerprints of both splits and of the photo pool, and a
reader refuses it when any of them changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.data.boxes import Box, apply_mask, boxes_mask
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, read_image
from pipeline.data.predictions import PREDICTIONS_DIR, competition_key
from pipeline.files import atomic_write
from pipeline.score import split_fingerprint

DUPLICATES_FILE = "duplicates.json"
# a match at or under this known-pixel RMSE is a copy (configs/nearest.yaml: max_known_rmse; the
# docs/duplicates.md gives the measurement behind it)
COPY_RMSE = 0.03
TRANSFORMS = ("identity", "rot90", "rot180", "rot270", "flip", "rot90+flip", "rot180+flip", "rot270+flip")


def d4(image: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the eight flips/rotations (TRANSFORMS[k]) of an (H, W, ...) array."""
    out = np.rot90(image, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def d4_inverse(image: np.ndarray, k: int) -> np.ndarray:
    """Undoes d4(., k): d4_inverse(d4(x, k), k) == x."""
    out = image[:, ::-1] if k >= 4 else image
    return np.ascontiguousarray(np.rot90(out, -(k % 4)))


@dataclass
class Match:
    """One training photo aligned onto a query.

    The aligned photo is `warp_photo(d4(photo, transform), warp)` times `gain` plus `offset`
    (per RGB channel, on 0..255 pixels); rmse is over the query's known pixels, 0..1 scale.
    """

    photo_id: str
    photo_path: str
    transform: int
    warp: list[list[float]]  # 2x3 affine, ECC's convention: query pixel x <- photo pixel W x
    gain: list[float]
    offset: list[float]
    rmse: float
    coarse_rmse: float

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(np.asarray(self.warp)[:, :2]))))

    @property
    def shift(self) -> tuple[float, float]:
        return float(self.warp[0][2]), float(self.warp[1][2])

    def describe(self) -> str:
        dx, dy = self.shift
        return f"{TRANSFORMS[self.transform]}, scale {self.scale:.3f}, shift ({dx:+.1f}, {dy:+.1f})"


@dataclass
class Query:
    """A test or validation image as a model sees it: uint8 (H, W, 3) with its boxes blanked, and
    `known`: bool (H, W), True on the pixels compared (outside the boxes and their margin)."""

    image_id: str
    split: str
    image: np.ndarray
    known: np.ndarray
    exclude: frozenset = frozenset()  # photo ids not to match (a validation image's hold-out pool)


@dataclass
class DuplicatesResult:
    """The matches of every query, best first, and what they were computed on."""

    matches: dict[str, dict[str, list[Match]]]  # split -> image id -> matches, lowest rmse first
    fingerprints: dict[str, str] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def best(self, split: str, image_id: str) -> Match | None:
        found = self.matches.get(split, {}).get(image_id)
        return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# 1. coarse: thumbnails, one masked + colour-fitted distance matrix


def known_mask(boxes: Sequence[Box], size: int, margin: int) -> np.ndarray:
    """bool (size, size): True outside the boxes grown by `margin` pixels."""
    grown = [Box(b.x - margin, b.y - margin, b.w + 2 * margin, b.h + 2 * margin) for b in boxes]
    mask = np.zeros((size, size), bool)
    for box in grown:
        mask[max(box.y, 0) : box.y + box.h, max(box.x, 0) : box.x + box.w] = True
    return ~mask


def thumbnail(image: np.ndarray, thumb: int) -> np.ndarray:
    """float32 (thumb, thumb, 3) on 0..1: the area average of a uint8 RGB image."""
    return cv2.resize(image.astype(np.float32) / 255.0, (thumb, thumb), interpolation=cv2.INTER_AREA)


def thumbnail_mask(known: np.ndarray, thumb: int) -> np.ndarray:
    """float32 (thumb, thumb): 1 where every pixel under the thumbnail pixel is known."""
    return (cv2.resize(known.astype(np.float32), (thumb, thumb), interpolation=cv2.INTER_AREA) > 0.999).astype(np.float32)


def coarse_distances(queries: np.ndarray, masks: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """RMSE (0..1) of each query against each photo after the best per-channel gain (>= 0) and
    offset on the query's masked pixels.

    queries: float32 (Q, P, 3), masks: float32 (Q, P) in {0, 1}, photos: float32 (N, P, 3);
    returns float32 (Q, N). Masked sums as matrix products: sum m q t, sum m t, sum m t^2.
    """
    n = np.maximum(masks.sum(1, keepdims=True), 1.0)
    sse = np.zeros((len(queries), len(photos)), np.float32)
    for c in range(3):
        q, t = queries[..., c], photos[..., c]
        mq = masks * q
        sum_q = mq.sum(1, keepdims=True)
        c_qq = (mq * q).sum(1, keepdims=True) - sum_q**2 / n
        sum_t = masks @ t.T
        c_tt = masks @ (t * t).T - sum_t**2 / n
        c_qt = mq @ t.T - sum_q * sum_t / n
        fitted = np.where((c_qt > 0) & (c_tt > 1e-9), c_qt**2 / np.maximum(c_tt, 1e-9), 0.0)
        sse += np.maximum(c_qq - fitted, 0.0)
    return np.sqrt(sse / (3 * n))


def coarse_candidates(queries: Sequence[Query], photo_thumbs: np.ndarray, photo_ids: Sequence[str],
                      thumb: int, top_k: int, chunk: int = 256) -> list[list[tuple[int, int, float]]]:
    """Per query, its `top_k` closest photos as (photo index, transform, coarse rmse), closest first."""
    photos = photo_thumbs.reshape(len(photo_thumbs), -1, 3)
    index = {pid: i for i, pid in enumerate(photo_ids)}
    # a query transformed by d4_inverse(., k) against photo t is t transformed by d4(., k) against the query
    rows = [(qi, k) for qi in range(len(queries)) for k in range(8)]
    q_thumbs = [thumbnail(q.image, thumb) for q in queries]
    q_masks = [thumbnail_mask(q.known, thumb) for q in queries]
    best = np.full((len(queries), len(photos)), np.inf, np.float32)
    best_k = np.zeros((len(queries), len(photos)), np.int8)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        qs = np.stack([d4_inverse(q_thumbs[qi], k).reshape(-1, 3) for qi, k in part])
        ms = np.stack([d4_inverse(q_masks[qi], k).reshape(-1) for qi, k in part])
        dist = coarse_distances(qs, ms, photos)
        for row, (qi, k) in enumerate(part):
            better = dist[row] < best[qi]
            best[qi][better] = dist[row][better]
            best_k[qi][better] = k
    out = []
    for qi, query in enumerate(queries):
        scores = best[qi].copy()
        scores[[index[p] for p in query.exclude if p in index]] = np.inf
        k = min(top_k, int(np.isfinite(scores).sum()))
        order = np.argsort(scores)[:k]  # argsort, not argpartition: ties broken by photo order
        out.append([(int(i), int(best_k[qi][i]), float(scores[i])) for i in order])
    return out


# ---------------------------------------------------------------------------------------------
# 2. exact: registration and colour fit at full size


def warp_photo(photo: np.ndarray, warp: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """The photo resampled onto the query's pixel grid (ECC's warp: query x <- photo W x)."""
    h, w = photo.shape[:2]
    return cv2.warpAffine(photo, np.asarray(warp, np.float32), (w, h),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)


def register(query: np.ndarray, photo: np.ndarray, known: np.ndarray, max_shift: float,
             max_scale: float) -> np.ndarray | None:
    """The 2x3 affine that best aligns `photo` onto `query` on the known pixels (ECC at half
    resolution), or None when ECC fails or lands outside a small alignment."""
    def half(image: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        return cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)

    mask = (cv2.resize(known.astype(np.float32), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA) > 0.999)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
    try:
        cv2.findTransformECC(half(query), half(photo), warp, cv2.MOTION_AFFINE, criteria,
                             mask.astype(np.uint8), 3)
    except cv2.error:  # no convergence: not a registrable pair
        return None
    linear = warp[:, :2].astype(np.float64)
    # half-resolution pixel i is centred on full-resolution 2i + 0.5
    full = np.hstack([linear, (2 * warp[:, 2] + 0.5 * (np.eye(2) - linear) @ np.ones(2))[:, None]])
    scales = np.linalg.svd(linear, compute_uv=False)
    if np.abs(full[:, 2]).max() > max_shift or scales.max() > max_scale or scales.min() < 1 / max_scale:
        return None
    return full


def colour_fit(query: np.ndarray, aligned: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-channel least-squares gain (>= 0) and offset mapping `aligned` onto `query` on
    `pixels` (bool HxW); returns (gain (3,), offset (3,), rmse 0..1 after the fit)."""
    w = pixels.reshape(-1).astype(np.float64)
    n = w.sum()
    if n == 0:
        return np.ones(3), np.zeros(3), float("inf")
    q = query.reshape(-1, 3).astype(np.float64)
    t = aligned.reshape(-1, 3).astype(np.float64)
    # masked moments as dot products: one pass each, no copies of the selected pixels
    mean_q, mean_t = (w @ q) / n, (w @ t) / n
    c_qq = (w @ (q * q)) / n - mean_q**2
    c_tt = (w @ (t * t)) / n - mean_t**2
    c_qt = (w @ (q * t)) / n - mean_q * mean_t
    gain = np.where(c_tt > 1e-9, np.maximum(c_qt / np.maximum(c_tt, 1e-9), 0.0), 0.0)
    offset = mean_q - gain * mean_t
    sse = np.maximum(c_qq - gain * c_qt, 0.0)  # the residual of the least-squares fit, per channel
    return gain, offset, float(np.sqrt(sse.mean()) / 255.0)


def exact_match(query: Query, photo: np.ndarray, transform: int, max_shift: float,
                max_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(warp, gain, offset, rmse) of the photo under `transform` against the query: the better of
    no registration and ECC's, each colour-fitted on the known pixels the warped photo covers."""
    turned = d4(photo, transform)
    identity = np.eye(2, 3)
    candidates = [identity]
    warp = register(query.image, turned, query.known, max_shift, max_scale)
    if warp is not None:
        candidates.append(warp)
    best = None
    for w in candidates:
        aligned = warp_photo(turned, w)
        inside = warp_photo(np.ones(turned.shape[:2], np.float32), w, cv2.BORDER_CONSTANT) > 0.999
        gain, offset, rmse = colour_fit(query.image, aligned, query.known & inside)
        if best is None or rmse < best[3]:
            best = (w, gain, offset, rmse)
    return best


def aligned_photo(match: Match, size: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB: the matched photo transformed, warped and colour-fitted as found
    (pixels the warp brings from beyond the photo's edge repeat the edge: on the sample's copies
    that fills boxes better than giving those strips to the fallback, 0.0198 against 0.0202)."""
    photo = read_image(Path(match.photo_path), size)
    aligned = warp_photo(d4(photo, match.transform), np.asarray(match.warp)).astype(np.float64)
    fitted = aligned * np.asarray(match.gain) + np.asarray(match.offset)
    return np.clip(np.round(fitted), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The search over a competition


@dataclass
class SearchParams:
    thumb: int = 16  # coarse thumbnail side, pixels
    top_k: int = 4  # photos per query that get the exact check
    margin: int = 8  # pixels around each box left out of the comparison (JPEG ringing)
    max_shift: float = 16.0  # largest registration shift accepted, pixels
    max_scale: float = 1.15  # largest registration scale change accepted (and its inverse)
    # candidates after the closest get the exact check only when their coarse RMSE is under this
    # (a third of the time): copies within a few pixels and percent score 0.0005..0.03 coarse on
    # the sample; crops 10 px and 6% apart can score 0.13 coarse, 0.024 exact, and are then missed
    refine_below: float = 0.1


def search(queries: Sequence[Query], photo_ids: Sequence[str], load_photo: Callable[[int], np.ndarray],
           params: SearchParams = SearchParams(), progress: bool = True,
           photo_paths: Sequence[str] | None = None, timings: dict | None = None) -> dict[str, list[Match]]:
    """{query id: its top_k matches, lowest rmse first}; photos are read through `load_photo(i)`.
    `timings`, when given, receives the seconds of each stage (thumbnails, coarse, exact)."""
    timings = {} if timings is None else timings
    start = time.perf_counter()
    thumbs = np.stack([thumbnail(load_photo(i), params.thumb)
                       for i in tqdm(range(len(photo_ids)), desc="thumbnails", unit="photo", disable=not progress)])
    timings["thumbnails"] = time.perf_counter() - start
    start = time.perf_counter()
    candidates = coarse_candidates(queries, thumbs, photo_ids, params.thumb, params.top_k)
    timings["coarse"] = time.perf_counter() - start
    start = time.perf_counter()
    out: dict[str, list[Match]] = {}
    for query, found in zip(tqdm(queries, desc="exact check", unit="img", disable=not progress), candidates):
        matches = []
        for rank, (index, transform, coarse) in enumerate(found):
            if rank and coarse > params.refine_below:
                break
            warp, gain, offset, rmse = exact_match(query, load_photo(index), transform, params.max_shift,
                                                   params.max_scale)
            matches.append(Match(photo_ids[index], photo_paths[index] if photo_paths else "", transform,
                                 np.asarray(warp, float).tolist(), gain.tolist(), offset.tolist(), rmse, coarse))
        out[query.image_id] = sorted(matches, key=lambda m: m.rmse)
    timings["exact"] = time.perf_counter() - start
    return out


def photo_pool(competition: Competition) -> list[ImageRecord]:
    """The photos matches come from: every unmasked training photo (the validation hold-out included)."""
    return list(competition.train) + list(competition.val)


def queries_of(competition: Competition, margin: int) -> list[Query]:
    """The validation and test images as their models see them (boxes blanked)."""
    size = competition.config.image_size
    held_out = frozenset(r.image_id for r in competition.val)
    out = []
    for record in list(competition.val) + list(competition.test):
        image = apply_mask(read_image(record.input_path, size), boxes_mask(record.boxes, size, size))
        out.append(Query(record.image_id, record.split, image, known_mask(record.boxes, size, margin),
                         held_out if record.split == "val" else frozenset()))
    return out


def fingerprints(competition: Competition) -> dict[str, str]:
    """What the matches depend on: the val and test splits (pipeline.score's fingerprints) and
    the photo pool (each photo's id, path, size, modification time)."""
    pool = []
    for record in photo_pool(competition):
        info = record.path.stat()
        pool.append([record.image_id, str(record.path.resolve()), info.st_size, info.st_mtime_ns])
    out = {"pool": hashlib.sha256(json.dumps(pool).encode()).hexdigest()[:16]}
    for split in ("val", "test"):
        out[split] = split_fingerprint(competition, split) if competition.split(split) else ""
    return out


def find_duplicates(competition: Competition, params: SearchParams = SearchParams(),
                    progress: bool = True) -> DuplicatesResult:
    """Search every validation and test image of `competition` against its photo pool."""
    start = time.perf_counter()
    size = competition.config.image_size
    pool = photo_pool(competition)
    if not pool:
        raise CompetitionError(f"{competition.root}: no training photos to search")
    queries = queries_of(competition, params.margin)
    found = search(queries, [r.image_id for r in pool], lambda i: read_image(pool[i].path, size), params,
                   progress, [str(r.path.resolve()) for r in pool])
    matches: dict[str, dict[str, list[Match]]] = {"val": {}, "test": {}}
    for query in queries:
        matches[query.split][query.image_id] = found[query.image_id]
    return DuplicatesResult(matches, fingerprints(competition), asdict(params), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# The file


def duplicates_path(competition: Competition, root: Path | None = None) -> Path:
    """data/predictions/<competition>/duplicates.json (the predictions' folder of that data folder)."""
    return Path(root or PREDICTIONS_DIR) / competition_key(competition) / DUPLICATES_FILE


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save(result: DuplicatesResult, competition: Competition, root: Path | None = None) -> Path:
    path = duplicates_path(competition, root)
    _write_atomic(path, json.dumps({
        "data": str(Path(competition.root).resolve()), "fingerprints": result.fingerprints,
        "params": result.params, "seconds": result.seconds,
        "matches": {split: {qid: [asdict(m) for m in ms] for qid, ms in by_id.items()}
                    for split, by_id in result.matches.items()},
    }, indent=1))
    return path


def load(competition: Competition, root: Path | None = None) -> DuplicatesResult | None:
    """The saved matches of `competition`, or None when there are none or they are stale (the
    data folder's val/test images, boxes or training photos changed since, or the search's settings)."""
    path = duplicates_path(competition, root)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprints") != fingerprints(competition) or saved.get("params") != asdict(SearchParams()):
            return None
        matches = {split: {qid: [Match(**m) for m in ms] for qid, ms in by_id.items()}
                   for split, by_id in saved["matches"].items()}
    except (ValueError, KeyError, TypeError):  # a damaged file is recomputed, not trusted
        return None
    return DuplicatesResult(matches, saved["fingerprints"], saved.get("params", {}), saved.get("seconds", 0.0))


def load_or_find(competition: Competition, root: Path | None = None, progress: bool = True) -> DuplicatesResult:
    """The saved matches when they are current, else a new search (saved)."""
    result = load(competition, root)
    if result is None:
        result = find_duplicates(competition, progress=progress)
        save(result, competition, root)
    return result


# ---------------------------------------------------------------------------------------------
# The table and the page


def table(result: DuplicatesResult, max_rmse: float = COPY_RMSE, rows: int | None = None) -> str:
    """Plain text: each query's best match, lowest known-pixel RMSE first."""
    best = sorted(((split, qid, ms[0]) for split, by_id in result.matches.items() for qid, ms in by_id.items() if ms),
                  key=lambda t: t[2].rmse)
    shown = best if rows is None else best[:rows]
    width = max([len(q) for _, q, _ in shown] + [5])
    pwidth = max([len(m.photo_id) for _, _, m in shown] + [5])
    lines = [f"{'split':5s}  {'image':{width}s}  {'photo':{pwidth}s}  {'known RMSE':>10s}  copy  alignment"]
    for split, qid, m in shown:
        lines.append(f"{split:5s}  {qid:{width}s}  {m.photo_id:{pwidth}s}  {m.rmse:10.4f}  "
                     f"{'yes ' if m.rmse <= max_rmse else 'no  '}  {m.describe()}")
    copies = sum(m.rmse <= max_rmse for _, _, m in best)
    lines.append(f"{copies} of {len(best)} images have a match at or under known-pixel RMSE {max_rmse}"
                 + (f" ({len(best) - len(shown)} more not shown)" if len(shown) < len(best) else ""))
    return "\n".join(lines)


def _png_uri(image: np.ndarray, side: int = 160) -> str:
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    # JPEG: the page is for the eye, and 160 PNGs would make it megabytes
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def write_page(result: DuplicatesResult, competition: Competition, path: Path, max_rmse: float = COPY_RMSE,
               pairs: int = 40) -> Path:
    """An HTML page (images inline) with the `pairs` closest query/photo pairs side by side,
    written to a temporary file and renamed into place."""
    import jinja2

    size = competition.config.image_size
    queries = {q.image_id: q for q in queries_of(competition, 0)}
    best = sorted(((split, qid, ms[0]) for split, by_id in result.matches.items() for qid, ms in by_id.items() if ms),
                  key=lambda t: t[2].rmse)[:pairs]
    rows = []
    for split, qid, m in best:
        query = queries[qid].image
        aligned = aligned_photo(m, size)
        filled = np.where(queries[qid].known[..., None], query, aligned)
        rows.append({"split": split, "image": qid, "photo": m.photo_id, "rmse": f"{m.rmse:.4f}",
                     "copy": m.rmse <= max_rmse, "alignment": m.describe(),
                     "colour": ", ".join(f"{g:.2f}x{o:+.0f}" for g, o in zip(m.gain, m.offset)),
                     "query": _png_uri(query), "aligned": _png_uri(aligned), "filled": _png_uri(filled),
                     "stored": _png_uri(read_image(Path(m.photo_path), size))})
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True)
    html = env.get_template("duplicates.html.j2").render(
        rows=rows, data=str(competition.root), max_rmse=max_rmse, total=sum(len(v) for v in result.matches.values()),
        copies=sum(1 for by_id in result.matches.values() for ms in by_id.values() if ms and ms[0].rmse <= max_rmse),
        seconds=f"{result.seconds:.1f}")
    _write_atomic(Path(path), html)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The step


@dataclass
class DuplicatesStep:
    result: DuplicatesResult
    file: Path
    html: Path
    table: str
    searched: bool


def default_max_rmse() -> float:
    """configs/nearest.yaml's max_known_rmse (what the nearest variant counts as a copy), else COPY_RMSE."""
    from pipeline.config import ConfigError, load_variant

    try:
        return float(load_variant("nearest").params.get("max_known_rmse", COPY_RMSE))
    except (ConfigError, OSError, TypeError, ValueError):
        return COPY_RMSE


def duplicates_step(competition: Competition, html: Path, max_rmse: float | None = None, rows: int = 30,
                    pairs: int = 40, again: bool = False, root: Path | None = None) -> DuplicatesStep:
    """Search (or reuse current saved matches), save them, write the page; the table to print."""
    max_rmse = default_max_rmse() if max_rmse is None else max_rmse
    result = None if again else load(competition, root)
    searched = result is None
    if searched:
        result = find_duplicates(competition)
        save(result, competition, root)
    page = write_page(result, competition, html, max_rmse, pairs)
    return DuplicatesStep(result, duplicates_path(competition, root), page, table(result, max_rmse, rows), searched)
