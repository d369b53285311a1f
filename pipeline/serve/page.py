"""The Gradio page: an image editor to upload a photo (or pick a competition image) and brush the
mask (or place boxes), the variants to run, and one button that shows the masked input, the ground
truth of a validation image, and each variant's result with its box RMSE, each downloadable as PNG.
"""

from __future__ import annotations

import html
import re
import time
import uuid

import gradio as gr
import numpy as np
from PIL import Image

from pipeline.data.boxes import boxes_mask
from pipeline.serve import inpaint as core
from pipeline.serve.app import App

MASK_RGBA = (255, 0, 255, 150)  # how a mask looks in the editor: translucent magenta
BRUSH = gr.Brush(colors=["rgba(255, 0, 255, 0.6)"], color_mode="fixed", default_size=12)


def refuse_bad_uploads(editor: gr.ImageEditor, max_pixels: int) -> gr.ImageEditor:
    """Make an unreadable or too large upload a message in the page, not a processing error; the
    size is checked from the file's header, before gradio decodes the photo. Wraps this editor's
    own `preprocess` (a subclass would be a custom component to gradio: another front end, and a
    .pyi file written beside this module)."""
    preprocess = editor.preprocess

    def checked(payload):
        background = getattr(payload, "background", None)
        try:
            if getattr(background, "path", None):
                with Image.open(background.path) as image:
                    core.check_pixels(*image.size, max_pixels)
            return preprocess(payload)
        except core.RequestError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        except Exception as exc:
            raise gr.Error(f"image: not an image (PNG, JPEG, WebP, ... that Pillow reads): {type(exc).__name__}",
                           print_exception=False) from exc

    editor.preprocess = checked
    return editor


def _editor_value(background: Image.Image, mask: np.ndarray | None = None) -> gr.ImageEditor:
    """The editor showing the photo, and the mask (if any) as one translucent layer. The canvas
    takes the photo's size: the front end centres a layer on the canvas, not on the photo."""
    layers = []
    if mask is not None:
        layer = np.zeros((*mask.shape, 4), np.uint8)
        layer[mask] = MASK_RGBA
        layers.append(Image.fromarray(layer, "RGBA"))
    return gr.ImageEditor(value={"background": background, "layers": layers, "composite": None},
                          canvas_size=background.size, format="png")  # png: lossless, as the editor's own


