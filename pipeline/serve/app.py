"""What every request shares (variants, loaded models, the competition's images) and the HTTP
routes for scripts; server.py mounts the page beside them and runs it."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.config import CONFIG_DIR, DataConfig, VariantConfig, data_config
from pipeline.files import write_bytes_atomic
from pipeline.serve import inpaint as core


class App:
    """What the page and the routes share: the variants found at start (looked for again when a
    config or checkpoint file changes), the models loaded so far, the competition's validation and
    test images."""

    def __init__(self, configs_dir: Path = CONFIG_DIR, checkpoints_dir: Path = Path("checkpoints"),
                 data_root: str | Path | None = None, max_pixels: int = core.MAX_PIXELS,
                 truth: str | Path | None | type[Ellipsis] = ...):
        """truth: the folder of the test images' truth; by default the sample's (data/sample-truth)
        for the sample, none for another data folder (as the pipeline's commands decide)."""
        self.configs_dir = Path(configs_dir)
        self.checkpoints_dir = Path(checkpoints_dir)
        self.data_root = data_root
        if truth is ...:
            truth = DataConfig.truth if data_root is None or Path(data_root) == DataConfig.root else None
        self.data: DataConfig = data_config({"root": data_root if data_root is not None else DataConfig.root,
                                             "truth": truth})
        self.max_pixels = max_pixels
        self.models = core.Models(self.checkpoints_dir)
        self.outputs = Path(tempfile.mkdtemp(prefix="pipeline-serve-"))  # result PNGs for download
        atexit.register(shutil.rmtree, self.outputs, ignore_errors=True)
        self._refreshing = threading.Lock()
        self.variants: list[core.VariantStatus] = []
        self._seen: dict[str, tuple[int, int] | None] | None = None  # the files the variants were checked on
        self._images: dict[str, core.CompetitionImage] | None = None
        self._thumbnails: list[tuple[str, str]] | None = None
        self.images_error = ""
        self.refresh()

    def _files(self, variants: list[core.VariantStatus]) -> dict[str, tuple[int, int] | None]:
        """(mtime, size) of every file the variants' availability rests on (None: absent): each
        config, each checkpoint found or named."""
        paths = {*self.configs_dir.glob("*.yaml"), *self.checkpoints_dir.glob("*/best.pt")}
        for status in variants:
            if status.config is not None:
                paths.update(core.variant_files(status.config, self.checkpoints_dir))
        return {str(path): core.file_stamp(path) for path in paths}

    def refresh(self, changed_only: bool = False) -> list[core.VariantStatus]:
        """Look for variants again (a checkpoint trained, damaged or removed since, weights copied
        in); with changed_only, only when a config or checkpoint file changed since the last look."""
        with self._refreshing:
            seen = self._files(self.variants)  # before looking: a change made while looking shows next time
            if changed_only and seen == self._seen:
                return self.variants
            variants = core.discover_variants(self.configs_dir, self.checkpoints_dir, self.data_root)
            seen.update({path: stamp for path, stamp in self._files(variants).items() if path not in seen})
            self.variants, self._seen = variants, seen
            return variants

    def current(self) -> list[core.VariantStatus]:
        """The variants as their files are now (a few stat calls; checked again when one changed)."""
        return self.refresh(changed_only=True)

    def available(self) -> list[str]:
        return [v.name for v in self.current() if v.available]

    def variant(self, name: str) -> VariantConfig:
        """The runnable variant `name`; RequestError 404 when unknown, 422 when it cannot run."""
        status = next((v for v in self.current() if v.name == name), None)
        if status is None:
            raise core.RequestError(f"no variant {core.shown(name)}; runnable: {', '.join(self.available()) or 'none'}",
                                    status=404)
        if not status.available:
            raise core.RequestError(f"variant {name!r} cannot run here: {status.why}", status=422)
        return status.config

    def images(self) -> dict[str, core.CompetitionImage]:
        """The competition's validation and test images by key; empty (with images_error saying
        why) when the competition folder is missing or invalid."""
        if self._images is None:
            try:
                self._images = {image.key: image for image in core.competition_images(self.data)}
            except Exception as exc:  # the page still works on uploads
                self._images, self.images_error = {}, core.first_lines(exc)
        return self._images

    def thumbnails(self, side: int = 96) -> list[tuple[str, str]]:
        """(JPEG path, key) of a `side`-pixel thumbnail of every competition image, in images()'s
        order, written once into the outputs folder (the page picks images from them)."""
        if self._thumbnails is None:
            folder = self.outputs / "thumbnails"
            folder.mkdir(exist_ok=True)
            thumbnails = []
            for index, (key, image) in enumerate(self.images().items()):
                path = folder / f"{index:05d}.jpg"
                try:
                    pixels = core.shown_pixels(image)
                except core.PipelineError:  # a file that cannot be read: listed, without a picture
                    pixels = np.full((side, side, 3), 200, np.uint8)
                small = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA)
                _, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
                write_bytes_atomic(path, encoded.tobytes())
                thumbnails.append((str(path), key))
            self._thumbnails = thumbnails
        return self._thumbnails

    def run(self, name: str, photo: np.ndarray, mask: np.ndarray, label: str | None = None,
            image_id: str = "upload", truth: np.ndarray | None = None,
            boxes: tuple | None = None) -> core.Result:
        """Variant `name` on one photo (uint8 H, W, 3) and mask (bool H, W) (`boxes`: the
        competition's, when the mask is exactly them); a checkpoint that fails to load (corrupted
        or removed since the start) is a 422 RequestError."""
        variant = self.variant(name)
        try:
            return core.inpaint(self.models, variant, photo, mask, label, image_id, truth, boxes)
        except core.PipelineError as exc:  # e.g. a checkpoint corrupted or removed since the start
            raise core.RequestError(f"variant {name!r}: {exc}", status=422) from exc


