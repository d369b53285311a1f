"""A tiny, randomly initialised Stable Diffusion inpainting pipeline, written to disk like a real one.

Same components and layout as stabilityai/stable-diffusion-2-inpainting (a 9-input-channel UNet, a
VAE with scale factor 8, a CLIP text model and tokenizer, a DDIM scheduler; no safety checker),
only tiny: a 512x512 image gives 64x64 latents, and a call takes a fraction of a second on a CPU.
The tokenizer's vocabulary is single characters (with and without the end-of-word mark), so any
lower-case prompt tokenizes without a downloaded vocabulary.
"""

from __future__ import annotations

import inspect
import json
import shutil
import string
from pathlib import Path

CHARACTERS = string.ascii_lowercase + string.digits + ",.-'!?"


def build_tiny_inpaint_pipeline(folder: Path, seed: int = 0) -> Path:
    """save_pretrained a tiny StableDiffusionInpaintPipeline into `folder`; returns it."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4),
    )
    vae = AutoencoderKL(  # four blocks: scale factor 8, like the real VAE
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(CHARACTERS) + [c + "</w>" for c in CHARACTERS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if "vocab_file" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers < 5: files only
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"), model_max_length=77)
    else:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return Path(folder)


def as_hub_cache(folder: Path, cache_dir: Path, repo_id: str, commit: str = "0" * 40) -> Path:
    """Lay `folder` out in `cache_dir` the way huggingface_hub caches `repo_id` (refs/main ->
    snapshots/<commit>), so a hub id loads from it offline; returns cache_dir."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return Path(cache_dir)
