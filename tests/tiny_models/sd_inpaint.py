"""A tiny Stable Diffusion inpainting pipeline (UNet in_channels=9) saved with save_pretrained.

Reuses the tiny SD 1.x parts (tests/tiny_models/sd.py): 2-layer CLIP text encoder, a tokenizer
loaded from a saved folder, a 2-block VAE; only the UNet differs (latents + mask + masked latents).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models.sd import SEED, tiny_sd_components


def build_tiny_sd_inpaint(directory: Path) -> Path:
    """`directory/tiny-sd-inpaint`, a folder StableDiffusionInpaintPipeline.from_pretrained loads."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    folder = Path(directory) / "tiny-sd-inpaint"
    if (folder / "model_index.json").exists():
        return folder
    parts = tiny_sd_components()
    torch.manual_seed(SEED)
    parts["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    pipe = StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
