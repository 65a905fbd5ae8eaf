"""Stand-in models for `make demo`'s training half: a tiny Stable Diffusion 1.x, CLIP and DINO.

No package ships Stable Diffusion, CLIP or DINO, so the demo builds random-weight (seeded) ones
from the diffusers / transformers classes, in their real formats, to show the chain commit →
export → LoRA training → evaluation → promotion working. Their numbers mean nothing; they are
labelled as stand-ins wherever the demo prints them. Put SD 1.5 in place
(`atelier models pull sd15`) to train for real. Each folder is built once and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 0
TINY = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level BPE vocabulary with no merges: every byte is a token (and its `</w>` form)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _tokenizer(folder: Path):
    """A CLIPTokenizer saved to `folder` and loaded back (transformers 5: from a folder, never from paths)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return CLIPTokenizer.from_pretrained(folder)


def build_stand_in_sd(folder: Path) -> Path:
    """A tiny StableDiffusionPipeline folder (UNet 32/64 channels, 2-layer CLIP text encoder, 64 px)."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, sample_size=64)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp) / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **TINY | {"num_attention_heads": 4}, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=32))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)  # model_index.json marks a finished folder
    return folder


def build_stand_in_clip(folder: Path) -> Path:
    """A tiny CLIPModel + CLIPProcessor folder (32 px images, 32-wide embeddings), as openai/clip-vit-* loads."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _tokenizer(folder)
    config = CLIPConfig(
        text_config=TINY | {"vocab_size": len(tokenizer), "max_position_embeddings": 77,
                            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id},
        vision_config=TINY | {"image_size": 32, "patch_size": 8, "num_channels": 3}, projection_dim=32)
    torch.manual_seed(SEED)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(folder)
    CLIPModel(config).eval().save_pretrained(folder)  # config.json last: it marks a finished folder
    return folder


def build_stand_in_dino(folder: Path) -> Path:
    """A tiny ViTModel folder (as facebook/dino-vits16 loads) for the DINO subject-fidelity metric."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = ViTModel(ViTConfig(image_size=32, patch_size=8, **TINY, initializer_range=0.2), add_pooling_layer=False)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    model.eval().save_pretrained(folder)
    return folder
