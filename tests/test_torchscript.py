"""The torchscript family (LaMa, MI-GAN) with tiny stand-ins saved to disk: each convention (mask
polarity, value ranges, channel order, padding and cropping back) against values computed here,
the preflight's checks, the `weights` download against a local HTTP server, and fine-tuning.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.config import ConfigError, VariantConfig
from pipeline.data.boxes import Box
from pipeline.inpainters.base import InpaintBatch, build_inpainter, composite, preflight
from pipeline.inpainters.torchscript import TorchScriptNet, load_torchscript
from tests.tiny_torchscript import (LAMA_FILL, MIGAN_FILL, LamaProbe, MiganProbe, TinyLama, TinyMigan,
                                    save)


def ts_variant(weights: Path, convention: str, **params) -> VariantConfig:
    return VariantConfig(name=f"ts-{convention}", method="torchscript", batch_size=2,
                         params={"weights": str(weights), "convention": convention, "zero_shot": True, **params})


def two_box_batch(seed: int = 0) -> InpaintBatch:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    masks = np.zeros((2, 256, 256), bool)
    boxes = [[Box(10, 20, 75, 75), Box(150, 160, 75, 75)], [Box(0, 181, 75, 75), Box(181, 0, 75, 75)]]
    for mask, image_boxes in zip(masks, boxes):
        for b in image_boxes:
            mask[b.y:b.y + b.h, b.x:b.x + b.w] = True
    images[masks] = 0
    return InpaintBatch(images, masks, boxes, [None, None], ["a", "b"])


@pytest.mark.parametrize("convention, probe, fill", [
    ("lama", LamaProbe, lambda: np.round(np.array(LAMA_FILL) * 255)),
    ("migan", MiganProbe, lambda: np.round((np.array(MIGAN_FILL) + 1) * 127.5)),
])
def test_each_convention_fills_the_boxes_with_the_files_answer_in_rgb(tmp_path, convention, probe, fill):
    # the probes refuse any input off the convention (sizes, ranges, mask values, an unerased hole)
    variant = ts_variant(save(probe(0), tmp_path / "probe.pt"), convention)
    batch = two_box_batch()
    prediction = build_inpainter(variant).inpaint(batch)
    out = composite(batch.masked_images, batch.masks, prediction)
    # the probe's colour per channel, R then G then B, in the boxes (1 = hole) and nowhere else
    assert (out[batch.masks] == fill().astype(np.uint8)).all()
    assert (out[~batch.masks] == batch.masked_images[~batch.masks]).all()


def _expected_mirror(image: np.ndarray, mask: np.ndarray, size: tuple[int, int], erase: bool) -> np.ndarray:
    """numpy's own symmetric padding at the bottom/right, the probe's flip, and the crop back."""
    pad = ((0, size[0] - image.shape[1]), (0, size[1] - image.shape[2]))
    padded = np.pad(image, ((0, 0), *pad), mode="symmetric")
    hole = np.pad(mask, pad, mode="symmetric")
    if erase:  # MI-GAN's input: the image on -1..1 with the hole erased to 0
        padded = (padded * 2 - 1) * (1 - hole)
    out = np.where(hole, padded[:, :, ::-1], padded)
    if erase:
        out = (out + 1) / 2
    return out[:, :image.shape[1], :image.shape[2]]


@pytest.mark.parametrize("convention, probe, shape, padded", [
    ("lama", LamaProbe, (250, 251), (256, 256)),  # to multiples of 8
    ("migan", MiganProbe, (200, 300), (512, 512)),  # to 512 x 512, not enlarged
    ("migan", MiganProbe, (256, 256), (512, 512)),  # the competition's photo
])
def test_padding_mirrors_at_the_bottom_right_and_the_output_is_cropped_back(tmp_path, convention, probe, shape,
                                                                            padded):
    net = TorchScriptNet(load_torchscript(save(probe(1), tmp_path / "probe.pt")), convention)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, *shape)).astype(np.float32) / 255
    mask = np.zeros(shape, np.float32)
    mask[5:60, 7:90] = 1
    image = image * (1 - mask)
    with torch.no_grad():
        out = net(torch.from_numpy(image)[None], torch.from_numpy(mask)[None, None])[0].numpy()
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out, _expected_mirror(image, mask, padded, erase=convention == "migan"), atol=1e-6)


def test_batch_norm_statistics_stay_the_files_in_training_mode(tmp_path):
    net = TorchScriptNet(load_torchscript(save(TinyLama(), tmp_path / "lama.pt")), "lama").train()
    before = net.state_dict()["model.body.norm.running_mean"].clone()
    image, mask = torch.rand(2, 3, 64, 64), torch.zeros(2, 1, 64, 64)
    net(image + 5, mask).sum().backward()  # a batch far from the stored statistics
    assert torch.equal(net.state_dict()["model.body.norm.running_mean"], before)
    assert net.training and not net.model.body.norm.training


# ---------------------------------------------------------------------------------------------
# preflight


def test_preflight_without_the_file_says_how_to_get_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        preflight(ts_variant(tmp_path / "weights/big-lama.pt", "lama"))
    assert "weights --name big-lama" in str(err.value) and "/kaggle/input/" in str(err.value)


def test_preflight_refuses_a_file_that_is_not_torchscript(tmp_path):
    path = tmp_path / "big-lama.pt"
    torch.save({"weight": torch.zeros(3)}, path)  # a state dict, not a traced model
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        preflight(ts_variant(path, "lama"))


class Times255(nn.Module):
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * 255


def test_preflight_calls_the_file_once_and_checks_shape_and_range(tmp_path):
    with pytest.raises(ConfigError, match="migan convention failed"):  # a LaMa file called as MI-GAN
        preflight(ts_variant(save(TinyLama(), tmp_path / "lama.pt"), "migan"))
    with pytest.raises(ConfigError, match="outside 0.0..1.0"):  # a file answering on 0..255
        preflight(ts_variant(save(Times255(), tmp_path / "x255.pt"), "lama"))
    preflight(ts_variant(save(TinyMigan(), tmp_path / "migan.pt"), "migan"))


def test_a_published_name_with_another_checksum_is_a_warning(tmp_path, capsys):
    preflight(ts_variant(save(TinyLama(), tmp_path / "big-lama.pt"), "lama"))
    err = capsys.readouterr().err
    assert "warning:" in err and "not the published e3aa4aaa15225a33ec84f9f4bc47e500" in err


def test_submit_without_the_file_stops_in_seconds_naming_the_weights_command(workspace, capsys):
    from pipeline.cli import main as cli

    (workspace / "lama.yaml").write_text(yaml.safe_dump({
        "name": "lama", "method": "torchscript", "params": {"weights": "weights/big-lama.pt", "zero_shot": True},
        "data": {"root": "data/sample", "truth": "data/sample-truth", "val_count": 6}}))
    assert cli(["submit", "--variant", "lama.yaml"]) == 2
    assert "python -m pipeline weights --name big-lama" in capsys.readouterr().err
    assert not (workspace / "submissions").exists() or not any((workspace / "submissions").iterdir())


# ---------------------------------------------------------------------------------------------
# `weights`: the download against a local HTTP stand-in of the release address


class _Release(ThreadingHTTPServer):
    """Serves `data` at any path, honouring Range; `cut_after` bytes, then the connection drops."""

    data = b""
    cut_after: int | None = None
    ranges: list[str | None]


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server, data = self.server, self.server.data
        wanted = self.headers.get("Range")
        server.ranges.append(wanted)
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if server.cut_after is not None:
            body, server.cut_after = body[:server.cut_after], None  # this once: the connection drops
        self.wfile.write(body)


@pytest.fixture
def release():
    server = _Release(("127.0.0.1", 0), _Handler)
    server.data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    server.ranges = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/big-lama.pt"
    server.md5 = hashlib.md5(server.data).hexdigest()
    yield server
    server.shutdown()
    server.server_close()


def test_an_interrupted_download_resumes_and_lands_once_its_checksum_is_right(tmp_path, release):
    from pipeline.weights import WeightsError, download_weights

    release.cut_after = 100_000
    with pytest.raises(WeightsError, match="broke off after .* run the command again to resume"):
        download_weights("big-lama", tmp_path, url=release.url, md5=release.md5, progress=False)
    part = tmp_path / ".big-lama.pt.part"
    kept = part.stat().st_size
    assert 0 < kept < len(release.data) and not (tmp_path / "big-lama.pt").exists()

    path = download_weights("big-lama", tmp_path, url=release.url, md5=release.md5, progress=False)
    assert release.ranges == [None, f"bytes={kept}-"]  # the second request asked for the rest only
    assert path.read_bytes() == release.data and not part.exists()
    # already here with the right checksum: nothing is fetched again
    download_weights("big-lama", tmp_path, url=release.url, md5=release.md5, progress=False)
    assert len(release.ranges) == 2


def test_a_wrong_checksum_removes_the_download_and_says_so(tmp_path, release):
    from pipeline.weights import WeightsError, download_weights

    with pytest.raises(WeightsError, match=f"md5 is {release.md5}, not the expected 0+; it was removed"):
        download_weights("big-lama", tmp_path, url=release.url, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []  # nor its lock file


def test_the_weights_command_takes_the_address_from_iopaints_variables(workspace, release, monkeypatch, capsys):
    from pipeline.cli import main as cli

    monkeypatch.setenv("LAMA_MODEL_URL", release.url)
    monkeypatch.setenv("LAMA_MODEL_MD5", release.md5)
    assert cli(["weights", "--name", "big-lama"]) == 0
    assert (workspace / "weights/big-lama.pt").read_bytes() == release.data
    assert "python -m pipeline submit --variant lama" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Fine-tuning on the shared trainer


def test_fine_tuning_lowers_the_box_l2_and_predicts_through_the_same_interface(workspace):
    from pipeline.checkpoint import read_checkpoint
    from pipeline.cli import main as cli
    from pipeline.leaderboard import Leaderboard

    torch.manual_seed(0)
    weights = save(TinyLama(), workspace / "weights/tiny-lama.pt")
    data = {"root": "data/sample", "truth": "data/sample-truth", "val_count": 6}
    for name, params in [("tiny-lama", {"zero_shot": True}),
                         ("tiny-lama-ft", dict(objective="l2", epochs=2, train_batch_size=4, lr=0.01, beta1=0.9,
                                               lr_decay=0.0, mixed_precision="no", channels_last=False,
                                               num_workers=0, jitter=0, log_every=2, seed=0))]:
        (workspace / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "method": "torchscript", "batch_size": 6, "data": data,
            "params": {"weights": str(weights), "convention": "lama", **params}}))

    assert cli(["submit", "--variant", "tiny-lama.yaml"]) == 0
    assert cli(["train", "--variant", "tiny-lama.yaml"]) == 2  # zero_shot: nothing to train
    assert cli(["train", "--variant", "tiny-lama-ft.yaml"]) == 0
    assert cli(["submit", "--variant", "tiny-lama-ft.yaml"]) == 0

    rows = Leaderboard().read().set_index("variant")
    assert rows.loc["tiny-lama-ft", "val_rmse"] < 0.9 * rows.loc["tiny-lama", "val_rmse"]
    best = read_checkpoint(workspace / "checkpoints/tiny-lama-ft/best.pt")  # the pipeline's own format
    assert best["format"] == "pipeline-checkpoint/1" and best["config"]["method"] == "torchscript"
    start = load_torchscript(weights)
    tuned = best["generator"]
    assert not torch.equal(tuned["model.body.head.weight"], start.body.head.weight)  # trained from the file's
    for key in ("running_mean", "running_var"):  # batch norm statistics kept
        assert torch.equal(tuned[f"model.body.norm.{key}"], getattr(start.body.norm, key))


def test_the_web_app_lists_a_variant_whose_file_is_here_and_says_how_to_get_the_other(workspace):
    import shutil

    from pipeline.serve.inpaint import discover_variants
    from tests.conftest import REPO

    (workspace / "configs").mkdir()
    for name in ("lama", "migan"):
        shutil.copy(REPO / "configs" / f"{name}.yaml", workspace / "configs")
    save(TinyMigan(), workspace / "weights/migan_traced.pt")
    found = {s.name: s for s in discover_variants(workspace / "configs", data_root=workspace / "data/sample")}
    assert found["migan"].available, found["migan"].why
    assert not found["lama"].available and "python -m pipeline weights --name big-lama" in found["lama"].why


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_a_file_traced_in_eval_mode_runs_at_other_sizes_with_its_batch_norm_fixed(tmp_path):
    # the published files are traced: the trace records batch norm with training=False
    torch.manual_seed(0)
    path = tmp_path / "traced-lama.pt"
    model = TinyLama().eval()
    torch.jit.trace(model, (torch.rand(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))).save(str(path))
    net = TorchScriptNet(load_torchscript(path), "lama").train()
    image, mask = torch.rand(2, 3, 100, 120), torch.zeros(2, 1, 100, 120)
    mask[..., 10:50, 20:70] = 1
    out = net(image * (1 - mask), mask)
    assert out.shape == (2, 3, 100, 120)
    with torch.no_grad():  # the eager model on the input mirrored to 104 rows, cropped back
        padded = [torch.cat([t, t[..., 96:100, :].flip(-2)], dim=-2) for t in (image * (1 - mask), mask)]
        expected = model(*padded)[..., :100, :]
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)
    out.mean().backward()
    assert torch.equal(net.state_dict()["model.body.norm.running_mean"], model.body.norm.running_mean)
