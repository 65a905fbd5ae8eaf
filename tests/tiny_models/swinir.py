"""Random-weight SwinIR checkpoints in the published `.pth` layout (`{"params_ema": state_dict}`).

Built with spandrel's own SwinIR class, so the keys are those of the released files
(`003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth`: embed_dim 180, 6 × 6 blocks, window 8,
"nearest+conv" upsampler). `full_size=True` builds that size; the default is a tiny one for tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0


def build_swinir(directory: Path, full_size: bool = False, scale: int = 4) -> Path:
    from spandrel.architectures.SwinIR import SwinIR

    name = f"SwinIR-M_x{scale}_GAN.pth" if full_size else f"SwinIR-tiny_x{scale}.pth"
    path = Path(directory) / name
    if path.exists():
        return path
    torch.manual_seed(SEED)
    size = dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6) if full_size else \
        dict(embed_dim=12, depths=[2], num_heads=[2])
    net = SwinIR(upscale=scale, in_chans=3, img_size=64, window_size=8, img_range=1.0, mlp_ratio=2,
                 upsampler="nearest+conv", resi_connection="1conv", **size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": net.state_dict()}, path)
    return path
