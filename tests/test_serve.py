"""The web app (make serve): the HTTP route and the page's endpoint called from Python (requests and
gradio_client), every bad input, models loaded once and locked per variant, and one run in a real
headless browser (Debian's chromium driven by Playwright).

One server, in this process, serves the API tests: it binds 127.0.0.1 on a free port and stops
at the end of the module; any lookup of a host other than this machine fails the tests (Gradio
must not phone home). The browser test starts `python -m pipeline serve` as a subprocess.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.checkpoint import save_checkpoint
from pipeline.config import load_variant
from pipeline.data.boxes import boxes_mask
from pipeline.inpainters import pix2pix as p2p
from pipeline.inpainters.base import METHODS, InpaintBatch, Inpainter
from tests.conftest import REPO

# gradio 6.31's queue calls pandas options that pandas 3 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

MAX_PIXELS = 600 * 600  # the test server's limit: a "huge" image stays cheap to make
TINY = dict(ngf=8, depth=4, ndf=8, norm="instance", dropout=False, hole_fill="telea")


class SlowInpainter(Inpainter):
    """Fills with grey after a pause, counting how often it is built and how many run at once."""

    builds = 0
    active = 0
    most_active = 0
    guard = threading.Lock()

    @classmethod
    def check_params(cls, variant):
        pass

    @classmethod
    def from_config(cls, variant):
        with cls.guard:
            cls.builds += 1
        return cls()

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        cls = type(self)
        with cls.guard:
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
        time.sleep(0.4)
        with cls.guard:
            cls.active -= 1
        out = batch.masked_images.copy()
        out[batch.masks] = 128
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_checkpoint(root: Path, name: str) -> Path:
    """configs/<name>.yaml (a tiny pix2pix) and its checkpoint, written by the pipeline's own
    checkpoint code (untrained weights: the app only needs a loadable generator)."""
    path = root / "checkpoints" / name / "best.pt"
    config = _write_config(root, name, "pix2pix", {**TINY, "checkpoint": str(path)})
    variant = load_variant(config)
    typed = p2p.FAMILY.config(variant)
    torch.manual_seed(0)
    save_checkpoint(path, {"config": {**variant.to_dict(), "params": typed.params()},
                           "generator": p2p.FAMILY.build_generator(typed).state_dict()})
    return path


def _write_config(root: Path, name: str, method: str, params: dict | None = None) -> Path:
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "method": method, "params": params or {}}))
    return path


@pytest.fixture(scope="module")
def offline_module():
    """Any lookup of a host other than this machine fails (module-wide: the server's threads too)."""
    real = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"the web app tried to reach {host!r}; it must stay offline")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", local_only)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def site(sample_template, tmp_path_factory) -> Path:
    """A folder with the small sample, variant configs and checkpoints:

    telea, mean (copied from configs/); slow (the test method above); tiny (a pix2pix with a
    valid checkpoint); flaky (the same, for the test that corrupts it); missing (its checkpoint
    does not exist); broken (its checkpoint is garbage); orphan (a checkpoint with no config);
    a sweep file (skipped).
    """
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(sample_template / "data", root / "data")
    (root / "configs").mkdir()
    for name in ("telea", "mean"):
        shutil.copy(REPO / "configs" / f"{name}.yaml", root / "configs")
    shutil.copy(REPO / "configs" / "sd-prompts.yaml", root / "configs")
    _write_config(root, "slow", "slow")
    _tiny_checkpoint(root, "tiny")
    _tiny_checkpoint(root, "flaky")
    _write_config(root, "missing", "pix2pix", {**TINY, "checkpoint": str(root / "checkpoints/missing/best.pt")})
    _write_config(root, "broken", "pix2pix", {**TINY, "checkpoint": str(root / "checkpoints/broken/best.pt")})
    (root / "checkpoints/broken").mkdir(parents=True)
    (root / "checkpoints/broken/best.pt").write_bytes(b"not a checkpoint at all")
    (root / "checkpoints/orphan").mkdir(parents=True)
    (root / "checkpoints/orphan/best.pt").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def server(site, offline_module):
    """The app serving `site` on 127.0.0.1:<free port> in a thread; stopped after the module."""
    import uvicorn

    from pipeline.serve import App, build_app
    from pipeline.serve.server import OFFLINE_ENV

    with pytest.MonkeyPatch.context() as mp:
        for name, value in OFFLINE_ENV.items():  # as `serve` sets them
            mp.setenv(name, value)
        mp.setitem(METHODS, "slow", "tests.test_serve:SlowInpainter")
        app = App(configs_dir=site / "configs", checkpoints_dir=site / "checkpoints",
                  data_root=site / "data/sample", max_pixels=MAX_PIXELS, truth=site / "data/sample-truth")
        port = _free_port()
        uv = uvicorn.Server(uvicorn.Config(build_app(app), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
        thread = threading.Thread(target=uv.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.05)
        try:
            yield app, f"http://127.0.0.1:{port}"
        finally:
            uv.should_exit = True
            thread.join(timeout=10)
            assert not thread.is_alive(), "the server did not stop within 10 s"


def _photo(width: int = 300, height: int = 200, seed: int = 0) -> np.ndarray:
    """A smooth RGB test photo, uint8 (H, W, 3), no pure black pixel (so blanks can be told apart)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    channels = [np.sin(x / (17 + 5 * c) + y / (23 + 3 * c) + c) for c in range(3)]
    image = np.stack(channels, -1) * 100 + 128 + rng.normal(0, 4, (height, width, 3))
    return np.clip(image, 1, 255).astype(np.uint8)


def _png(image: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _mask(width: int, height: int, box=(120, 60, 60, 50)) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros((height, width), bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _post(url: str, image: bytes, mask: bytes, variant: str = "telea") -> httpx.Response:
    return httpx.post(f"{url}/api/inpaint", files={"image": ("photo", image), "mask": ("mask.png", mask)},
                      data={"variant": variant}, timeout=60)


def _figures(results: str) -> list[tuple[str, Path]]:
    """(caption, PNG path) of each picture of the page's results HTML, in order."""
    import html
    import re

    return [(html.unescape(caption), Path(html.unescape(path))) for caption, path in re.findall(
        r"<figure class='result' data-caption='([^']*)'><div class='frame'><img src='gradio_api/file=([^']*)'",
        results)]


def _text(shown: str) -> str:
    """The page's Markdown or HTML as it reads: escapes undone."""
    import html
    import re

    return html.unescape(re.sub(r"\\(.)", r"\1", shown))


def _decode(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


# --- the package's layout ----------------------------------------------------------------------

def _serve_imports() -> dict[str, set[str]]:
    """module -> the pipeline.serve modules it imports (anywhere in it, a function body too), read
    from the source with ast; `from pipeline.serve import inpaint` counts as pipeline.serve.inpaint.
    The parent package that Python runs first is not counted: pipeline/serve/__init__.py only
    re-exports and no module of the package imports it."""
    folder = REPO / "pipeline/serve"
    modules = {f"pipeline.serve.{p.stem}" if p.stem != "__init__" else "pipeline.serve": p
               for p in folder.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                package = name if path.stem == "__init__" else name.rpartition(".")[0]
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_of_the_web_app_imports_one_that_imports_it_back():
    graph = _serve_imports()

    def circle(start: str, path: list[str]) -> list[str] | None:
        for target in sorted(graph[path[-1]]):
            if target == start:
                return path + [target]
            if target not in path and (found := circle(start, path + [target])):
                return found
        return None

    circles = [" -> ".join(found) for name in graph if (found := circle(name, [name]))]
    assert not circles, f"import circles in pipeline/serve: {circles}"
    others = [name for name, targets in graph.items() if "pipeline.serve" in targets]
    assert not others, f"{others} import the package itself (whose __init__ imports them back)"
    assert graph["pipeline.serve.server"] >= {"pipeline.serve.app", "pipeline.serve.page"}
    assert graph["pipeline.serve"] == {"pipeline.serve.app", "pipeline.serve.server"}
    assert graph["pipeline.serve.inpaint"] == set(), "inpaint.py is the bottom layer"


# --- the HTTP route -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["telea", "tiny"])
def test_route_fills_only_the_mask_at_the_photos_size(server, variant):
    app, url = server
    photo = _photo(300, 200)
    mask = _mask(300, 200)
    result = np.asarray(_decode(_post(url, _png(photo), _png(mask.astype(np.uint8) * 255), variant)))
    assert result.shape == photo.shape
    assert np.array_equal(result[~mask], photo[~mask])
    assert not np.array_equal(result[mask], photo[mask])
    assert (result[mask] > 0).mean() > 0.9, "the hole was left blank"


def test_modes_and_exif_orientation(server):
    _, url = server
    photo = _photo(120, 80)
    # RGBA with transparency: the result keeps the alpha and the colours outside the mask
    rgba = np.dstack([photo, np.tile(np.linspace(0, 255, 120).astype(np.uint8), (80, 1))])
    mask = _mask(120, 80, (40, 20, 30, 30))
    holes = _png(mask.astype(np.uint8) * 255)
    out = np.asarray(_decode(_post(url, _png(Image.fromarray(rgba, "RGBA")), holes)))
    assert out.shape == (80, 120, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3]) and np.array_equal(out[~mask], rgba[~mask])
    # grayscale in, grayscale out
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    out = _decode(_post(url, _png(Image.fromarray(gray, "L")), holes))
    assert out.mode == "L" and np.array_equal(np.asarray(out)[~mask], gray[~mask])
    # 16-bit grayscale comes back 8-bit
    deep = Image.fromarray(gray.astype(np.uint16) * 257)
    out = _decode(_post(url, _png(deep), holes))
    assert out.mode == "L" and np.array_equal(np.asarray(out)[~mask], gray[~mask])
    # a JPEG stored 120x80 with EXIF orientation 6 shows (and is inpainted) as 80x120
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _png(Image.fromarray(photo), "JPEG", quality=95, exif=exif)
    shown = np.asarray(Image.open(io.BytesIO(jpeg)).transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    upright = _mask(80, 120, (20, 40, 30, 30))
    out = np.asarray(_decode(_post(url, jpeg, _png(upright.astype(np.uint8) * 255))))
    assert out.shape == (120, 80, 3) and np.array_equal(out[~upright], shown[~upright])
    wrong = _post(url, jpeg, holes)  # a mask drawn on the stored (unrotated) pixels
    assert wrong.status_code == 400 and "120x80, but the image is 80x120" in wrong.json()["error"]
    # a brush layer: opaque strokes on a transparent mask
    layer = np.zeros((80, 120, 4), np.uint8)
    layer[mask] = (255, 0, 255, 150)
    out = np.asarray(_decode(_post(url, _png(photo), _png(Image.fromarray(layer, "RGBA")))))
    assert np.array_equal(out[~mask], photo[~mask]) and not np.array_equal(out[mask], photo[mask])


def test_route_refuses_bad_input_with_a_message_and_keeps_serving(server):
    _, url = server
    photo, mask = _photo(), _png(_mask(300, 200).astype(np.uint8) * 255)
    cases = {
        "not an image": (_post(url, b"%PDF-1.4 this is no photo", mask), 400, "image: not an image"),
        "empty file": (_post(url, b"", mask), 400, "image: the file is empty"),
        "empty mask": (_post(url, _png(photo), _png(np.zeros((200, 300), np.uint8))), 400,
                       "the mask is empty: paint over the pixels to fill (white on black"),
        "huge": (_post(url, _png(np.full((700, 700, 3), 90, np.uint8)), mask), 413, "0.5 megapixels; the limit is 0.4"),
        "unknown variant": (_post(url, _png(photo), mask, "nope"), 404, "no variant 'nope'; runnable:"),
        "missing checkpoint": (_post(url, _png(photo), mask, "missing"), 422, "no checkpoint there"),
        "corrupt checkpoint": (_post(url, _png(photo), mask, "broken"), 422, "not a checkpoint of this pipeline"),
        "orphan checkpoint": (_post(url, _png(photo), mask, "orphan"), 422, "no configs/orphan.yaml"),
    }
    for case, (response, status, words) in cases.items():
        assert response.status_code == status, (case, response.text)
        assert words in response.json()["error"], (case, response.json())
    assert _post(url, _png(photo), mask).status_code == 200  # still serving


def test_a_mask_over_the_whole_image_is_refused(server):
    """Nothing is left to fill from: a 400 with a message, not a black or grey picture."""
    from pipeline.serve import page

    app, url = server
    photo = _photo(300, 200)
    response = _post(url, _png(photo), _png(np.full((200, 300), 255, np.uint8)))
    assert response.status_code == 400, response.text
    assert "the mask covers the whole image: no pixel is left to fill from" in response.json()["error"]
    import gradio as gr

    layer = Image.fromarray(np.full((200, 300, 4), (255, 0, 255, 150), np.uint8), "RGBA")
    value = {"background": Image.fromarray(photo).convert("RGBA"), "layers": [layer], "composite": None}
    with pytest.raises(gr.Error, match="the mask covers the whole image"):
        page.run(app, value, None, ["telea"])


def test_route_answers_every_bad_form_field_with_an_error_and_echoes_no_more_than_a_prefix(server):
    _, url = server
    photo, mask = _png(_photo()), _png(_mask(300, 200).astype(np.uint8) * 255)
    inpaint = f"{url}/api/inpaint"
    cases = {
        "nothing sent": (httpx.post(inpaint, timeout=60), 400,
                         ["the request is not a multipart form", "image: missing; send the photo as a file",
                          "mask: missing; send the mask as a file"]),
        "no mask": (httpx.post(inpaint, files={"image": ("photo.png", photo)}, timeout=60), 400,
                    ["mask: missing; send the mask as a file"]),
        "image as text": (httpx.post(inpaint, files={"mask": ("mask.png", mask)}, data={"image": "photo.png"},
                                     timeout=60), 400, ["image: expected the photo as a file, got text"]),
        "variant as a file": (httpx.post(inpaint, files={"image": ("photo.png", photo), "mask": ("mask.png", mask),
                                                         "variant": ("variant.txt", b"telea")}, timeout=60), 400,
                              ["variant: expected a variant's name as text", "got a file"]),
        "a 2,000,000-character variant": (_post(url, photo, mask, "v" * 2_000_000), 400,
                                          ["the form could not be read"]),
        "a 500,000-character variant": (_post(url, photo, mask, "v" * 500_000), 404,
                                        ["no variant 'vvvv", "(500,000 characters); runnable: "]),
    }
    for case, (response, status, words) in cases.items():
        assert response.status_code == status, (case, response.text[:500])
        assert list(response.json()) == ["error"], (case, response.text[:500])
        assert all(w in response.json()["error"] for w in words), (case, response.json())
        assert len(response.text) < 800, (case, f"{len(response.text)} characters answered")
        assert "tempfile" not in response.text.lower() and "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv" not in response.text
    assert httpx.get(f"{url}/api/nope", timeout=10).json() == {
        "error": "'/api/nope': no such route; the routes are POST /api/inpaint, GET /api/variants"}
    assert httpx.get(inpaint, timeout=10).json() == {"error": "GET /api/inpaint: use POST"}
    assert _post(url, photo, mask).status_code == 200  # still serving


def test_variants_list_follows_a_checkpoint_damaged_removed_or_restored_while_serving(server, site):
    app, url = server

    def listed() -> dict:
        return {v["name"]: v for v in httpx.get(f"{url}/api/variants", timeout=30).json()}

    checkpoint = _tiny_checkpoint(site, "fragile")
    config = site / "configs/fragile.yaml"
    try:
        app.refresh()
        assert listed()["fragile"]["available"]
        good = checkpoint.read_bytes()
        checkpoint.write_bytes(b"damaged while serving")
        now = listed()["fragile"]
        assert not now["available"] and "not a checkpoint of this pipeline" in now["why"], now
        photo, mask = _png(_photo()), _png(_mask(300, 200).astype(np.uint8) * 255)
        response = _post(url, photo, mask, "fragile")
        assert response.status_code == 422 and "cannot run here" in response.json()["error"], response.text
        checkpoint.write_bytes(good)
        assert listed()["fragile"]["available"], "a checkpoint put back is available again"
        assert _post(url, photo, mask, "fragile").status_code == 200
        checkpoint.unlink()
        now = listed()["fragile"]
        assert not now["available"] and "no checkpoint there" in now["why"], now
    finally:
        config.unlink()
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
    assert "fragile" not in listed(), "a config removed is no longer listed"


def test_variants_are_discovered_with_why_not(server):
    _, url = server
    listed = {v["name"]: v for v in httpx.get(f"{url}/api/variants", timeout=10).json()}
    assert {n for n, v in listed.items() if v["available"]} == {"telea", "mean", "slow", "tiny", "flaky"}
    assert "no checkpoint there" in listed["missing"]["why"]
    assert "not a checkpoint of this pipeline" in listed["broken"]["why"]
    assert "no configs/orphan.yaml" in listed["orphan"]["why"]
    assert not any(name.startswith("sd") for name in listed), "a sweep file is not a variant"
    assert list(listed)[:2] == ["mean", "telea"], "the any-size methods come first"


def test_a_model_is_loaded_once_and_a_second_request_waits_its_turn(server):
    app, url = server
    photo, mask = _png(_photo()), _png(_mask(300, 200).astype(np.uint8) * 255)
    SlowInpainter.builds = SlowInpainter.most_active = 0
    responses = [None, None, None]

    def call(i):
        responses[i] = _post(url, photo, mask, "slow")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert SlowInpainter.builds == 1, "each request built its own model"
    assert SlowInpainter.most_active == 1, "two requests ran the same model at once"
    assert elapsed >= 3 * 0.4 - 0.05
    assert app.models.loads["slow"] == 1
    # a pix2pix checkpoint too: loaded by the first request, reused by the next
    before = app.models.loads.get("tiny", 0)
    for _ in range(2):
        assert _post(url, photo, mask, "tiny").status_code == 200
    assert app.models.loads["tiny"] - before <= 1 and app.models.loads["tiny"] >= 1


# --- the page's endpoint, through gradio_client ---------------------------------------------

@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    _, url = server
    client = Client(url + "/", verbose=False, analytics_enabled=False,
                    download_files=str(tmp_path_factory.mktemp("client")))
    yield client
    client.close()  # its heartbeat stream would hold the server open


def _editor(tmp_path: Path, photo: np.ndarray | None, mask: np.ndarray | None, name="photo.png") -> dict:
    """An ImageEditor value as the browser sends it: the photo, and the mask as a brush layer."""
    from gradio_client import handle_file

    value = {"background": None, "layers": [], "composite": None}
    if photo is not None:
        path = tmp_path / name
        path.write_bytes(_png(photo))
        value["background"] = handle_file(str(path))
    if mask is not None:
        layer = np.zeros((*mask.shape, 4), np.uint8)
        layer[mask] = (255, 0, 255, 150)
        path = tmp_path / "layer.png"
        Image.fromarray(layer, "RGBA").save(path)
        value["layers"] = [handle_file(str(path))]
    return value


def test_page_endpoint_shows_masked_input_and_each_result(client, tmp_path):
    photo, mask = _photo(), _mask(300, 200)
    results, status, files = client.predict(_editor(tmp_path, photo, mask), ["telea", "tiny"], api_name="/inpaint")
    figures = _figures(results)
    assert [caption for caption, _ in figures] == ["masked input", "telea", "tiny"]
    assert "fed: the uploaded photo" in results and "fed: the uploaded photo" in status
    masked = np.asarray(Image.open(figures[0][1]))
    assert (masked[mask] == 0).all() and np.array_equal(masked[~mask], photo[~mask])
    assert sorted(Path(f).name for f in files) == ["upload-telea.png", "upload-tiny.png"]
    for path in files:
        result = np.asarray(Image.open(path))
        assert np.array_equal(result[~mask], photo[~mask]) and not np.array_equal(result[mask], photo[mask])
    assert "| telea |" in status and "| tiny |" in status


def test_page_endpoint_refuses_bad_input_with_a_message(client, tmp_path):
    from gradio_client.exceptions import AppError

    photo, mask = _photo(), _mask(300, 200)
    text = tmp_path / "notes.png"
    text.write_text("this is not a photo")
    from gradio_client import handle_file

    cases = {
        "no image": (_editor(tmp_path, None, None), ["telea"], "No image"),
        "not an image": ({"background": handle_file(str(text)), "layers": [], "composite": None}, ["telea"],
                         "not an image"),
        "empty mask": (_editor(tmp_path, photo, None), ["telea"], "the mask is empty: paint over the pixels to fill "
                       "(with the brush, the pen in the editor's toolbar"),
        "huge": (_editor(tmp_path, np.full((700, 700, 3), 90, np.uint8), _mask(700, 700), "huge.png"), ["telea"],
                 "700x700 is 0.5 megapixels; the limit is 0.4 megapixels"),
        "no variant": (_editor(tmp_path, photo, mask), [], "Pick at least one variant"),
    }
    for case, (value, names, words) in cases.items():
        with pytest.raises(AppError) as err:
            client.predict(value, names, api_name="/inpaint")
        assert words in str(err.value), (case, str(err.value))
    results, _, _ = client.predict(_editor(tmp_path, photo, mask), ["telea"], api_name="/inpaint")
    assert len(_figures(results)) == 2  # still serving


def test_a_checkpoint_corrupted_or_removed_after_start_is_reported_not_served(server, client, tmp_path):
    app, url = server
    photo, mask = _photo(), _mask(300, 200)
    value = _editor(tmp_path, photo, mask)
    results, status, _ = client.predict(value, ["flaky"], api_name="/inpaint")  # loads it
    assert len(_figures(results)) == 2
    checkpoint = Path(load_variant(app.configs_dir / "flaky.yaml").params["checkpoint"])
    checkpoint.write_bytes(b"garbage")
    results, status, files = client.predict(value, ["flaky", "telea"], api_name="/inpaint")
    assert [caption for caption, _ in _figures(results)] == ["masked input", "telea"]
    assert "flaky" in status and "not a checkpoint of this pipeline" in status
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No variant produced a result. flaky: .*not a checkpoint of this pipeline"):
        client.predict(value, ["flaky"], api_name="/inpaint")
    checkpoint.unlink()
    response = _post(url, _png(photo), _png(mask.astype(np.uint8) * 255), "flaky")
    assert response.status_code == 422 and "no checkpoint there" in response.json()["error"]
    assert _post(url, _png(photo), _png(mask.astype(np.uint8) * 255)).status_code == 200


def _run_picked(app, key: str, names: list[str]):
    """The page's flow on a competition image, as its events call it: pick, own boxes, Inpaint.
    (The picked image's key lives in a State, which gradio_client cannot set.)"""
    from pipeline.serve import page

    editor, picked = page.pick_image(app, key)
    assert picked == key
    value = _as_sent(page.own_boxes(app, _as_sent(editor), key))
    return value, page.run(app, value, key, names)


def _pipeline_image_rmse(app, variant_name: str, split: str, image_id: str, tmp_path: Path) -> float:
    """The pipeline's own RMSE of one image: `predict_split` on the split (the files it feeds), the
    prediction read back and scored over the image's boxes against score.truth_path (as report.py's
    gallery scores an image)."""
    from pipeline.data.boxes import box_pixels
    from pipeline.data.competition import load_competition, read_image
    from pipeline.data.predictions import load_prediction
    from pipeline.predict import predict_split
    from pipeline.score import rmse, truth_path

    variant = load_variant(app.configs_dir / f"{variant_name}.yaml")
    variant.data = app.data
    competition = load_competition(app.data)
    run = predict_split(variant, competition, split, root=tmp_path / "predictions", progress=False)
    record = next(r for r in competition.split(split) if r.image_id == image_id)
    size = app.data.image_size
    predicted = load_prediction(run.folder, record, size)
    return rmse(box_pixels(predicted, record.boxes),
                box_pixels(read_image(truth_path(competition, record), size), record.boxes))


@pytest.mark.parametrize("split", ["val", "test"])
def test_the_page_scores_a_competition_image_as_the_pipeline_does(server, tmp_path, split):
    """Issue 18.1: for the same image, boxes and variant the page's box RMSE is the pipeline's
    per-image RMSE: a validation image is fed as the competition's masked JPEG copy (not the clean
    photo with its boxes blanked), a sample test image as given, scored against data.truth; the
    page says which file it fed, and shows the truth."""
    from pipeline.data.competition import read_image
    from pipeline.serve import inpaint as core

    app, _ = server
    image = next(i for i in app.images().values() if i.split == split)
    assert image.truth_path is not None, "the sample's test truth (data/sample-truth) is known to the app"
    value, (results, status, files) = _run_picked(app, image.key, ["telea"])
    figures = _figures(results)
    assert [caption for caption, _ in figures] == ["masked input", "ground truth", "telea"]
    assert results.count("class='box'") == 4 * len(image.boxes), "every picture (and the comparison) outlines the boxes"
    pipeline_rmse = _pipeline_image_rmse(app, "telea", split, image.image_id, tmp_path)
    shown = results.split("box RMSE ")[1][:6]
    assert float(shown) == pytest.approx(pipeline_rmse, abs=5e-5) and "| telea | " in status
    # the page's number, unrounded: the result PNG scored over the boxes, as the page does it
    truth = read_image(image.truth_path)
    page_rmse = core.box_rmse(np.asarray(Image.open(figures[2][1]).convert("RGB")), truth, None, image.boxes)
    assert page_rmse == pytest.approx(pipeline_rmse, abs=1e-6)
    masked = np.asarray(Image.open(figures[0][1]).convert("RGB"))
    fed = read_image(image.input_path)
    mask = boxes_mask(image.boxes, *masked.shape[:2])
    assert np.array_equal(masked[~mask], fed[~mask]) and (masked[mask] == 0).all()
    words = "the competition's masked copy" if split == "val" else "the test image as given"
    assert words in _text(status) and words in _text(results) and image.input_path.name in status
    assert np.array_equal(np.asarray(Image.open(figures[1][1]).convert("RGB")), truth)
    if split == "val":
        assert image.input_path != image.path, "the sample's validation images have a masked copy"
        # what the page fed before: the clean photo with its boxes blanked, a different score
        clean = core.inpaint(app.models, app.variant("telea"), read_image(image.path), mask, truth=truth,
                             boxes=image.boxes)
        assert abs(clean.rmse - pipeline_rmse) > 1e-4


def test_with_clean_validation_inputs_the_clean_photo_is_fed_as_the_pipeline_does(site):
    """data.val_inputs: clean (the pipeline feeds the clean photo, boxes blanked): so does the page."""
    from pipeline.config import data_config
    from pipeline.data.competition import read_image
    from pipeline.serve import inpaint as core

    data = data_config({"root": site / "data/sample", "truth": None, "val_inputs": "clean"})
    image = next(i for i in core.competition_images(data) if i.split == "val")
    fed = core.competition_input(image, boxes_mask(image.boxes, 256, 256))
    assert image.fed_path == image.path and np.array_equal(fed.pixels, read_image(image.path))
    assert "the clean photo, as the pipeline's scores feed it" in fed.fed and fed.boxes == image.boxes


def test_a_mask_that_leaves_a_validation_box_unpainted_is_fed_the_clean_photo(server):
    """The masked copy's blank boxes must not reach the model as context: a mask that leaves one
    of the image's boxes unpainted is fed the clean photo, and says so; its RMSE is over the
    painted pixels. A photo uploaded after the pick replaces it: no truth."""
    from pipeline.score import rmse
    from pipeline.serve import inpaint as core
    from pipeline.serve import page

    app, _ = server
    image = next(i for i in app.images().values() if i.split == "val")
    editor, key = page.pick_image(app, image.key)
    value = _as_sent(editor)
    truth = core.shown_pixels(image)
    assert np.array_equal(np.asarray(value["background"].convert("RGB")), truth)
    value = _as_sent(page.own_boxes(app, value, key))
    mask = boxes_mask(image.boxes[:1], *truth.shape[:2])  # the first box only
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (255, 0, 255, 150)
    value["layers"] = [Image.fromarray(layer, "RGBA")]
    results, status, files = page.run(app, value, key, ["telea"])
    assert "fed: Unmasked_Train/" in _text(status) and "leaves some of the image's own boxes unpainted" in _text(status)
    result = np.asarray(Image.open(files[0]))
    assert np.array_equal(result[~mask], truth[~mask])
    assert f"box RMSE {rmse(result[mask], truth[mask]):.4f}" in results and "over the painted pixels" in status
    value["background"] = Image.fromarray(_photo(256, 256)).convert("RGBA")
    results, status, _ = page.run(app, value, key, ["telea"])
    assert [caption for caption, _ in _figures(results)] == ["masked input", "telea"] and "**upload**" in status


def _as_sent(editor) -> dict:
    """What the page gets back from an editor the server set: its images, decoded (PIL RGBA)."""
    value = editor.value
    return {"background": Image.open(value["background"]["path"]).convert("RGBA"),
            "layers": [Image.open(layer["path"]).convert("RGBA") for layer in value["layers"]], "composite": None}


def test_boxes_placed_at_given_or_random_corners(server):
    from pipeline.serve import page

    app, _ = server
    value = {"background": Image.fromarray(_photo(300, 200)).convert("RGBA"), "layers": [], "composite": None}
    layers = _as_sent(page.place(app, value, 2, "10,20; 200,100", 0))["layers"]
    assert len(layers) == 1
    placed = np.asarray(layers[0])[..., 3] > 0
    assert placed.sum() == 2 * 75 * 75 and placed[20, 10] and placed[174, 274] and not placed[19, 10]
    random = np.asarray(_as_sent(page.place(app, value, 3, "", 7))["layers"][0])[..., 3] > 0
    assert random.sum() == 3 * 75 * 75
    import gradio as gr

    for corners, words in (("250,10", "leaves the 300x200 image"), ("ten,20", "expected x,y")):
        with pytest.raises(gr.Error, match=words):
            page.place(app, value, 2, corners, 0)
    with pytest.raises(gr.Error, match="pick a competition image first"):
        page.own_boxes(app, value, None)


# --- a real browser ----------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # nothing but this machine resolves: a page that reaches out fails at once, never hangs
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def _browser_missing() -> str:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install -r requirements.txt)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium, as root; `make test` does it)")
    return " and ".join(missing)


@pytest.fixture
def served_subprocess(workspace, tmp_path):
    """`python -m pipeline serve` on 127.0.0.1:<free port> in the workspace; stopped afterwards."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost"}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port),
                                "--data", "data/sample"], cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while "serving on" not in (tmp_path / "serve.log").read_text():
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "make serve did not say it serves within 60 s"
            time.sleep(0.1)
        # no retry: it says "serving on" once it answers, not before
        assert httpx.get(f"{url}/api/variants", timeout=10).status_code == 200
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_serve_says_where_it_serves_once_it_answers(served_subprocess, tmp_path):
    log = (tmp_path / "serve.log").read_text()
    assert f"serving on {served_subprocess}/" in log and "Traceback" not in log


def test_serve_refuses_a_bad_address_or_limit_in_one_line_before_serving(workspace, capsys, monkeypatch):
    """A port out of range or in use, a host that does not resolve or is not this machine's, a
    limit below 1 pixel: one line saying what is wrong, a non-zero exit, and no "serving on"."""
    import uvicorn

    from pipeline.cli import main

    def served(*args, **kwargs):
        raise AssertionError("it went on to serve")

    monkeypatch.setattr(uvicorn.Server, "run", served)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, free = taken.getsockname()[1], _free_port()
        cases = {
            "port out of range": (["--port", "99999"], "port 99999: not a TCP port; choose one in 1..65535"),
            "port in use": (["--port", str(busy)], f"http://127.0.0.1:{busy}/: port {busy} is in use"),
            "unknown host": (["--host", "no-such-host.invalid", "--port", str(free)],
                             "host 'no-such-host.invalid': not an address, and not a name that resolves"),
            "not this machine": (["--host", "192.0.2.1", "--port", str(free)],
                                 "192.0.2.1 is not an address of this machine"),
            "limit below 1 pixel": (["--max-pixels", "-5", "--port", str(free)],
                                    "--max-pixels -5: the largest photo accepted must be at least 1 pixel"),
        }
        for case, (args, words) in cases.items():
            status = main(["serve", "--data", "data/sample", *args])
            out, err = capsys.readouterr()
            said = err.strip().splitlines()
            assert status != 0 and "serving on" not in out, (case, out, err)
            assert len(said) == 1 and words in said[0], (case, err)


def _open_page(browser, url: str, height: int):
    """The web app's page in a 1400 px wide Chromium tab, loaded, with a 60 s wait for each step."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(60_000)
    page.goto(url + "/", wait_until="load")
    return page


@pytest.mark.skipif(bool(_browser_missing()), reason=f"browser test needs {_browser_missing()}")
def test_in_a_browser_upload_brush_run_telea(served_subprocess, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = _photo(256, 256, seed=3)
    upload = tmp_path / "photo.png"
    Image.fromarray(photo).save(upload)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = _open_page(browser, served_subprocess, height=1100)
            canvas = page.locator("#editor canvas").first
            canvas.wait_for()  # the editor's canvas is up: it takes the upload now
            page.locator("#editor input[type=file]").first.set_input_files(str(upload))
            page.wait_for_function("!document.querySelector('#editor').innerText.includes('Upload an image')")
            page.wait_for_timeout(500)  # the editor draws the photo, then takes strokes
            box = canvas.bounding_box()
            x, y = box["x"] + box["width"] / 2 - 50, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            for step in range(1, 7):  # each move costs the software-rendered canvas a redraw
                page.mouse.move(x + 16 * step, y + 3 * step)
            page.mouse.up()
            page.wait_for_timeout(1000)  # the editor hands the stroke layer to the server
            page.click("#run")
            done = ("[...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth > 0)"
                    ".length >= 2 || document.querySelector('[data-testid=toast-body]') !== null")
            page.wait_for_function(done)
            toasts = page.locator("[data-testid=toast-body]").all_inner_texts()
            shot = _screenshot(page, "serve-upload-brush-telea.png", full_page=True)
            assert not toasts, f"the page said: {toasts} (screenshot: {shot})"
            sources = page.eval_on_selector_all("#results img", "els => els.map(e => e.src)")
            captions = page.inner_text("#results")
            masked, result = (np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
                              for src in sources[:2])
        finally:
            browser.close()
    assert "telea" in captions
    assert shot.stat().st_size > 10_000
    stroke = (masked != photo).any(-1)  # the painted pixels: blank in the masked input
    assert 200 < stroke.sum() < 256 * 256 // 4, f"the stroke covers {stroke.sum()} pixels"
    assert (masked[stroke] == 0).all()
    assert np.array_equal(result[~stroke], photo[~stroke]), "pixels outside the stroke changed"
    assert not np.array_equal(result[stroke], photo[stroke]) and (result[stroke] > 0).mean() > 0.9


ARTIFACTS = REPO / "build/test-artifacts"  # screenshots kept for a person to look at (git-ignored)


def _screenshot(page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _checkpoint_from_repo_config(workspace: Path, name: str) -> Path:
    """checkpoints/<name>/best.pt for configs/<name>.yaml (a pix2pix), untrained weights written by
    the pipeline's own checkpoint code: a variant "trained" while the server runs."""
    path = workspace / "checkpoints" / name / "best.pt"
    variant = load_variant(REPO / "configs" / f"{name}.yaml")
    typed = p2p.FAMILY.config(variant)
    torch.manual_seed(0)
    save_checkpoint(path, {"config": {**variant.to_dict(), "params": typed.params()},
                           "generator": p2p.FAMILY.build_generator(typed).state_dict()})
    return path


CAPTIONS_SHOWN = """() => [...document.querySelectorAll('#results figure.result')].map(figure => {
  const caption = figure.querySelector('figcaption'), box = figure.getBoundingClientRect(),
        text = caption.getBoundingClientRect();
  return {caption: figure.dataset.caption, text: caption.innerText, boxes: figure.querySelectorAll('.box').length,
          inside: text.left >= box.left - 0.5 && text.right <= box.right + 0.5 && text.height > 0,
          cut: caption.scrollWidth > caption.clientWidth + 1 || caption.scrollHeight > caption.clientHeight + 1};
})"""


@pytest.mark.skipif(bool(_browser_missing()), reason=f"browser test needs {_browser_missing()}")
def test_in_a_browser_every_variant_on_a_validation_and_a_test_image(served_subprocess, workspace):
    """Issue 18.5 in Chromium: a variant trained after the start appears on reload; a validation
    image picked from its thumbnail, its own boxes, every variant: the results scroll into view,
    each caption whole, the boxes outlined, the fed file named, a before/after slider; a failed run
    (no mask: the message speaks of the brush) marks the results stale; a sample test image shows
    its truth and box RMSE. Screenshots in build/test-artifacts/serve-*.png."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = _open_page(browser, served_subprocess, height=1000)
            page.locator("#editor canvas").first.wait_for()
            assert page.locator("#editor").bounding_box()["height"] >= 550, "the editor's canvas is larger"
            assert "pix2pix-cpu" not in page.inner_text("#variants")
            _checkpoint_from_repo_config(workspace, "pix2pix-cpu")
            page.reload(wait_until="load")
            page.wait_for_function("document.querySelector('#variants')?.innerText.includes('pix2pix-cpu')")
            # a validation image from its thumbnail (validation images come first), its own boxes
            thumbnail = page.locator("#pick button.thumbnail-item").first
            key = thumbnail.locator("img").get_attribute("alt")
            assert key.startswith("val/")
            thumbnail.click()
            page.wait_for_function("!document.querySelector('#editor').innerText.includes('Upload an image')")
            page.wait_for_timeout(1000)
            page.click("#own-boxes")
            page.wait_for_timeout(1000)
            for label in page.locator("#variants label").all():
                if not label.locator("input").is_checked():
                    label.click()
            names = page.locator("#variants label").all_inner_texts()
            assert len(names) >= 5 and "pix2pix-cpu" in names, names
            page.evaluate("window.scrollTo(0, 0)")
            page.click("#run")
            page.wait_for_function(f"document.querySelectorAll('#results figure.result').length >= {len(names) + 2}"
                                   " && !document.getElementById('results').classList.contains('stale')"
                                   " || document.querySelector('[data-testid=toast-body]') !== null")
            toasts = page.locator("[data-testid=toast-body]").all_inner_texts()
            shot = _screenshot(page, "serve-val-every-variant.png")
            assert not toasts, f"the page said: {toasts} (screenshot: {shot})"
            page.wait_for_timeout(500)
            shot = _screenshot(page, "serve-val-every-variant.png")
            _screenshot(page, "serve-val-every-variant-full.png", full_page=True)
            in_view = page.evaluate("() => { const r = document.querySelector('#results figure').getBoundingClientRect();"
                                    " return r.top >= 0 && r.top < window.innerHeight; }")
            assert in_view, f"the results were not scrolled into view ({shot})"
            figures = page.evaluate(CAPTIONS_SHOWN)
            captions = [f["caption"] for f in figures]
            assert captions[:2] == ["masked input", "ground truth"] and sorted(captions[2:]) == sorted(names)
            for figure in figures:
                assert figure["inside"] and not figure["cut"], (figure, shot)
                assert figure["boxes"] == 2, (figure, "the image's two boxes outlined")
            for figure in figures[2:]:
                assert figure["text"].startswith(figure["caption"]) and "box RMSE 0." in figure["text"], figure
            assert "the competition's masked copy" in figures[0]["text"] and "Masked_Train/" in figures[0]["text"]
            assert "the competition's masked copy" in page.inner_text("#status")
            # before / after: the slider moves the cut, the right-hand picture can be any variant
            compare = page.locator("#results .compare")
            compare.scroll_into_view_if_needed()
            compare.locator("input.cut").fill("20")
            assert compare.evaluate("e => e.style.getPropertyValue('--cut')") == "20%"
            compare.locator("select.after").select_option(label="pix2pix-cpu")
            assert compare.locator("img.after").get_attribute("src").endswith("-pix2pix-cpu.png")
            assert compare.locator("img.before").get_attribute("src").endswith("-truth.png")
            _screenshot(page, "serve-before-after.png")
            # a run that fails (the mask cleared) says what to do and marks the results stale
            page.click("#clear-mask")
            page.wait_for_timeout(1000)
            page.click("#run")
            page.wait_for_selector("[data-testid=toast-body]", state="visible")
            toasts = page.locator("[data-testid=toast-body]").all_inner_texts()
            assert any("with the brush" in t for t in toasts) and not any("PNG" in t or "layer" in t for t in toasts)
            assert "stale" in page.get_attribute("#results", "class")
            banner = page.evaluate("getComputedStyle(document.getElementById('status'), '::before').content")
            assert "Stale: the results below are from an earlier run" in banner
            page.locator("#status").scroll_into_view_if_needed()
            page.wait_for_timeout(300)  # the message box slides in
            _screenshot(page, "serve-error-stale.png")
            for close in page.locator("[data-testid=toast-close]").all():
                close.click()
            # a sample test image: its truth (data/sample-truth) and box RMSE
            test_thumbnail = page.locator("#pick button.thumbnail-item:has(img[alt^='test/'])").first
            test_thumbnail.click()
            page.wait_for_timeout(1000)
            page.click("#own-boxes")
            page.wait_for_timeout(1000)
            page.click("#run")
            page.wait_for_function("!document.getElementById('results').classList.contains('stale')"
                                   " || document.querySelector('[data-testid=toast-body]') !== null")
            page.wait_for_timeout(500)
            shot = _screenshot(page, "serve-test-image.png")
            figures = page.evaluate(CAPTIONS_SHOWN)
            assert [f["caption"] for f in figures[:2]] == ["masked input", "ground truth"], (figures, shot)
            assert "the test image as given" in figures[0]["text"] and "box RMSE 0." in figures[2]["text"]
        finally:
            browser.close()
