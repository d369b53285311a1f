"""Zero-shot Stable Diffusion inpainting (diffusers) at the model's resolution (512 by default):
the image is upscaled whole, or a crop around each box (`params.resize`), pre-filled, inpainted
with a prompt from the image's class, and brought back; seeds per image (`samples: N`: the mean
of N seeded predictions, seeds seed .. seed + N - 1), an optional colour correction from the ring
around each box, and the weights checked before any work.
"""

from __future__ import annotations

import os
import re
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import ConfigError, PipelineError, VariantConfig, parse_params
from pipeline.data.boxes import Box
from pipeline.devices import execution_device
from pipeline.inpainters.base import InpaintBatch, Inpainter
from pipeline.inpainters.fill import HOLE_FILLS, fill_holes
from pipeline.inpainters.samples import mean_image, seed_for
from pipeline.next_step import NextStep

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-inpainting"
PROMPT_FIELDS = ("animal", "a_animal")
RESIZE_MODES = ("whole", "crop")
DTYPES = ("auto", "fp16", "bf16", "fp32")
# short names for diffusers scheduler classes; any diffusers scheduler class name also works
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++-karras": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


class ModelNotAvailableError(PipelineError, RuntimeError):
    """The model's weights are neither in a local folder nor in the Hugging Face cache, and the
    hub cannot be reached (or HF_HUB_OFFLINE=1); the message says how to get them."""


@dataclass
class SDParams:
    model: str = DEFAULT_MODEL  # hub id (cached or downloadable) or a local diffusers folder
    revision: str = ""  # hub revision; "" = main
    variant: str = ""  # weights variant on the hub, e.g. "fp16"; "" = the default weights
    cache_dir: str = ""  # Hugging Face cache; "" = the default (HF_HOME / HF_HUB_CACHE)
    hub_timeout: float = 10.0  # seconds to wait for the hub when the model is not cached
    scheduler: str = ""  # "" = the model's own; a short name (SCHEDULERS) or a diffusers class
    steps: int = 50
    guidance_scale: float = 7.5
    strength: float = 1.0  # < 1 starts from the noised pre-filled image instead of pure noise
    seed: int = 0
    samples: int = 1  # the mean of this many predictions per image, sample k seeded from (seed + k, image id)
    prompt: str = "Real image of {a_animal}, no text"
    negative_prompt: str = ""
    unknown_animal: str = "animal"  # what {animal} becomes when the class is not known
    animal_names: dict = field(default_factory=dict)  # class folder -> word for the prompt
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 elsewhere
    device: str = "auto"  # auto: this process's accelerator (its own GPU under accelerate), else CPU
    attention_slicing: bool = False
    cpu_offload: bool = False  # enable_model_cpu_offload (GPU only)
    resize: str = "whole"  # whole | crop (see the module docstring)
    size: int = 512  # the model's working resolution
    crop_padding: int = 32  # crop mode: context pixels (at the image's scale) around the box
    mask_dilation: int = 4  # pixels (image scale) the mask is grown beyond the box
    hole_fill: str = "telea"  # what the boxes hold before the model sees them: none | zero | mean | telea | navier-stokes
    colour_correction: bool = False
    ring_width: int = 4  # pixels around the box whose colour statistics the correction matches


# --- prompts -------------------------------------------------------------------------------

