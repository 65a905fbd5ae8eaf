"""A tiny Stable Diffusion 1.x in the real formats: a diffusers folder and an LDM single-file checkpoint.

UNet block_out_channels (32, 64), a 2-layer CLIP text encoder, a 2-block VAE (latents at 1/2 of the
image size) and a character-level CLIP tokenizer written from a small vocab. Random weights, fixed
seed: the same files every time. Used by training and evaluation tests; signatures stay stable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SEED = 0


def _tokenizer_folder(folder: Path) -> Path:
    """A CLIP BPE tokenizer with one token per byte (+ `</w>` forms) and no merges."""
    # GPT-2's byte → printable-character table, which CLIP's BPE uses
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }))
    return folder


def tiny_sd_components() -> dict:
    """The tiny SD 1.x modules (random weights, seeded), a tokenizer and a DDPM-style scheduler."""
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, sample_size=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(Path(tmp) / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def build_tiny_sd(directory: Path) -> Path:
    """Save a tiny StableDiffusionPipeline with save_pretrained into `directory/tiny-sd`; returns that folder."""
    from diffusers import StableDiffusionPipeline

    folder = Path(directory) / "tiny-sd"
    if (folder / "model_index.json").exists():
        return folder
    pipe = StableDiffusionPipeline(**tiny_sd_components(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd_single_file(directory: Path) -> Path:
    """The same tiny SD as one `.safetensors` in the original LDM key layout; returns the file.

    Load it with `from_single_file(path, config=build_tiny_sd(directory))` — the folder gives the configs.
    """
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from training.ldm_keys import pipeline_to_ldm

    path = Path(directory) / "tiny-sd.safetensors"
    if path.exists():
        return path
    pipe = StableDiffusionPipeline.from_pretrained(build_tiny_sd(directory), local_files_only=True)
    save_file(pipeline_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder), str(path))
    return path


def build_tiny_sdxl(directory: Path) -> Path:
    """A tiny StableDiffusionXLPipeline (two CLIP text encoders, text_time UNet) saved into `directory/tiny-sdxl`."""
    import tempfile

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(directory) / "tiny-sdxl"
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, sample_size=64,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(Path(tmp) / "tokenizer"))
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=CLIPTextModel(config), tokenizer=tokenizer,
                                     text_encoder_2=CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
                                     scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