def add_routes(api: FastAPI, app: App) -> None:
    """POST /api/inpaint (multipart: image, mask, variant) -> PNG; GET /api/variants -> JSON."""

    @api.exception_handler(core.RequestError)
    async def refused(request: Request, exc: core.RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def bad_form(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": form_errors(request, exc.errors())}, status_code=400)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if not request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        detail = str(exc.detail)[:200]  # starlette's own words, not the request's
        if exc.status_code == 400:  # starlette could not parse the body: a part too large, too many fields
            detail = f"the form could not be read ({detail}); send image and mask as files, variant as a short text"
        return JSONResponse({"error": f"{request.method} {request.url.path}: {detail}"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @api.get("/api/variants")
    def variants() -> list[dict]:
        return [v.as_dict() for v in app.current()]

    @api.post("/api/inpaint", response_class=Response)
    def inpaint_route(image: UploadFile = File(..., description="the photo: any size up to the limit, any mode"),
                      mask: UploadFile = File(..., description="same size: white (or opaque) = fill"),
                      variant: str = Form("telea")) -> Response:
        upload = core.open_image(_read(image, "image"), "image", app.max_pixels)
        photo = core.photo_from_image(upload)
        drawn = core.open_image(_read(mask, "mask"), "mask", app.max_pixels)
        holes = core.require_mask(core.mask_from_image(drawn, photo.size))
        result = app.run(variant, photo.rgb, holes)
        return Response(core.png_bytes(photo.with_pixels(result.image, holes)), media_type="image/png",
                        headers={"X-Variant": variant, "X-Seconds": f"{result.load_seconds + result.seconds:.3f}"})

    # registered last: any other /api/ path or method answers {"error": ...}, not the page's 404
    @api.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def no_route(request: Request, rest: str) -> None:
        path = request.url.path
        if path in ROUTES:
            raise core.RequestError(f"{request.method} {path}: use {ROUTES[path]}", status=405)
        raise core.RequestError(f"{core.shown(path)}: no such route; the routes are "
                                + ", ".join(f"{method} {route}" for route, method in ROUTES.items()), status=404)


ROUTES = {"/api/inpaint": "POST", "/api/variants": "GET"}
FIELDS = {"image": "the photo as a file",
          "mask": "the mask as a file (an image of the photo's size, white = fill)",
          "variant": "a variant's name as text (GET /api/variants lists them)"}


def form_errors(request: Request, errors: list[dict]) -> str:
    """FastAPI's validation errors of the form as one message: each field missing or of the wrong
    kind, and what to send instead; what was sent is never echoed (it may be megabytes, or a file)."""
    said = []
    for error in errors:
        name = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        field, wanted = ((name, FIELDS[name]) if name in FIELDS
                         else (core.shown(name or "the form"), "nothing: not a field of this route"))
        if error.get("type") == "missing":
            said.append(f"{field}: missing; send {wanted}")
        else:
            sent = error.get("input")
            kind = ("text" if isinstance(sent, str) else "a file" if isinstance(sent, StarletteUploadFile)
                    else type(sent).__name__)
            said.append(f"{field}: expected {wanted}, got {kind}")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        said.insert(0, "the request is not a multipart form (multipart/form-data: "
                       "curl -F image=@photo.png -F mask=@mask.png -F variant=telea)")
    return "; ".join(said)


def _read(upload: UploadFile, what: str) -> bytes:
    data = upload.file.read(core.MAX_UPLOAD_BYTES + 1)
    if len(data) > core.MAX_UPLOAD_BYTES:
        raise core.RequestError(f"{what}: over {core.MAX_UPLOAD_BYTES // 2**20} MiB", status=413)
    return data