def template_fields(template: str) -> list[str]:
    """The field names used in `template`; ValueError for a malformed template."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def validate_template(template: str, where: str) -> None:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"{where}: malformed prompt template {template!r}: {exc}") from exc
    unknown = sorted(set(fields) - set(PROMPT_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: prompt template {template!r} uses unknown field(s) {', '.join(unknown)}; "
            f"known: {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}"
        )


def with_article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def fill_prompt(template: str, label: str | None, names: dict | None = None, unknown: str = "animal") -> str:
    """`template` with {animal} / {a_animal} filled from the class `label`.

    An unknown label becomes `unknown`; when that is empty too, the field disappears with any
    article left in front of it, and the spacing and punctuation around it are tidied.
    """
    word = (names or {}).get(label, label) if label else None
    word = (word or unknown or "").replace("_", " ").strip()
    text = template.format(animal=word, a_animal=with_article(word) if word else "")
    if not word:
        text = re.sub(r"\b(?:an?|the)\s*(?=[,.;:!?]|$)", "", text, flags=re.IGNORECASE)
        text = re.sub(r"\s+([,.;:!?])", r"\1", text)
        text = re.sub(r"([,.;:!?])(?:\s*[,.;:!?])+", r"\1", text)
        text = re.sub(r"^\s*[,.;:!?]+", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()


# --- seeds -------------------------------------------------------------------------------------

# seed_for (a 63-bit seed from (seed, image id[, box])) lives in samples.py, shared with dropout sampling


# --- where the weights are -------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    location: str  # local folder or hub id, as given to from_pretrained
    local_files_only: bool  # True when the weights are on disk (folder or complete cache)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") != 1 or os.sep != "/" and os.sep in model


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (the environment) or when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def how_to_get(model: str) -> str:
    repo = model if not _looks_like_path(model) else DEFAULT_MODEL
    return (
        "To get the weights, on a machine with internet access run\n"
        f'    hf download {repo} --include "model_index.json" --include "*/*"\n'
        f'(older huggingface_hub: huggingface-cli download {repo} --include "model_index.json" "*/*"),\n'
        "which fills the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub); copy that cache to "
        "this machine (or point params.cache_dir / HF_HOME at it). Or add `--local-dir checkpoints/sd-inpainting` "
        "to the download and set the variant's params.model to that folder "
        f"(e.g. `{NextStep('sd', {'sweep': 'FILE', 'param': 'model=checkpoints/sd-inpainting'})}`)."
    )


def _missing_components(folder: Path) -> list[str]:
    """Components model_index.json names that `folder` lacks (weights included for models)."""
    import json

    index = json.loads((folder / "model_index.json").read_text())
    missing = []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or None in value:
            continue
        sub = folder / name
        files = [p for p in sub.iterdir() if p.is_file() or p.is_symlink()] if sub.is_dir() else []
        if not files:
            missing.append(name)
        elif (sub / "config.json").exists() and not any(
            p.name.endswith((".safetensors", ".bin")) for p in files
        ):
            missing.append(f"{name} weights")
    return missing


def check_model(params: SDParams) -> ModelSource:
    """Where `params.model` will be loaded from, or ModelNotAvailableError saying how to get it.

    A local folder must hold a complete diffusers pipeline. A hub id is fine when the cache holds
    it completely; otherwise only when downloading is allowed (HF_HUB_OFFLINE unset) and the
    hub answers.
    """
    model = params.model.strip()
    if not model:
        raise ConfigError("params.model: empty; a hub id such as " + DEFAULT_MODEL + " or a local folder")
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelNotAvailableError(
                f"{path}: not a diffusers pipeline folder (no model_index.json).\n{how_to_get(model)}")
        missing = _missing_components(path)
        if missing:
            raise ModelNotAvailableError(
                f"{path}: incomplete pipeline folder, missing {', '.join(missing)}.\n{how_to_get(model)}")
        return ModelSource(str(path), local_files_only=True)
    if _looks_like_path(model):
        raise ModelNotAvailableError(f"{model}: no such folder.\n{how_to_get(model)}")

    from huggingface_hub import constants, hf_hub_url, get_hf_file_metadata, try_to_load_from_cache

    cache = params.cache_dir or None
    where = cache or constants.HF_HUB_CACHE
    index = try_to_load_from_cache(model, "model_index.json", cache_dir=cache, revision=params.revision or None)
    if isinstance(index, str):
        missing = _missing_components(Path(index).parent)
        if not missing:
            return ModelSource(model, local_files_only=True)
        reason = f"the Hugging Face cache ({where}) holds only part of it (missing {', '.join(missing)})"
    else:
        reason = f"it is not in the Hugging Face cache ({where})"
    if hub_offline():
        raise ModelNotAvailableError(
            f"{model}: {reason}, and HF_HUB_OFFLINE is set, so it cannot be downloaded.\n{how_to_get(model)}")
    try:
        get_hf_file_metadata(hf_hub_url(model, "model_index.json", revision=params.revision or None),
                             timeout=params.hub_timeout)
    except Exception as exc:  # no network, DNS, proxy, 401/404: all mean "cannot download here"
        raise ModelNotAvailableError(
            f"{model}: {reason}, and the Hugging Face Hub cannot be reached to download it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}).\n{how_to_get(model)}"
        ) from exc
    return ModelSource(model, local_files_only=False)


# --- the diffusers pipeline, loaded once per model and settings ------------------------------

def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


@dataclass
class LoadedPipeline:
    pipe: Any
    scheduler_cls: type  # the model's own scheduler and its config, restored for variants
    scheduler_config: Any  # that name no scheduler of their own
    device: str
    slicing: bool = False


# one pipeline at a time: a sweep reuses it across variants of the same model and settings
_LOADED: dict[tuple, LoadedPipeline] = {}


def load_pipeline(params: SDParams, source: ModelSource) -> LoadedPipeline:
    """AutoPipelineForInpainting.from_pretrained(source), on its device and dtype; cached."""
    device = str(execution_device(params.device))
    offload = params.cpu_offload and not device.startswith(("cpu", "mps"))
    if params.cpu_offload and not offload:
        warnings.warn(f"cpu_offload ignored on device {device}: it offloads GPU models to the CPU")
    key = (source.location, params.revision, params.variant, params.cache_dir, params.dtype, device, offload)
    if key in _LOADED:
        return _LOADED[key]
    import torch
    from diffusers import AutoPipelineForInpainting

    release_pipelines()
    dtype = resolve_dtype(params.dtype, device)
    kwargs = {dtype_keyword(): dtype, "local_files_only": source.local_files_only}
    kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if params.revision:
        kwargs["revision"] = params.revision
    if params.variant:
        kwargs["variant"] = params.variant
    if params.cache_dir:
        kwargs["cache_dir"] = params.cache_dir

    def load():
        return AutoPipelineForInpainting.from_pretrained(source.location, **kwargs)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from pipeline.devices import partial_state

        with partial_state().main_process_first():  # one download, then the others read the cache
            pipe = load()
    else:
        pipe = load()
    if offload:
        pipe.enable_model_cpu_offload(device=torch.device(device))
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    loaded = LoadedPipeline(pipe, type(pipe.scheduler), pipe.scheduler.config, device)
    _LOADED[key] = loaded
    return loaded


def dtype_keyword() -> str:
    """from_pretrained's name for the weights' dtype: `dtype` from diffusers 0.40 on (which
    deprecates `torch_dtype`); older ones ignore `dtype` and would load SD in fp32."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def release_pipelines() -> None:
    """Drop the cached pipeline(s) and their GPU memory."""
    _LOADED.clear()
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class for `name` (a short name of SCHEDULERS or a class name)."""
    import diffusers

    cls_name = SCHEDULERS.get(name.lower(), name)
    try:
        cls = getattr(diffusers, cls_name)
    except (AttributeError, ImportError):
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise ConfigError(f"params.scheduler: {name!r} is not a diffusers scheduler; short names: "
                          f"{', '.join(SCHEDULERS)}, or a class name such as DDIMScheduler")
    return cls


def make_scheduler(name: str, config):
    """Scheduler `name` built from the model's scheduler config (its betas, timestep spacing)."""
    extra = {"use_karras_sigmas": True} if name.lower().endswith("-karras") else {}
    return scheduler_class(name).from_config(config, **extra)