def _editor_mask(value: dict | None, size: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the union of the editor's layers' painted (non-transparent) pixels, at `size`."""
    mask = np.zeros((size[1], size[0]), bool)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        if layer.size != size:  # the canvas may hold the photo at another scale
            layer = layer.convert("RGBA").resize(size, Image.NEAREST)
        mask |= np.asarray(layer.convert("RGBA"))[..., 3] > 0
    return mask


def _background(value: dict | None, max_pixels: int) -> Image.Image:
    image = (value or {}).get("background")
    if image is None:
        raise gr.Error("No image: upload one into the editor, or pick a competition image.")
    core.check_pixels(*image.size, max_pixels)
    return image


def _plain(text: str) -> str:
    """`text` shown as is in Markdown (paths with * and _, <file> placeholders)."""
    return re.sub(r"([\\`*_{}\[\]#|])", r"\\\1", text).replace("<", "&lt;").replace(">", "&gt;")


def _refusing(fn):
    """Turn RequestError (and other pipeline errors) into gr.Error, the page's message box."""
    def wrapped(*args):
        try:
            return fn(*args)
        except core.PipelineError as exc:
            raise gr.Error(html.escape(str(exc), quote=False), print_exception=False) from exc
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def variant_notes(app: App) -> str:
    lines = [f"- **{v.name}** ({v.method}): {_plain(v.why)}" for v in app.variants if not v.available]
    return "\n".join(lines) if lines else "Every variant found can run."


def pick_image(app: App, key: str | None):
    """A competition image into the editor (as stored, no mask), and its key for the State."""
    if not key:
        return gr.update(), None
    image = app.images().get(key)
    if image is None:
        raise gr.Error(html.escape(f"{core.shown(key)}: not an image of {app.data.root}", quote=False))
    pixels, _ = core.competition_pixels(image)
    return _editor_value(Image.fromarray(pixels)), key


def _picked(app: App, background: Image.Image, key: str | None) -> core.CompetitionImage | None:
    """The competition image picked, if the editor still shows it (a photo uploaded since replaces
    it; gradio fires no reliable event for that, so the pixels tell)."""
    image = app.images().get(key) if key else None
    if image is None:
        return None
    pixels, _ = core.competition_pixels(image)
    if background.size != (pixels.shape[1], pixels.shape[0]):
        return None
    shown = np.asarray(background.convert("RGB"), dtype=np.int16)
    return image if np.abs(shown - pixels).mean() < 1.0 else None


@_refusing
def own_boxes(app: App, value: dict | None, key: str | None) -> dict:
    """The competition image's own boxes as the mask."""
    background = _background(value, app.max_pixels)
    image = _picked(app, background, key)
    if image is None:
        raise gr.Error("Own boxes: pick a competition image first (an uploaded photo has none; place boxes).")
    return _editor_value(background, boxes_mask(image.boxes, background.size[1], background.size[0]))


@_refusing
def place(app: App, value: dict | None, count, corners: str, seed) -> dict:
    """N boxes of the competition's size, at the given corners or at random, as the mask."""
    background = _background(value, app.max_pixels)
    width, height = background.size
    boxes = core.place_boxes(width, height, app.data.box_size, int(count or 0), corners or "", int(seed or 0))
    return _editor_value(background, boxes_mask(boxes, height, width))


def clear_mask(value: dict | None):
    """The editor with the photo and no mask."""
    if not value or value.get("background") is None:
        return gr.update()
    return _editor_value(value["background"])


@_refusing
def run(app: App, value: dict | None, key: str | None, names: list[str]):
    """The button: (gallery [(PNG path, caption)]: masked input, ground truth for a validation
    image, each variant's result; status Markdown: timings, box RMSE, failures; result PNG paths).

    value: the editor's {"background", "layers"} (PIL RGBA); key: the competition image last
    picked, or None; while the editor shows it, its pixels are read from the competition (not the
    canvas's copy) and a validation image's truth is known.
    """
    started = time.perf_counter()
    if not names:
        raise gr.Error("Pick at least one variant.")
    background = _background(value, app.max_pixels)
    label, image_id, truth = None, "upload", None
    image = _picked(app, background, key)
    if image is not None:  # its pixels as stored, not the canvas's copy
        pixels, is_truth = core.competition_pixels(image)
        label, image_id = image.label, image.image_id
        truth = pixels if is_truth else None
        photo = core.Photo(pixels)
    else:
        photo = core.photo_from_image(background)
    mask = core.require_mask(_editor_mask(value, photo.size))
    folder = app.outputs / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)

    def save(name: str, rgb: np.ndarray) -> str:
        path = folder / f"{stem}-{name}.png"
        photo.with_pixels(rgb, mask).save(path)
        return str(path)

    masked = photo.rgb.copy()
    masked[mask] = 0
    gallery = [(save("masked", masked), "masked input")]
    if truth is not None:
        gallery.append((save("truth", truth), "ground truth"))
    rows, problems, files = [], [], []
    for name in names:
        try:
            result = app.run(name, photo.rgb, mask, label, image_id, truth)
        except core.PipelineError as exc:
            problems.append((name, str(exc)))
            continue
        score = "" if result.rmse is None else f"{result.rmse:.4f}"
        path = save(name, result.image)
        files.append(path)
        gallery.append((path, name + (f" - box RMSE {score}" if score else "")))
        rows.append(f"| {name} | {result.load_seconds:.2f} | {result.seconds:.2f} | {score or '-'} |")
    if not files:
        raise gr.Error(html.escape("No variant produced a result. " + " ".join(f"{n}: {m}" for n, m in problems),
                                   quote=False), print_exception=False)
    width, height = photo.size
    status = (f"**{image_id}** ({width}x{height}, {int(mask.sum())} pixels to fill), "
              f"{time.perf_counter() - started:.2f} s in all\n\n"
              "| variant | load s | inpaint s | box RMSE |\n|---|---|---|---|\n" + "\n".join(rows))
    if problems:
        status += "\n\n**Failed**\n\n" + "\n".join(f"- **{n}**: {_plain(m)}" for n, m in problems)
    return gallery, status, files


def build_page(app: App) -> gr.Blocks:
    images = app.images()
    image_note = (f"{len(images)} images of {app.data.root}" if images
                  else f"No competition images: {app.images_error}")

    def refresh():
        app.refresh()
        names = app.available()
        return gr.update(choices=names, value=[n for n in names if n == "telea"][:1]), variant_notes(app)

    with gr.Blocks(title="Photo Reconstruction - inpaint", analytics_enabled=False) as page:
        gr.Markdown("## Photo Reconstruction: inpaint a photo with any variant\n"
                    "Upload a photo (or pick a competition image), paint the pixels to fill with the brush "
                    "(size, undo and clear are in the editor's toolbar) or place boxes, pick variants, press "
                    f"**Inpaint**. Photos up to {app.max_pixels / 1e6:.1f} megapixels; only the painted pixels "
                    "change.")
        source = gr.State(None)  # the competition image last picked (used while the editor shows it)
        with gr.Row():
            with gr.Column(scale=3):
                editor = refuse_bad_uploads(gr.ImageEditor(
                    label="Photo and mask", type="pil", image_mode="RGBA", sources=("upload", "clipboard"),
                    transforms=(), layers=False, brush=BRUSH, eraser=gr.Eraser(default_size=12), format="png",
                    canvas_size=(app.data.image_size, app.data.image_size), elem_id="editor"), app.max_pixels)
            with gr.Column(scale=2):
                pick = gr.Dropdown(choices=list(images), value=None, label="Competition image", info=image_note,
                                   filterable=True, elem_id="pick")
                with gr.Group():
                    own = gr.Button("Mask: the image's own boxes", size="sm")
                    with gr.Row():
                        count = gr.Number(value=app.data.boxes_per_image, precision=0, minimum=1,
                                          label=f"N boxes ({app.data.box_size}px)")
                        seed = gr.Number(value=0, precision=0, label="seed")
                    corners = gr.Textbox(label="Box corners x,y; x,y (empty: N at random)", max_lines=1)
                    with gr.Row():
                        place_button = gr.Button("Mask: place boxes", size="sm")
                        clear_button = gr.Button("Clear mask", size="sm")
                names = app.available()
                chosen = gr.CheckboxGroup(choices=names, value=[n for n in names if n == "telea"][:1],
                                          label="Variants", elem_id="variants")
                with gr.Accordion("Variants that cannot run here, and why", open=False):
                    notes = gr.Markdown(variant_notes(app), elem_id="unavailable")
                refresh_button = gr.Button("Look for variants again", size="sm")
                run_button = gr.Button("Inpaint", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(label="Masked input, ground truth, results", format="png", columns=4,
                             fit_columns=False, object_fit="contain", height="auto", elem_id="results")
        downloads = gr.File(label="Results as PNG", file_count="multiple", elem_id="downloads")

        pick.change(lambda key: pick_image(app, key), [pick], [editor, source], api_name=False)
        own.click(lambda value, key: own_boxes(app, value, key), [editor, source], [editor], api_name=False)
        place_button.click(lambda value, n, xy, s: place(app, value, n, xy, s), [editor, count, corners, seed],
                           [editor], api_name=False)
        clear_button.click(clear_mask, [editor], [editor], api_name=False)
        refresh_button.click(refresh, None, [chosen, notes], api_name=False)

        def inpaint(value, key, names):
            return run(app, value, key, names)

        # different variants may run side by side; the same variant waits on its lock (Models)
        run_button.click(inpaint, [editor, source, chosen], [gallery, status, downloads], api_name="inpaint",
                         concurrency_limit=2)
    return page
