"""Stable Diffusion inpainting, against a tiny randomly initialised pipeline saved to disk.

The tiny pipeline (tests/tiny_sd.py) is loaded exactly as the real model is: a hub id found in a
Hugging Face cache (laid out like huggingface_hub's), or a local folder, through check_model and
AutoPipelineForInpainting.from_pretrained. No test touches the network (HF_HUB_OFFLINE=1 and the
`offline` fixture, which fails any host lookup).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import cli
from pipeline.config import ConfigError, load_sweep, load_variant
from pipeline.data.boxes import Box
from pipeline.inpainters import sd
from pipeline.inpainters.base import build_inpainter
from pipeline.inpainters.fill import fill_holes
from pipeline.predict import masked_batches
from tests.conftest import REPO, small_data_config
from tests.tiny_sd import as_hub_cache, build_tiny_inpaint_pipeline

TINY_REPO = "tiny-test/sd-inpainting"
FAST = {"steps": 2, "guidance_scale": 1.0}  # guidance off: half the UNet work


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is overhead-bound: one thread is as fast, and never fights other processes
    for the cores (two spinning OpenMP pools on two cores run many times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="module")
def tiny_cache(tiny_model, tmp_path_factory) -> Path:
    """A Hugging Face cache that holds the tiny pipeline as hub id TINY_REPO."""
    return as_hub_cache(tiny_model, tmp_path_factory.mktemp("hf-cache"), TINY_REPO)


@pytest.fixture(autouse=True)
def fresh_pipelines(offline):
    sd.release_pipelines()
    yield
    sd.release_pipelines()


def sd_variant(root: Path, model, **params):
    v = load_variant(REPO / "configs" / "sd.yaml")
    v.data = small_data_config(root)
    v.params.update({"model": str(model), **params})
    return v


def first_batch(competition, n: int = 2):
    _, batch = next(masked_batches(competition.val[:n], competition.config.image_size, n))
    return batch


def latent_sizes(inpainter) -> list[tuple[int, int]]:
    """Records the spatial size of every UNet input (the latents) from now on."""
    seen = []
    inpainter.loaded.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    return seen


def outside_unchanged(batch, out) -> bool:
    return np.array_equal(out[~batch.masks], batch.masked_images[~batch.masks])


# --- loading ---------------------------------------------------------------------------------

def test_hub_id_in_the_cache_loads_through_auto_pipeline(workspace, tiny_cache):
    from diffusers import StableDiffusionInpaintPipeline

    v = sd_variant(workspace, TINY_REPO, cache_dir=str(tiny_cache), **FAST)
    source = sd.check_model(sd.SDInpainter.parse(v))
    assert source == sd.ModelSource(TINY_REPO, local_files_only=True)
    inpainter = build_inpainter(v)
    assert isinstance(inpainter, sd.SDInpainter)
    pipe = inpainter.loaded.pipe
    assert type(pipe) is StableDiffusionInpaintPipeline
    assert pipe.unet.config.in_channels == 9 and pipe.vae_scale_factor == 8


def test_the_pipeline_loads_in_the_configured_dtype(workspace, tiny_model):
    """`dtype` is honoured on every diffusers pyproject admits (before 0.40 it is `torch_dtype`;
    an ignored keyword would leave the weights in fp32)."""
    import torch

    loaded = sd.load_pipeline(sd.SDInpainter.parse(sd_variant(workspace, tiny_model, dtype="bf16", **FAST)),
                              sd.ModelSource(str(tiny_model), local_files_only=True))
    assert loaded.pipe.unet.dtype == torch.bfloat16 and loaded.pipe.vae.dtype == torch.bfloat16
    assert loaded.pipe.text_encoder.dtype == torch.bfloat16


def test_missing_weights_stop_before_any_work(workspace, tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "sd", "variants": [{"name": "sd-a"}, {"name": "sd-b"}]}))
    rc = cli.main(["sd", "--sweep", str(sweep), "--param", f"cache_dir={tmp_path / 'empty-cache'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "stabilityai/stable-diffusion-2-inpainting" in err and "HF_HUB_OFFLINE" in err
    assert "hf download stabilityai/stable-diffusion-2-inpainting" in err and "huggingface-cli download" in err
    assert not Path("data/predictions").exists() and not Path("submissions").exists()


def test_unreachable_hub_and_bad_local_paths(workspace, tmp_path, monkeypatch, tiny_model):
    import huggingface_hub

    def no_network(url, timeout=None, **kwargs):
        raise ConnectionError(f"cannot resolve huggingface.co (timeout {timeout})")

    monkeypatch.setattr(sd, "hub_offline", lambda: False)  # downloading allowed, but no network
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    params = sd.SDParams(cache_dir=str(tmp_path / "empty-cache"), hub_timeout=0.1)
    with pytest.raises(sd.ModelNotAvailableError, match="(?s)cannot be reached.*ConnectionError.*hf download"):
        sd.check_model(params)
    with pytest.raises(sd.ModelNotAvailableError, match="no such folder"):
        sd.check_model(sd.SDParams(model=str(tmp_path / "nowhere" / "sd")))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_model / "model_index.json").read_text())
    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text("{}")
    with pytest.raises(sd.ModelNotAvailableError, match="missing scheduler, text_encoder, tokenizer, unet weights, vae"):
        sd.check_model(sd.SDParams(model=str(broken)))


# --- inpainting ------------------------------------------------------------------------------

def test_whole_image_round_trip_at_512(workspace, competition, tiny_model):
    inpainter = build_inpainter(sd_variant(workspace, tiny_model, steps=2))  # guidance on
    seen = latent_sizes(inpainter)
    batch = first_batch(competition)
    out = inpainter.inpaint(batch)
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8
    assert seen and set(seen) == {(64, 64)}  # the model worked on 512x512 images
    assert outside_unchanged(batch, out)
    # the boxes hold the model's output, not the Telea pre-fill it started from
    prefilled = fill_holes(batch.masked_images, batch.masks, "telea")
    changed = np.abs(out[batch.masks].astype(int) - prefilled[batch.masks].astype(int)).mean()
    assert changed > 5, f"box pixels are the pre-fill (mean change {changed:.2f}): the model's output was dropped"


def test_crop_mode_one_box_at_a_time_through_padding_mask_crop(workspace, competition, tiny_model, monkeypatch):
    inpainter = build_inpainter(sd_variant(workspace, tiny_model, resize="crop", crop_padding=24, **FAST))
    seen = latent_sizes(inpainter)
    pipe = inpainter.loaded.pipe
    calls, results = [], []
    real_call = type(pipe).__call__

    def recording(self, **kw):
        calls.append(kw)
        out = real_call(self, **kw)
        results.append(np.asarray(out.images[0].convert("RGB")))
        return out

    monkeypatch.setattr(type(pipe), "__call__", recording)
    batch = first_batch(competition)
    out = inpainter.inpaint(batch)
    assert out.shape == (2, 256, 256, 3) and outside_unchanged(batch, out)
    assert len(calls) == 4 and set(seen) == {(64, 64)}  # 2 images x 2 boxes, each at 512
    k = 0
    for n, image_boxes in enumerate(batch.boxes):
        for b, box in enumerate(image_boxes):  # one (grown) box per call, never both
            call, result = calls[k], results[k]
            assert call["padding_mask_crop"] == 24 and call["height"] == call["width"] == 512
            expected = sd.dilate(sd.box_mask(box, (256, 256)), 4)
            assert np.array_equal(np.asarray(call["mask_image"]) > 0, expected)
            # the call's result lands in its own box (where no later box of the image overwrote it)
            mine = sd.box_mask(box, (256, 256))
            for later in image_boxes[b + 1:]:
                mine &= ~sd.dilate(sd.box_mask(later, (256, 256)), 4)
            assert mine.any() and np.array_equal(out[n][mine], result[mine])
            k += 1


@pytest.mark.parametrize("resize", ["whole", "crop"])
def test_the_model_is_given_the_boxes_grown_by_mask_dilation(workspace, competition, tiny_model, monkeypatch, resize):
    inpainter = build_inpainter(sd_variant(workspace, tiny_model, resize=resize, mask_dilation=8, steps=1,
                                           guidance_scale=1.0))
    pipe = inpainter.loaded.pipe
    masks, real_call = [], type(pipe).__call__

    def recording(self, **kw):  # the masks at the image's 256x256 scale, as bool
        given = kw["mask_image"]
        if resize == "whole":  # a (N, 1, 512, 512) tensor, upscaled 2x by nearest neighbour
            masks.extend(m[0, ::2, ::2].numpy() > 0.5 for m in given)
        else:
            masks.append(np.asarray(given) > 0)
        return real_call(self, **kw)

    monkeypatch.setattr(type(pipe), "__call__", recording)
    batch = first_batch(competition)
    inpainter.inpaint(batch)

    def grown(boxes) -> np.ndarray:  # each box 8 px larger on every side, clipped to the image
        out = np.zeros((256, 256), bool)
        for b in boxes:
            out[max(0, b.y - 8):b.y + b.h + 8, max(0, b.x - 8):b.x + b.w + 8] = True
        return out

    expected = ([grown(boxes) for boxes in batch.boxes] if resize == "whole"
                else [grown([box]) for boxes in batch.boxes for box in boxes])
    assert len(masks) == len(expected)
    for given, wanted in zip(masks, expected):
        assert np.array_equal(given, wanted), f"{given.sum()} mask pixels given to the model, {wanted.sum()} expected"


def test_same_seed_same_output_whatever_the_batch(workspace, competition, tiny_model):
    inpainter = build_inpainter(sd_variant(workspace, tiny_model, **FAST))
    batch = first_batch(competition, 2)
    a, b = inpainter.inpaint(batch), inpainter.inpaint(batch)
    assert np.array_equal(a, b)
    alone = inpainter.inpaint(first_batch(competition, 1))
    # the same noise (per-image generator); batched float maths may round one level differently
    assert np.abs(alone[0].astype(int) - a[0].astype(int)).max() <= 2
    other = build_inpainter(sd_variant(workspace, tiny_model, seed=1, **FAST)).inpaint(batch)
    assert not np.array_equal(other, a)


def test_samples_are_the_mean_of_the_single_seeded_runs(workspace, competition, tiny_model):
    batch = first_batch(competition, 1)
    mean = build_inpainter(sd_variant(workspace, tiny_model, seed=5, samples=3, **FAST)).inpaint(batch)
    singles = [build_inpainter(sd_variant(workspace, tiny_model, seed=seed, **FAST)).inpaint(batch) for seed in (5, 6, 7)]
    assert not np.array_equal(singles[0], singles[1])
    expected = np.round(np.mean(np.stack(singles).astype(np.float64), axis=0)).astype(np.uint8)
    assert np.array_equal(mean, expected)
    with pytest.raises(ConfigError, match="samples"):
        sd.SDInpainter.check_params(sd_variant(workspace, tiny_model, samples=0))


def test_colour_correction_removes_the_drift_next_to_the_box():
    known = np.full((32, 32, 3), 100, np.uint8)
    box = Box(8, 8, 10, 10)
    boxes_mask = np.zeros((32, 32), bool)
    boxes_mask[box.slices] = True
    raw = known.astype(int) + np.array([12, -7, 3])  # the model's output drifted everywhere
    raw = raw.astype(np.uint8)
    image = known.copy()
    image[boxes_mask] = raw[boxes_mask]
    out = sd.colour_correct(image, known, raw, [box], boxes_mask, np.ones((32, 32), bool), ring_width=3)
    assert np.array_equal(out[boxes_mask], known[boxes_mask])
    assert np.array_equal(out[~boxes_mask], image[~boxes_mask])


# --- prompts and seeds -----------------------------------------------------------------------

@pytest.mark.parametrize("template, label, expected", [
    ("Real image of {a_animal}, no text", "cat", "Real image of a cat, no text"),
    ("Real image of {a_animal}, no text", "elephant", "Real image of an elephant, no text"),
    ("Real image of an {animal}, no text", "tiger", "Real image of an tiger, no text"),
    ("Real image of {a_animal}, no text", None, "Real image of an animal, no text"),
    ("Natural looking seamless image, no text", "dog", "Natural looking seamless image, no text"),
    ("A photo of a {animal}. {{braces}}", "dog", "A photo of a dog. {braces}"),
])
def test_prompt_templates_fill_from_the_class(template, label, expected):
    assert sd.fill_prompt(template, label) == expected


def test_unknown_class_leaves_the_field_out_gracefully():
    assert sd.fill_prompt("Real image of {a_animal}, no text", None, unknown="") == "Real image of, no text"
    assert sd.fill_prompt("A photo of the {animal}, sharp", None, unknown="") == "A photo of, sharp"
    assert sd.fill_prompt("{animal}, photo", None, unknown="") == "photo"
    assert sd.fill_prompt("a {animal}", "big_cat", names={"big_cat": "lion"}) == "a lion"


def test_prompts_per_image_and_bad_templates(workspace, tiny_model):
    params = sd.SDInpainter.parse(sd_variant(workspace, tiny_model, prompt="{a_animal} photo", negative_prompt="blurry {animal}"))
    inpainter = sd.SDInpainter.__new__(sd.SDInpainter)
    inpainter.params = params
    assert inpainter._prompts(["cat", None]) == (["a cat photo", "an animal photo"], ["blurry cat", "blurry animal"])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) species"):
        sd.SDInpainter.parse(sd_variant(workspace, tiny_model, prompt="a {species}"))
    with pytest.raises(ConfigError, match="resize"):
        sd.SDInpainter.parse(sd_variant(workspace, tiny_model, resize="tiles"))


def test_seeds_depend_on_seed_image_and_box_only():
    assert sd.seed_for(0, "img1") == sd.seed_for(0, "img1")
    assert len({sd.seed_for(0, "img1"), sd.seed_for(1, "img1"), sd.seed_for(0, "img2"),
                sd.seed_for(0, "img1", 0), sd.seed_for(0, "img1", 1)}) == 5
    assert 0 <= sd.seed_for(123, "x", 1) < 2**63


# --- the sweep -------------------------------------------------------------------------------

def write_sweep(path: Path, root: Path, model: str, **params) -> Path:
    """A two-variant sweep over configs/sd.yaml on the small sample (2 validation images)."""
    data = {"root": str(root / "data/sample"), "truth": str(root / "data/sample-truth"), "val_count": 2}
    path.write_text(yaml.safe_dump({
        "base": "sd",
        "variants": [
            {"name": "sd-seamless", "data": data,
             "params": {"model": model, "prompt": "Natural looking seamless image, no text", **params}},
            {"name": "sd-crop-animal", "data": data,
             "params": {"model": model, "resize": "crop", "colour_correction": True, **params}},
        ],
    }, sort_keys=False))
    return path


def test_sweep_writes_one_submission_and_row_per_variant(workspace, tiny_model, monkeypatch, capsys):
    from diffusers import AutoPipelineForInpainting

    loads = []
    real = AutoPipelineForInpainting.from_pretrained.__func__
    monkeypatch.setattr(AutoPipelineForInpainting, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: loads.append(a[0]) or real(cls, *a, **kw)))
    # 256: the rows are what is checked here; the 512 round trip is checked above
    sweep = write_sweep(workspace / "sweep.yaml", workspace, str(tiny_model), size=256, **FAST)
    assert cli.main(["sd", "--sweep", str(sweep)]) == 0
    board = pd.read_csv("submissions/leaderboard.csv")
    assert list(board["variant"]) == ["sd-seamless", "sd-crop-animal"]
    assert board["method"].eq("sd").all() and board["val_rmse"].notna().all() and board["test_rmse"].notna().all()
    for name in ("sd-seamless", "sd-crop-animal"):
        assert Path(f"submissions/{name}.csv").exists()
        (run_file,) = Path("data/predictions").glob(f"*/{name}/test/run.json")
        run = json.loads(run_file.read_text())
        assert run["variant"]["name"] == name and run["images"] == 19
    configs = [json.loads(c) for c in board["config"]]
    assert configs[0]["params"]["prompt"] == "Natural looking seamless image, no text"
    assert configs[1]["params"]["resize"] == "crop" and configs[1]["data"]["val_count"] == 2
    assert loads == [str(tiny_model)]  # one model, loaded once for the whole sweep
    out = capsys.readouterr().out
    assert "sd-seamless" in out and "sd-crop-animal" in out


def test_sweep_file_merges_variants_over_the_base(tmp_path):
    variants = load_sweep(REPO / "configs" / "sd-prompts.yaml")
    names = [v.name for v in variants]
    assert len(names) == len(set(names)) and {"sd-seamless", "sd-animal", "sd-crop-seamless"} <= set(names)
    base = load_variant("sd")
    for v in variants:
        assert v.method == "sd" and set(v.params) == set(base.params)
        sd.SDInpainter.parse(v)  # every variant is a valid SD config
    crop = next(v for v in variants if v.name == "sd-crop-seamless")
    assert crop.params["resize"] == "crop" and crop.params["steps"] == base.params["steps"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "sd", "variants": [{"name": "x"}, {"name": "x"}]}))
    with pytest.raises(ConfigError, match="appears twice"):
        load_sweep(bad)
    bad.write_text(yaml.safe_dump({"base": "sd", "variant": [{"name": "x"}]}))
    with pytest.raises(ConfigError, match="unknown key"):
        load_sweep(bad)


def test_schedulers_by_short_or_class_name(workspace, tiny_model):
    assert sd.scheduler_class("euler-a").__name__ == "EulerAncestralDiscreteScheduler"
    assert sd.scheduler_class("DDIMScheduler").__name__ == "DDIMScheduler"
    with pytest.raises(ConfigError, match="not a diffusers scheduler"):
        sd.SDInpainter.preflight(sd_variant(workspace, tiny_model, scheduler="fastest"))
    inpainter = build_inpainter(sd_variant(workspace, tiny_model, scheduler="dpm++", **FAST))
    assert type(inpainter._prepare_pipe().scheduler).__name__ == "DPMSolverMultistepScheduler"
    default = build_inpainter(sd_variant(workspace, tiny_model, **FAST))  # same pipeline, own scheduler back
    assert default.loaded is inpainter.loaded
    assert type(default._prepare_pipe().scheduler).__name__ == "DDIMScheduler"
