"""The server: what every request shares (variants, loaded models, the competition's images), the
HTTP routes for scripts, and the Gradio page mounted beside them on one FastAPI app."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from pipeline.config import CONFIG_DIR, DataConfig, VariantConfig, data_config
from pipeline.serve import inpaint as core


class App:
    """What the page and the routes share: the variants found at start (or refresh), the models
    loaded so far, the competition's validation and test images."""

    def __init__(self, configs_dir: Path = CONFIG_DIR, checkpoints_dir: Path = Path("checkpoints"),
                 data_root: str | Path | None = None, max_pixels: int = core.MAX_PIXELS):
        self.configs_dir = Path(configs_dir)
        self.checkpoints_dir = Path(checkpoints_dir)
        self.data_root = data_root
        self.data: DataConfig = (data_config({"root": data_root, "truth": None}) if data_root is not None
                                 else DataConfig())
        self.max_pixels = max_pixels
        self.models = core.Models(self.checkpoints_dir)
        self.outputs = Path(tempfile.mkdtemp(prefix="pipeline-serve-"))  # result PNGs for download
        atexit.register(shutil.rmtree, self.outputs, ignore_errors=True)
        self._lock = threading.Lock()
        self.variants: list[core.VariantStatus] = []
        self._images: dict[str, core.CompetitionImage] | None = None
        self.images_error = ""
        self.refresh()

    def refresh(self) -> list[core.VariantStatus]:
        """Look for variants again (a checkpoint trained since start, weights copied in)."""
        variants = core.discover_variants(self.configs_dir, self.checkpoints_dir, self.data_root)
        with self._lock:
            self.variants = variants
        return variants

    def available(self) -> list[str]:
        return [v.name for v in self.variants if v.available]

    def variant(self, name: str) -> VariantConfig:
        """The runnable variant `name`; RequestError 404 when unknown, 422 when it cannot run."""
        status = next((v for v in self.variants if v.name == name), None)
        if status is None:
            raise core.RequestError(f"no variant {name!r}; runnable: {', '.join(self.available()) or 'none'}",
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

    def run(self, name: str, photo: np.ndarray, mask: np.ndarray, label: str | None = None,
            image_id: str = "upload", truth: np.ndarray | None = None) -> core.Result:
        """Variant `name` on one photo (uint8 H, W, 3) and mask (bool H, W); a checkpoint that fails to
        load (corrupted or removed since the start) is a 422 RequestError."""
        variant = self.variant(name)
        try:
            return core.inpaint(self.models, variant, photo, mask, label, image_id, truth)
        except core.PipelineError as exc:  # e.g. a checkpoint corrupted or removed since the start
            raise core.RequestError(f"variant {name!r}: {exc}", status=422) from exc


def add_routes(api: FastAPI, app: App) -> None:
    """POST /api/inpaint (multipart: image, mask, variant) -> PNG; GET /api/variants -> JSON."""

    @api.exception_handler(core.RequestError)
    async def refused(request: Request, exc: core.RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.get("/api/variants")
    def variants() -> list[dict]:
        return [v.as_dict() for v in app.variants]

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


def _read(upload: UploadFile, what: str) -> bytes:
    data = upload.file.read(core.MAX_UPLOAD_BYTES + 1)
    if len(data) > core.MAX_UPLOAD_BYTES:
        raise core.RequestError(f"{what}: over {core.MAX_UPLOAD_BYTES // 2**20} MiB", status=413)
    return data
