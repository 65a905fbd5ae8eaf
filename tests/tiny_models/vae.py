"""Tiny VAEs in the shapes of the tiny SD's own (tests/tiny_models/sd.py), with other weights.

`build_tiny_vae(dir, seed)` writes a diffusers VAE folder (`config.json` +
`diffusion_pytorch_model.safetensors`) and the same weights as one LDM-layout `.safetensors`
(`encoder.down.0.block.0…`, as sd-vae-ft-mse-original ships), so both kinds of `vae:` load.
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_vae(directory: Path, seed: int = 7, latent_channels: int = 4) -> dict[str, Path]:
    """{"folder": diffusers VAE folder, "file": LDM single-file safetensors}; random weights, seeded."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from training.ldm_keys import VAE_PREFIX, vae_state_to_ldm

    directory = Path(directory)
    folder, file = directory / f"tiny-vae-{seed}-c{latent_channels}", directory / f"tiny-vae-{seed}-c{latent_channels}.safetensors"
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=latent_channels,
            norm_num_groups=32, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, sample_size=64,
        )
        vae.save_pretrained(folder, safe_serialization=True)
        ldm = vae_state_to_ldm(vae.state_dict(), 2)
        save_file({k[len(VAE_PREFIX):]: v.contiguous() for k, v in ldm.items()}, str(file))
    return {"folder": folder, "file": file}
