"""A tiny LDM ×4 super-resolution pipeline in the `CompVis/ldm-super-resolution-4x-openimages` layout.

A VQModel with three blocks (×4 between latents and pixels), a UNet2DModel taking the noisy
latents + the low-resolution image (6 channels) and a DDIM scheduler, saved with save_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0


def build_tiny_ldsr(directory: Path) -> Path:
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel

    folder = Path(directory) / "tiny-ldsr"
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(SEED)
    # the real UNet has attention at its lower levels; here only the mid block, at 1/4 of the tile
    unet = UNet2DModel(sample_size=32, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(32, 32, 64),
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=32)
    vqvae = VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=64, block_out_channels=(32, 32, 32),
                    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                    layers_per_block=1, norm_num_groups=32)
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="linear", num_train_timesteps=1000,
                              clip_sample=False, timestep_spacing="leading")
    LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder
