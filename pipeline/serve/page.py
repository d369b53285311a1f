"""The Gradio page: an image editor to upload a photo (or pick a competition image from its
thumbnail) and brush the mask (or place boxes), the variants to run, and one button that shows the
input it fed, the ground truth where it is known, and each variant's result with its boxes outlined
and its box RMSE (the pipeline's per-image score on a competition image), a before/after
comparison, and each result downloadable as PNG.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
import time
import uuid

import gradio as gr
import numpy as np
from PIL import Image

from pipeline.data.boxes import boxes_mask
from pipeline.files import write_bytes_atomic
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


# how the page's own editor marks the pixels to fill (the empty-mask and whole-mask messages)
BRUSH_HOW = ("with the brush, the pen in the editor's toolbar left of the photo; or press \"Mask: the image's "
             "own boxes\" on a competition image")


def pick_image(app: App, key: str | None):
    """A competition image into the editor (as stored, no mask), and its key for the State."""
    if not key:
        return gr.update(), None
    image = app.images().get(key)
    if image is None:
        raise gr.Error(html.escape(f"{core.shown(key)}: not an image of {app.data.root}", quote=False))
    return _editor_value(Image.fromarray(core.shown_pixels(image))), key


def pick_thumbnail(app: App, index: int | None):
    """The competition image of thumbnail `index` (app.thumbnails()'s order) into the editor."""
    thumbnails = app.thumbnails()
    if index is None or not 0 <= index < len(thumbnails):
        return gr.update(), None
    return pick_image(app, thumbnails[index][1])


def _picked(app: App, background: Image.Image, key: str | None) -> core.CompetitionImage | None:
    """The competition image picked, if the editor still shows it (a photo uploaded since replaces
    it; gradio fires no reliable event for that, so the pixels tell)."""
    image = app.images().get(key) if key else None
    if image is None:
        return None
    pixels = core.shown_pixels(image)
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


@dataclass
class Shown:
    """One picture of the results: its PNG, its caption, and a line under it."""

    path: str
    caption: str
    note: str = ""
    rmse: float | None = None


@dataclass
class Results:
    """What a run shows: the fed input, the truth (when known), each variant's result; the boxes
    outlined on them ((x, y, w, h) in pixels of a width x height photo)."""

    width: int
    height: int
    boxes: list[tuple[int, int, int, int]]
    pictures: list[Shown] = field(default_factory=list)

    @property
    def results(self) -> list[Shown]:
        return [p for p in self.pictures if p.caption not in ("masked input", "ground truth")]


def _url(path: str) -> str:
    """The address gradio serves a file of the outputs folder at (allowed_paths), relative to the
    page (mounted at /), so that it holds behind a proxy's path prefix too."""
    return "gradio_api/file=" + html.escape(str(path), quote=True)


def results_html(results: Results | None) -> str:
    """The results as HTML: a grid of figures (image, boxes outlined, caption wrapped under it,
    never cut), then a before/after comparison with a slider (driven by RESULTS_JS)."""
    if results is None or not results.pictures:
        return "<p class='empty'>No results yet: press <b>Inpaint</b>.</p>"
    def e(text: str) -> str:
        return html.escape(text, quote=True)

    outlines = "".join(
        f"<span class='box' style='left:{100 * x / results.width:.3f}%;top:{100 * y / results.height:.3f}%;"
        f"width:{100 * w / results.width:.3f}%;height:{100 * h / results.height:.3f}%'></span>"
        for x, y, w, h in results.boxes)
    figures = "".join(
        f"<figure class='result' data-caption='{e(p.caption)}'><div class='frame'><img src='{_url(p.path)}' "
        f"alt='{e(p.caption)}'>{outlines}</div><figcaption><b>{e(p.caption)}</b>"
        + (f" <span class='rmse'>box RMSE {p.rmse:.4f}</span>" if p.rmse is not None else "")
        + (f"<br><small>{e(p.note)}</small>" if p.note else "") + "</figcaption></figure>"
        for p in results.pictures)
    befores = [p for p in results.pictures if p not in results.results]
    afters = results.results
    if not afters:
        return f"<div class='grid'>{figures}</div>"

    def options(pictures: list[Shown], chosen: Shown) -> str:
        return "".join(f"<option value='{_url(p.path)}'{' selected' if p is chosen else ''}>{e(p.caption)}</option>"
                       for p in pictures)

    before = befores[-1]  # the truth when known, else the masked input
    compare = (f"<div class='compare' style='--cut:50%'><div class='pickers'><label>left: <select class='before'>"
               f"{options(befores, before)}</select></label> <label>right: <select class='after'>"
               f"{options(afters, afters[0])}</select></label> <small>drag the slider to move the cut</small></div>"
               f"<div class='stage' style='aspect-ratio:{results.width}/{results.height}'>"
               f"<img class='after' src='{_url(afters[0].path)}' alt='after'>"
               f"<img class='before' src='{_url(before.path)}' alt='before'>{outlines}<span class='cut-line'></span></div>"
               "<input class='cut' type='range' min='0' max='100' value='50' aria-label='before/after cut'></div>")
    return (f"<div class='grid'>{figures}</div><h3>Before / after</h3>{compare}")


# the comparison's controls; delegated to the component's element, which outlives its HTML
RESULTS_JS = """
element.addEventListener('input', (event) => {
  const cut = event.target.closest('input.cut');
  if (cut) cut.closest('.compare').style.setProperty('--cut', cut.value + '%');
});
element.addEventListener('change', (event) => {
  const select = event.target.closest('select.before, select.after');
  if (select) select.closest('.compare').querySelector('img.' + select.className).src = select.value;
});
"""

CSS = """
#editor { min-height: 560px; }
#results .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 12px; }
#results figure.result { margin: 0; min-width: 0; }
#results .frame, #results .stage { position: relative; line-height: 0; }
#results .frame img { width: 100%; height: auto; display: block; image-rendering: pixelated; }
#results figcaption { font-size: 0.9em; line-height: 1.3; padding-top: 4px; overflow-wrap: anywhere;
                      white-space: normal; }
#results .box { position: absolute; box-sizing: border-box; border: 2px solid #00e5ff;
                outline: 1px solid rgba(0, 0, 0, 0.6); pointer-events: none; }
#results .compare { max-width: 512px; }
#results .stage img { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated; }
#results .stage img.before { clip-path: inset(0 calc(100% - var(--cut)) 0 0); }
#results .cut-line { position: absolute; top: 0; bottom: 0; left: var(--cut); width: 2px; background: #fff;
                     box-shadow: 0 0 2px #000; pointer-events: none; }
#results input.cut { width: 100%; }
#results.stale, #status.stale > * { opacity: 0.4; }
#status.stale::before { content: "Stale: the results below are from an earlier run (the last one failed, or runs)";
                        display: block; font-weight: bold; color: #b00; padding: 4px 90px 4px 0; }
"""

# marks the shown results stale when a run starts; a run that succeeds unmarks them and scrolls to them
MARK_STALE_JS = "() => { for (const id of ['results', 'status']) document.getElementById(id)?.classList.add('stale'); }"
SHOW_RESULTS_JS = ("() => { for (const id of ['results', 'status']) document.getElementById(id)?.classList.remove('stale');"
                   " document.getElementById('status')?.scrollIntoView({behavior: 'instant', block: 'start'}); }")


def _input(app: App, value: dict | None, key: str | None):
    """(photo, mask, competition image or None, CompetitionInput or None) for a run."""
    background = _background(value, app.max_pixels)
    image = _picked(app, background, key)
    if image is None:
        photo = core.photo_from_image(background)
        return photo, core.require_mask(_editor_mask(value, photo.size), BRUSH_HOW), None, None
    width, height = background.size
    mask = core.require_mask(_editor_mask(value, (width, height)), BRUSH_HOW)
    fed = core.competition_input(image, mask)
    return core.Photo(fed.pixels), mask, image, fed


@_refusing
def run(app: App, value: dict | None, key: str | None, names: list[str]):
    """The button: (results HTML: the fed input, the truth where known, each variant's result; status
    Markdown: which input was fed, timings, box RMSE, failures; result PNG paths).

    value: the editor's {"background", "layers"} (PIL RGBA); key: the competition image last
    picked, or None; while the editor shows it, the input is read from the competition as the
    pipeline reads it (core.competition_input), and the truth is known for validation images
    and for test images with data.truth (the sample's).
    """
    started = time.perf_counter()
    if not names:
        raise gr.Error("Pick at least one variant.")
    photo, mask, image, fed = _input(app, value, key)
    label, image_id = (image.label, image.image_id) if image is not None else (None, "upload")
    truth = fed.truth if fed is not None else None
    boxes = fed.boxes if fed is not None else None
    folder = app.outputs / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id)

    def save(name: str, rgb: np.ndarray) -> str:
        path = folder / f"{stem}-{name}.png"
        write_bytes_atomic(path, core.png_bytes(photo.with_pixels(rgb, mask)))
        return str(path)

    width, height = photo.size
    outlined = [(b.x, b.y, b.w, b.h) for b in (boxes or core.mask_boxes(mask))]
    shown = Results(width, height, outlined)
    masked = photo.rgb.copy()
    masked[mask] = 0
    fed_line = f"fed: {fed.fed}" if fed is not None else "fed: the uploaded photo"
    shown.pictures.append(Shown(save("masked", masked), "masked input", fed_line))
    if truth is not None:
        shown.pictures.append(Shown(save("truth", truth), "ground truth", image.truth_path.name))
    rows, problems, files = [], [], []
    for name in names:
        try:
            result = app.run(name, photo.rgb, mask, label, image_id, truth, boxes)
        except core.PipelineError as exc:
            problems.append((name, str(exc)))
            continue
        path = save(name, result.image)
        files.append(path)
        shown.pictures.append(Shown(path, name, "", result.rmse))
        score = "-" if result.rmse is None else f"{result.rmse:.4f}"
        rows.append(f"| {name} | {result.load_seconds:.2f} | {result.seconds:.2f} | {score} |")
    if not files:
        raise gr.Error(html.escape("No variant produced a result. " + " ".join(f"{n}: {m}" for n, m in problems),
                                   quote=False), print_exception=False)
    scored = ("box RMSE: over the image's own boxes, as the pipeline scores it" if boxes
              else "box RMSE: over the painted pixels" if truth is not None else "no truth known: no RMSE")
    status = (f"**{_plain(image_id)}** ({width}x{height}, {int(mask.sum())} pixels to fill), "
              f"{time.perf_counter() - started:.2f} s in all  \n{_plain(fed_line)}  \n{scored}\n\n"
              "| variant | load s | inpaint s | box RMSE |\n|---|---|---|---|\n" + "\n".join(rows))
    if problems:
        status += "\n\n**Failed**\n\n" + "\n".join(f"- **{n}**: {_plain(m)}" for n, m in problems)
    return results_html(shown), status, files


def build_page(app: App) -> gr.Blocks:
    images = app.images()
    image_note = (f"{len(images)} images of {app.data.root} (validation, then test): click one"
                  if images else f"No competition images: {app.images_error}")

    def refresh(force: bool = True):
        app.refresh(changed_only=not force)
        names = app.available()
        return gr.update(choices=names, value=[n for n in names if n == "telea"][:1]), variant_notes(app)

    with gr.Blocks(title="Photo Reconstruction - inpaint", analytics_enabled=False) as page:
        gr.Markdown("## Photo Reconstruction: inpaint a photo with any variant\n"
                    "Upload a photo (or click a competition image), paint the pixels to fill with the brush "
                    "(size, undo and clear are in the editor's toolbar) or place boxes, pick variants, press "
                    f"**Inpaint**. Photos up to {app.max_pixels / 1e6:.1f} megapixels; only the painted pixels "
                    "change.")
        source = gr.State(None)  # the competition image last picked (used while the editor shows it)
        with gr.Row():
            with gr.Column(scale=3):
                editor = refuse_bad_uploads(gr.ImageEditor(
                    label="Photo and mask", type="pil", image_mode="RGBA", sources=("upload", "clipboard"),
                    transforms=(), layers=False, brush=BRUSH, eraser=gr.Eraser(default_size=12), format="png",
                    canvas_size=(app.data.image_size, app.data.image_size), height=600, elem_id="editor"),
                    app.max_pixels)
            with gr.Column(scale=2):
                pick = gr.Gallery(value=app.thumbnails(), label="Competition images", columns=4, height=320,
                                  allow_preview=False, object_fit="cover", buttons=[], elem_id="pick", format="jpeg")
                gr.Markdown(_plain(image_note), elem_id="pick-note")
                with gr.Group():
                    own = gr.Button("Mask: the image's own boxes", size="sm", elem_id="own-boxes")
                    with gr.Row():
                        count = gr.Number(value=app.data.boxes_per_image, precision=0, minimum=1,
                                          label=f"N boxes ({app.data.box_size}px)")
                        seed = gr.Number(value=0, precision=0, label="seed")
                    corners = gr.Textbox(label="Box corners x,y; x,y (empty: N at random)", max_lines=1)
                    with gr.Row():
                        place_button = gr.Button("Mask: place boxes", size="sm")
                        clear_button = gr.Button("Clear mask", size="sm", elem_id="clear-mask")
                names = app.available()
                chosen = gr.CheckboxGroup(choices=names, value=[n for n in names if n == "telea"][:1],
                                          label="Variants", elem_id="variants")
                with gr.Accordion("Variants that cannot run here, and why", open=False):
                    notes = gr.Markdown(variant_notes(app), elem_id="unavailable")
                refresh_button = gr.Button("Look for variants again", size="sm")
                run_button = gr.Button("Inpaint", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        results = gr.HTML(results_html(None), elem_id="results", js_on_load=RESULTS_JS, min_height=40)
        downloads = gr.File(label="Results as PNG", file_count="multiple", elem_id="downloads")

        def picked(evt: gr.SelectData):
            return pick_thumbnail(app, evt.index)

        pick.select(picked, None, [editor, source], api_name=False)
        own.click(lambda value, key: own_boxes(app, value, key), [editor, source], [editor], api_name=False)
        place_button.click(lambda value, n, xy, s: place(app, value, n, xy, s), [editor, count, corners, seed],
                           [editor], api_name=False)
        clear_button.click(clear_mask, [editor], [editor], api_name=False)
        refresh_button.click(refresh, None, [chosen, notes], api_name=False)
        # a reload shows the variants trained (or removed) since the server started
        page.load(lambda: refresh(force=False), None, [chosen, notes], api_name=False)

        def inpaint(value, key, names):
            return run(app, value, key, names)

        # different variants may run side by side; the same variant waits on its lock (Models)
        run_button.click(None, None, None, js=MARK_STALE_JS, api_name=False)
        run_button.click(inpaint, [editor, source, chosen], [results, status, downloads], api_name="inpaint",
                         concurrency_limit=2).success(None, None, None, js=SHOW_RESULTS_JS, api_name=False)
    return page