# --- masks, rings, colour ----------------------------------------------------------------------

def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Bool mask grown by `pixels` in every direction (a square neighbourhood)."""
    if pixels <= 0:
        return mask.copy()
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box.slices] = True
    return mask


def colour_correct(image: np.ndarray, known: np.ndarray, raw: np.ndarray, boxes, all_boxes: np.ndarray,
                   regenerated: np.ndarray, ring_width: int) -> np.ndarray:
    """`image` with each box shifted per channel by mean(known - raw) over the box's ring.

    known: the input image (true pixels outside the boxes); raw: the model's output at the
    image's size; all_boxes: bool mask of every box; regenerated: where `raw` is the model's own.
    """
    out = image.copy()
    for box in boxes:
        inside = box_mask(box, image.shape[:2])
        ring = dilate(inside, ring_width) & ~all_boxes & regenerated
        if not ring.any():
            continue
        offset = known[ring].astype(np.float64).mean(axis=0) - raw[ring].astype(np.float64).mean(axis=0)
        out[inside] = np.clip(np.round(out[inside].astype(np.float64) + offset), 0, 255).astype(np.uint8)
    return out


# --- the method --------------------------------------------------------------------------------

class SDInpainter(Inpainter):
    """Stable Diffusion inpainting behind the common interface (see the module docstring)."""

    def __init__(self, params: SDParams, loaded: LoadedPipeline):
        self.params = params
        self.loaded = loaded
        self.scheduler = make_scheduler(params.scheduler, loaded.scheduler_config) if params.scheduler else None

    @staticmethod
    def parse(variant: VariantConfig) -> SDParams:
        params = parse_params(SDParams, variant.params, variant)
        where = f"{variant.source or variant.name}: params"
        for name, allowed in (("resize", RESIZE_MODES), ("dtype", DTYPES), ("hole_fill", HOLE_FILLS)):
            if getattr(params, name) not in allowed:
                raise ConfigError(f"{where}.{name}: {getattr(params, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(params.animal_names, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in params.animal_names.items()):
            raise ConfigError(f"{where}.animal_names: expected a mapping of class folder -> word")
        validate_template(params.prompt, f"{where}.prompt")
        validate_template(params.negative_prompt, f"{where}.negative_prompt")
        if params.size <= 0 or params.size % 8:
            raise ConfigError(f"{where}.size: {params.size} must be a positive multiple of 8")
        if params.steps < 1:
            raise ConfigError(f"{where}.steps: must be at least 1")
        if params.samples < 1:
            raise ConfigError(f"{where}.samples: must be at least 1")
        if not 0.0 < params.strength <= 1.0:
            raise ConfigError(f"{where}.strength: {params.strength} must be in (0, 1]")
        for name in ("crop_padding", "mask_dilation", "ring_width"):
            if getattr(params, name) < 0:
                raise ConfigError(f"{where}.{name}: must not be negative")
        if params.colour_correction and params.resize == "crop" and params.mask_dilation == 0:
            raise ConfigError(f"{where}.colour_correction: in crop mode the model regenerates only the "
                              "dilated mask, so mask_dilation must be > 0 to leave a ring to measure")
        return params

    @classmethod
    def check_params(cls, variant: VariantConfig) -> SDParams:
        """The params and the scheduler name checked (nothing is loaded, no weights looked for)."""
        params = cls.parse(variant)
        if params.scheduler:
            scheduler_class(params.scheduler)
        return params

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Config, scheduler and weights checks, before any other work (nothing is loaded)."""
        check_model(cls.check_params(variant))

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "SDInpainter":
        params = cls.parse(variant)
        source = check_model(params)
        return cls(params, load_pipeline(params, source))

    # -- the pipeline call ------------------------------------------------------------------
    def _prepare_pipe(self):
        loaded, pipe = self.loaded, self.loaded.pipe
        if self.scheduler is not None:
            pipe.scheduler = self.scheduler
        else:
            pipe.scheduler = loaded.scheduler_cls.from_config(loaded.scheduler_config)
        if self.params.attention_slicing != loaded.slicing:
            pipe.enable_attention_slicing() if self.params.attention_slicing else pipe.disable_attention_slicing()
            loaded.slicing = self.params.attention_slicing
        return pipe

    def _prompts(self, labels) -> tuple[list[str], list[str]]:
        p = self.params
        fill = lambda t, label: fill_prompt(t, label, p.animal_names, p.unknown_animal)  # noqa: E731
        return [fill(p.prompt, label) for label in labels], [fill(p.negative_prompt, label) for label in labels]

    def _call(self, pipe, prompts, negatives, image, mask, generators, **extra):
        """One pipeline call; `negatives` (a string or one per prompt) is left out when empty."""
        p = self.params
        if isinstance(negatives, list) and not any(negatives):
            negatives = None
        return pipe(
            prompt=prompts, negative_prompt=negatives or None, image=image,
            mask_image=mask, height=p.size, width=p.size, num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale, strength=p.strength, generator=generators, **extra,
        ).images

    def _whole(self, pipe, context: np.ndarray, model_masks: np.ndarray, batch: InpaintBatch, seed: int) -> np.ndarray:
        """All images of the batch at once, upscaled to size; returns the model's output, resized back."""
        import torch

        p, (h, w) = self.params, model_masks.shape[1:]
        up = np.stack([cv2.resize(im, (p.size, p.size), interpolation=cv2.INTER_CUBIC) for im in context])
        up_masks = np.stack([cv2.resize(m.astype(np.uint8), (p.size, p.size), interpolation=cv2.INTER_NEAREST)
                             for m in model_masks])
        image = torch.from_numpy(up).permute(0, 3, 1, 2).float().div(255).contiguous()
        mask = torch.from_numpy(up_masks).float().unsqueeze(1).contiguous()
        prompts, negatives = self._prompts(batch.labels)
        generators = [torch.Generator("cpu").manual_seed(seed_for(seed, i)) for i in batch.image_ids]
        out = self._call(pipe, prompts, negatives, image, mask, generators, output_type="np")
        return np.stack([
            np.clip(np.round(cv2.resize(np.asarray(o, np.float32), (w, h), interpolation=cv2.INTER_AREA) * 255), 0, 255)
            for o in out
        ]).astype(np.uint8)

    def _crop(self, pipe, context: np.ndarray, batch: InpaintBatch, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """One box at a time through padding_mask_crop; returns (the model's output, where it is the model's)."""
        import torch
        from PIL import Image

        p = self.params
        raw, regenerated = context.copy(), np.zeros(context.shape[:3], bool)
        prompts, negatives = self._prompts(batch.labels)
        for n, (image_id, boxes) in enumerate(zip(batch.image_ids, batch.boxes)):
            current = context[n].copy()
            for b, box in enumerate(boxes):
                grown = dilate(box_mask(box, current.shape[:2]), p.mask_dilation)
                generator = torch.Generator("cpu").manual_seed(seed_for(seed, image_id, b))
                result = self._call(
                    pipe, prompts[n], negatives[n], Image.fromarray(current),
                    Image.fromarray(grown.astype(np.uint8) * 255), generator,
                    padding_mask_crop=p.crop_padding, output_type="pil",
                )[0]
                result = np.asarray(result.convert("RGB"), dtype=np.uint8)
                current[box.slices] = result[box.slices]
                raw[n][grown] = result[grown]
                regenerated[n] |= grown
        return raw, regenerated

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        """One prediction per image seeded from (seed, image id), or the mean of `samples` of them."""
        seeds = [self.params.seed + k for k in range(self.params.samples)]
        if len(seeds) == 1:
            return self._inpaint_once(batch, seeds[0])
        return mean_image([self._inpaint_once(batch, seed) for seed in seeds])

    def _inpaint_once(self, batch: InpaintBatch, seed: int) -> np.ndarray:
        p = self.params
        images, masks = batch.masked_images, batch.masks
        context = fill_holes(images, masks, p.hole_fill)
        model_masks = np.stack([dilate(m, p.mask_dilation) for m in masks])
        pipe = self._prepare_pipe()
        if p.resize == "whole":
            raw = self._whole(pipe, context, model_masks, batch, seed)
            regenerated = np.ones(masks.shape, bool)
        else:
            raw, regenerated = self._crop(pipe, context, batch, seed)
        out = images.copy()
        out[masks] = raw[masks]
        if p.colour_correction:
            out = np.stack([
                colour_correct(out[n], images[n], raw[n], batch.boxes[n], masks[n], regenerated[n], p.ring_width)
                for n in range(len(out))
            ])
        return out
