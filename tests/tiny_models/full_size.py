"""SD 1.5 and SDXL at their real architecture with random weights (from configs, no download).

SD 1.5: UNet block_out_channels 320/640/1280/1280 (860 M parameters), CLIP ViT-L/14's text encoder
(12 layers, 768 wide, 123 M), SD's VAE (128/256/512/512, 84 M). SDXL: UNet 320/640/1280 with
transformer depths 1/2/10 and text-time conditioning (2.6 B), CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text
encoders (32 layers, 1280 wide, 695 M), the same VAE. The tokenizer is the tests' one-token-per-byte CLIP
tokenizer (token ids fit the real vocabulary size): key names, shapes and FLOPs are the real models'.
Saved with save_pretrained in fp32 (SD 1.5 ≈ 4.3 GB on disk, SDXL ≈ 14 GB).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models.sd import _tokenizer_folder

VIT_L14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
VIT_BIGG14_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                       num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def sd_vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=512, scaling_factor=scaling_factor)


def _text_encoder(cls, tokenizer, **fields):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **fields))


def sd15_unet_config() -> dict:
    return dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def sdxl_unet_config() -> dict:
    return dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                layers_per_block=2, transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def build_sd15_full(directory: Path) -> Path:
    """`directory/sd15-full`: a StableDiffusionPipeline folder with SD 1.5's architecture, random weights."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(directory) / "sd15-full"
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(Path(directory) / "tokenizer-src"))
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**sd15_unet_config()), vae=sd_vae(),
        text_encoder=_text_encoder(CLIPTextModel, tokenizer, **VIT_L14_TEXT), tokenizer=tokenizer,
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sdxl_full(directory: Path) -> Path:
    """`directory/sdxl-full`: a StableDiffusionXLPipeline folder with SDXL base's architecture, random weights."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(directory) / "sdxl-full"
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(Path(directory) / "tokenizer-src"))
    pipe = StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(**sdxl_unet_config()), vae=sd_vae(0.13025),
        text_encoder=_text_encoder(CLIPTextModel, tokenizer, **VIT_L14_TEXT),
        text_encoder_2=_text_encoder(CLIPTextModelWithProjection, tokenizer, **VIT_BIGG14_TEXT),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         num_train_timesteps=1000, steps_offset=1))
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    return folder
