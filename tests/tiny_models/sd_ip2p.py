"""A tiny instruct-pix2pix pipeline (UNet in_channels=8: latents + image latents) saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_models.sd import SEED, tiny_sd_components


def build_tiny_ip2p(directory: Path) -> Path:
    """`directory/tiny-ip2p`, a folder StableDiffusionInstructPix2PixPipeline.from_pretrained loads."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    folder = Path(directory) / "tiny-ip2p"
    if (folder / "model_index.json").exists():
        return folder
    parts = tiny_sd_components()
    torch.manual_seed(SEED)
    parts["unet"] = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(**parts, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
