"""One inpainting request, whatever asks for it (the page or the HTTP route): read the photo and
its mask, find the variants that can run, bring the photo to a variant's input size and back, and
paste the predicted pixels into the mask at the photo's own size.

Images in: any size up to `max_pixels`, any mode PIL reads. An uploaded file's EXIF orientation is
applied (the photo is used as a browser shows it, and the mask is drawn on that), competition
images are read as stored, by the pipeline's own reader, and fed as the pipeline's predictions feed
them (a validation image's masked JPEG copy: `competition_input`), so that a variant's box RMSE on
the page is the pipeline's for that image. Transparent pixels are flattened onto
white for the model; the result keeps the photo's alpha. Grayscale photos come back grayscale,
every other photo RGB (RGBA when it had transparency); 16-bit photos come back 8-bit.
"""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DataConfig, PipelineError, VariantConfig, load_variant, read_yaml
from pipeline.data.boxes import Box, box_pixels, boxes_mask
from pipeline.data.competition import CompetitionError, load_competition, read_image
from pipeline.inpainters.base import METHODS, InpaintBatch, Inpainter, build_inpainter, composite, preflight
from pipeline.score import rmse, truth_path

MAX_PIXELS = 4096 * 4096  # 16.8 megapixels: larger photos are refused (serve --max-pixels)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a file over this is refused before it is decoded
# methods that work at any size; every other method is given data.image_size squares
ANY_SIZE_METHODS = ("mean", "telea", "navier-stokes")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class RequestError(PipelineError, ValueError):
    """A request the server refuses; `status` is the HTTP status, the message says what to fix."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- the photo and its mask ------------------------------------------------------------------

@dataclass
class Photo:
    """rgb: uint8 (H, W, 3), what the model sees (transparent pixels flattened onto white);
    alpha: uint8 (H, W) when the photo has transparency, else None; stored: the photo's own RGB
    under that transparency (None without it); gray: True when the photo was single-channel."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    stored: np.ndarray | None = None
    gray: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.rgb.shape[1], self.rgb.shape[0]

    def with_pixels(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> Image.Image:
        """`rgb` (uint8 H, W, 3: this photo with the `mask` pixels filled) in the photo's mode: L
        for gray, RGBA with its alpha (and its own colours outside the mask), else RGB."""
        if self.stored is not None and mask is not None:
            rgb = np.where(mask[..., None], rgb, self.stored)
        if self.gray:
            # R = G = B = v converts back to exactly v (PIL's integer luma weights sum to 1)
            image = Image.fromarray(rgb, "RGB").convert("L")
            return Image.merge("LA", (image, Image.fromarray(self.alpha))) if self.alpha is not None else image
        if self.alpha is not None:
            return Image.fromarray(np.dstack([rgb, self.alpha]), "RGBA")
        return Image.fromarray(rgb, "RGB")


def check_pixels(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    if width * height > max_pixels:
        raise RequestError(
            f"{what}: {width}x{height} is {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:.1f} megapixels: downscale it first", status=413)


def open_image(data: bytes, what: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an uploaded file (EXIF orientation applied); RequestError when it is not an image
    (400) or is too large (413). The size is checked from the header, before decoding."""
    if not data:
        raise RequestError(f"{what}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(f"{what}: {len(data) / 2**20:.0f} MiB; the limit is {MAX_UPLOAD_BYTES // 2**20} MiB",
                           status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_pixels(*image.size, max_pixels, what)
            image.load()
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(f"{what}: too large to decode ({exc}); the limit is {max_pixels / 1e6:.1f} megapixels",
                           status=413) from exc
    except UnidentifiedImageError as exc:
        raise RequestError(f"{what}: not an image (PNG, JPEG, WebP, BMP, TIFF, ... that Pillow reads)") from exc
    except Exception as exc:  # truncated or corrupt files raise OSError, SyntaxError, ValueError...
        raise RequestError(f"{what}: cannot be decoded ({type(exc).__name__}: {exc})") from exc
    return ImageOps.exif_transpose(image)


def photo_from_image(image: Image.Image) -> Photo:
    """Any PIL image -> Photo: uint8 RGB for the model, the alpha and grayness to restore."""
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit grayscale: keep the top 8 bits
        values = np.asarray(image, dtype=np.uint16)
        image = Image.fromarray((values >> 8).astype(np.uint8), "L")
    elif mode in ("I", "F"):  # 32-bit: PIL clips to 0..255, as most viewers do
        image = image.convert("L")
    gray = mode in GRAY_MODES or (mode == "P" and image.palette is not None and image.palette.mode == "L")
    alpha = stored = None
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            alpha, stored = rgba[..., 3].copy(), rgba[..., :3].copy()
        rgb = rgba[..., :3]
        if alpha is not None:
            weight = alpha[..., None].astype(np.float32) / 255.0
            # flattened onto white for the model: the colour under transparent pixels is arbitrary
            rgb = np.round(rgb * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    else:
        rgb = np.asarray(image.convert("RGB"))
    if gray:
        rgb = np.repeat(np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))[..., None], 3, axis=2)
        stored = None if stored is None else np.repeat(
            np.asarray(Image.fromarray(stored).convert("L"))[..., None], 3, axis=2)
    return Photo(np.ascontiguousarray(rgb), alpha, stored, gray)


def mask_from_image(image: Image.Image, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """bool (H, W), True where pixels are to be filled: a mask image with transparent pixels
    counts its opaque ones (a brush layer); otherwise pixels brighter than mid-grey (white on
    black). `size` (width, height) is the photo's; the mask must have it."""
    if image.size != tuple(size):
        raise RequestError(f"{what}: {image.size[0]}x{image.size[1]}, but the image is {size[0]}x{size[1]}; "
                           "draw the mask on the image itself")
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha > 0
    return np.asarray(image.convert("L")) > 127


# how to mark the pixels to fill, in the words of the HTTP route's mask file (the page has its own)
MASK_FILE_HOW = "white on black, or opaque strokes on a transparent layer"


def require_mask(mask: np.ndarray, how: str = MASK_FILE_HOW) -> np.ndarray:
    """`mask` (bool H, W) when it leaves something to fill and something to fill from; else
    RequestError 400, saying `how` to mark the pixels to fill."""
    if not mask.any():
        raise RequestError(f"the mask is empty: paint over the pixels to fill ({how}), or place boxes")
    if mask.all():
        raise RequestError(f"the mask covers the whole image: no pixel is left to fill from; paint only "
                           f"the pixels to fill ({how}), or place boxes")
    return mask


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """The bounding box of each connected region of `mask` (for methods that work per box)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [Box(int(x), int(y), int(w), int(h)) for x, y, w, h, _ in stats[1:count]]


def place_boxes(width: int, height: int, box_size: int, count: int = 0, corners: str = "",
                seed: int = 0) -> list[Box]:
    """Boxes of box_size at `corners` ("x,y; x,y": top-left corners), or `count` non-overlapping
    ones at random (seeded) positions; RequestError when they do not fit."""
    if box_size > min(width, height):
        raise RequestError(f"a {box_size}px box does not fit in this {width}x{height} image")
    if corners.strip():
        boxes = []
        for part in filter(None, (p.strip() for p in corners.replace("\n", ";").split(";"))):
            try:
                x, y = (int(v) for v in part.split(","))
            except ValueError:
                raise RequestError(f"box position {shown(part)}: expected x,y (integers, the box's top-left corner)") from None
            box = Box(x, y, box_size, box_size)
            if not box.inside(height, width):
                raise RequestError(f"box at {x},{y}: a {box_size}px box there leaves the {width}x{height} image; "
                                   f"x in 0..{width - box_size}, y in 0..{height - box_size}")
            boxes.append(box)
        return boxes
    if count < 1:
        raise RequestError("number of boxes: at least 1")
    rng = np.random.default_rng(seed)
    boxes: list[Box] = []
    for _ in range(1000):
        box = Box(int(rng.integers(0, width - box_size + 1)), int(rng.integers(0, height - box_size + 1)),
                  box_size, box_size)
        if not any(box.overlaps(b) for b in boxes):
            boxes.append(box)
            if len(boxes) == count:
                return boxes
    raise RequestError(f"{count} non-overlapping {box_size}px boxes do not fit in this {width}x{height} image")


# --- competition images (the one place that reads the manifest) ---------------------------

@dataclass(frozen=True)
class CompetitionImage:
    """A validation or test image of the competition in use. `key` is what the page lists.

    path: what the editor shows (a validation image's clean photo, a test image as given);
    input_path: the file the pipeline's predictions read (a validation image's masked copy,
    unless data.val_inputs is `clean` or the layout has none; the test image itself);
    truth_path: the unmasked image, when known (a validation photo; a test image's file under
    data.truth, as the sample writes it), else None.
    """

    key: str  # "val/<image_id>" or "test/<image_id>"
    split: str
    image_id: str
    path: Path
    label: str | None
    boxes: tuple[Box, ...]
    input_path: Path | None = None
    truth_path: Path | None = None

    @property
    def fed_path(self) -> Path:
        return self.input_path or self.path


def competition_images(data: DataConfig) -> list[CompetitionImage]:
    """Validation then test images of the competition under data.root (not decoded here)."""
    competition = load_competition(data, check_images=False)
    images = []
    for split in ("val", "test"):
        for r in competition.split(split):
            try:
                truth = truth_path(competition, r)
            except CompetitionError:  # no data.truth, or this test image's truth is not there
                truth = None
            images.append(CompetitionImage(f"{split}/{r.image_id}", split, r.image_id, Path(r.path), r.label,
                                           tuple(r.boxes), Path(r.input_path), truth))
    return images


@dataclass
class CompetitionInput:
    """What a run on a competition image feeds and scores against.

    pixels: uint8 (H, W, 3) RGB, the model's input before the mask is blanked; truth: uint8
    (H, W, 3) or None; boxes: the image's own boxes when the mask is exactly them (then the
    batch carries them and the RMSE pools their pixels, as the pipeline's scores do), else None;
    fed: one line saying which file was fed, and why."""

    pixels: np.ndarray
    truth: np.ndarray | None
    boxes: tuple[Box, ...] | None
    fed: str


def competition_input(image: CompetitionImage, mask: np.ndarray) -> CompetitionInput:
    """The input the pipeline feeds for `image` when `mask` (bool H, W) covers the image's own
    boxes: a validation image's masked JPEG copy, a test image as given. A mask that leaves one
    of a validation image's boxes unpainted gets the clean photo (the masked copy's blank box
    would be context); a test image has no clean copy to give."""
    own = boxes_mask(image.boxes, *mask.shape)
    covers = bool(own.any()) and not (own & ~mask).any()
    exact = image.boxes if covers and np.array_equal(own, mask) else None
    truth = read_image(image.truth_path) if image.truth_path is not None else None
    fed_path = image.fed_path
    if image.split == "val" and not covers and fed_path != image.path:
        fed_path, why = image.path, ("the clean photo: the mask leaves some of the image's own boxes unpainted, "
                                     "and the competition's masked copy has them blank")
    elif image.split == "val":
        why = ("the competition's masked copy, as the pipeline's scores feed it" if fed_path != image.path
               else "the clean photo, as the pipeline's scores feed it (no masked copy: data.val_inputs or the layout)")
    else:
        why = "the test image as given (its own boxes blank), as the pipeline's predictions feed it"
    return CompetitionInput(read_image(fed_path), truth, exact, f"{fed_path.parent.name}/{fed_path.name}: {why}")


def shown_pixels(image: CompetitionImage) -> np.ndarray:
    """uint8 (H, W, 3) RGB as stored: what the editor shows for `image`."""
    return read_image(image.path)


def box_rmse(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, boxes: tuple[Box, ...] | None) -> float:
    """RMSE (0..1) of `image` against `truth` (uint8 H, W, 3): over the pixels of `boxes` pooled
    box by box (the pipeline's per-image score) when given, else over the mask's pixels."""
    if boxes:
        return rmse(box_pixels(image, boxes), box_pixels(truth, boxes))
    return rmse(image[mask], truth[mask])


# --- variants: which can run here, and why not ---------------------------------------------

@dataclass
class VariantStatus:
    name: str
    method: str
    why: str = ""  # empty when the variant can run
    config: VariantConfig | None = None

    @property
    def available(self) -> bool:
        return not self.why

    def as_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "available": self.available, "why": self.why}


def shown(text: str, limit: int = 40) -> str:
    """`text` quoted for a message, cut to its first `limit` characters (a request may send megabytes)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def first_lines(exc: Exception, lines: int = 6) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines()[:lines])


def discover_variants(configs_dir: Path, checkpoints_dir: Path = Path("checkpoints"),
                      data_root: str | Path | None = None) -> list[VariantStatus]:
    """Every variant config in `configs_dir` (sweep files aside), each checked with its method's
    `preflight` (config valid, weights or checkpoint present and loadable), plus every
    `checkpoints_dir/<name>/best.pt` that has no config. Runnable ones first: the any-size
    methods, then the rest; within each, by name."""
    found: dict[str, VariantStatus] = {}
    for path in sorted(Path(configs_dir).glob("*.yaml")):
        try:
            raw = read_yaml(path)
            if isinstance(raw, dict) and "variants" in raw and "method" not in raw:
                continue  # a sweep (several variants over a base), not a variant
            variant = load_variant(path, data_root=data_root)
        except Exception as exc:
            found.setdefault(path.stem, VariantStatus(path.stem, "?", f"{path}: {first_lines(exc)}"))
            continue
        if variant.name in found:
            continue
        status = VariantStatus(variant.name, variant.method, config=variant)
        if variant.method not in METHODS:
            status.why = f"{path}: method {variant.method!r} is not one of {', '.join(sorted(METHODS))}"
        else:
            try:
                preflight(variant)
            except Exception as exc:  # a missing checkpoint, absent weights, a bad param, no diffusers...
                status.why = first_lines(exc)
        found[variant.name] = status
    for best in sorted(Path(checkpoints_dir).glob("*/best.pt")):
        name = best.parent.name
        if name not in found:
            found[name] = VariantStatus(name, "?", f"{best}: no {Path(configs_dir).name}/{name}.yaml says which "
                                                   "method and settings it was trained with")
    return sorted(found.values(), key=lambda s: (not s.available, s.method not in ANY_SIZE_METHODS, s.name))


# --- models: loaded once, one request at a time per variant ----------------------------------

def variant_files(variant: VariantConfig, checkpoints_dir: Path) -> list[Path]:
    """The files a variant's model is built from, present or not: its config, its checkpoint."""
    files = [Path(variant.source)] if variant.source else []
    files.append(Path(checkpoints_dir) / variant.name / "best.pt")
    return files + [Path(v) for v in variant.params.values()
                    if isinstance(v, str) and v.endswith((".pt", ".pth", ".ckpt"))]


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of a file, None when there is none: changes when the file is rewritten."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if Path(path).is_file() else None


def _signature(variant: VariantConfig, checkpoints_dir: Path) -> str:
    """Changes when the variant's config or its checkpoint file changes (so a retrained model is
    reloaded, and a checkpoint corrupted since is reported rather than served from memory)."""
    stats = [(str(p), file_stamp(p)) for p in variant_files(variant, checkpoints_dir) if file_stamp(p)]
    return json.dumps([variant.to_dict(), stats], default=str)


class Models:
    """Each variant's Inpainter, built on first use and kept; a variant runs one request at a time
    (a second waits on the variant's lock), so no request ever loads a second copy."""

    def __init__(self, checkpoints_dir: Path = Path("checkpoints"),
                 build: Callable[[VariantConfig], Inpainter] = build_inpainter):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.build = build
        self.loads: dict[str, int] = {}  # variant -> times built (tests and the status line read it)
        self._models: dict[str, tuple[str, Inpainter]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def run(self, variant: VariantConfig, fn: Callable[[Inpainter], np.ndarray]) -> tuple[np.ndarray, float, float]:
        """fn(the variant's inpainter) under the variant's lock -> (its result, load seconds, run seconds)."""
        with self.lock(variant.name):
            load = 0.0
            signature = _signature(variant, self.checkpoints_dir)
            cached = self._models.get(variant.name)
            if cached is None or cached[0] != signature:
                self._models.pop(variant.name, None)  # let the old copy go before loading the new one
                started = time.perf_counter()
                self._models[variant.name] = (signature, self.build(variant))
                self.loads[variant.name] = self.loads.get(variant.name, 0) + 1
                load = time.perf_counter() - started
            started = time.perf_counter()
            result = fn(self._models[variant.name][1])
            return result, load, time.perf_counter() - started


# --- to the model's input size and back ------------------------------------------------------

def model_input_size(variant: VariantConfig) -> int | None:
    """None for methods that work at any size, else the square side the model was built for."""
    return None if variant.method in ANY_SIZE_METHODS else variant.data.image_size


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def inpaint_at(inpainter: Inpainter, masked: np.ndarray, mask: np.ndarray, size: int | None,
               label: str | None = None, image_id: str = "upload", boxes: tuple[Box, ...] | None = None) -> np.ndarray:
    """The inpainter's prediction for one masked photo, uint8 (H, W, 3) at the photo's size.

    masked: uint8 (H, W, 3) RGB with the mask's pixels blank (0); mask: bool (H, W). With `size`,
    the photo is padded to a square by reflection (keeping its aspect) and resized to size x size;
    the mask is resized with the same footprint, a model pixel being a hole if any photo pixel under
    it is, so no blank pixel reaches the model as context. The prediction is resized back and
    uncropped; the caller composites it. `boxes`: the competition's boxes that make up the mask,
    passed to the inpainter as the pipeline does (at the model's size only); else the mask's regions.
    """
    height, width = mask.shape
    if size is None or (height, width) == (size, size):
        batch_image, batch_mask = masked, mask
    else:
        side = max(height, width)
        pad = ((side - height) // 2, side - height - (side - height) // 2,
               (side - width) // 2, side - width - (side - width) // 2)
        square = cv2.copyMakeBorder(masked, *pad, cv2.BORDER_REFLECT)
        square_mask = cv2.copyMakeBorder(mask.astype(np.uint8), *pad, cv2.BORDER_REFLECT)
        batch_mask = _resize(square_mask.astype(np.float32), size, size) > 0
        batch_image = _resize(square, size, size)
        batch_image[batch_mask] = 0
    regions = list(boxes) if boxes and batch_image is masked else mask_boxes(batch_mask)
    batch = InpaintBatch(batch_image[None], batch_mask[None], [regions], [label], [image_id])
    prediction = np.asarray(inpainter.inpaint(batch))[0]
    if prediction.shape != batch_image.shape or prediction.dtype != np.uint8:
        raise ValueError(f"the inpainter returned {prediction.dtype} {prediction.shape}, expected uint8 {batch_image.shape}")
    if batch_image is masked:
        return prediction
    back = _resize(prediction, side, side)
    return back[pad[0]:pad[0] + height, pad[2]:pad[2] + width]


@dataclass
class Result:
    variant: str
    image: np.ndarray  # uint8 (H, W, 3) RGB: the photo with the mask's pixels filled
    load_seconds: float
    seconds: float
    rmse: float | None = None  # over the mask's pixels, 0..1 scale, when the truth is known


def inpaint(models: Models, variant: VariantConfig, photo: np.ndarray, mask: np.ndarray,
            label: str | None = None, image_id: str = "upload", truth: np.ndarray | None = None,
            boxes: tuple[Box, ...] | None = None) -> Result:
    """`photo` (uint8 H, W, 3) with the `mask` (bool H, W) pixels filled by `variant`; every other
    pixel is the photo's (the pipeline's `composite`, at the photo's size). With `truth`, the
    RMSE: over `boxes` (the competition's, the mask being exactly them) as the pipeline scores an
    image, else over the mask's pixels."""
    masked = photo.copy()
    masked[mask] = 0  # the model never sees the pixels it fills
    size = model_input_size(variant)
    prediction, load, seconds = models.run(
        variant, lambda inpainter: inpaint_at(inpainter, masked, mask, size, label, image_id, boxes))
    image = composite(masked[None], mask[None], prediction[None])[0]
    score = box_rmse(image, truth, mask, boxes) if truth is not None else None
    return Result(variant.name, image, load, seconds, score)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
