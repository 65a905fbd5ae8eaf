"""A tiny Real-ESRGAN checkpoint in the `RealESRGAN_x4plus.pth` layout, built with basicsr's RRDBNet."""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0


def build_esrgan(directory: Path, scale: int = 4, num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 32,
                 name: str | None = None) -> Path:
    """{"params_ema": RRDBNet state dict}; real files have num_feat=64, num_block=23 (spandrel needs num_grow_ch=32)."""
    from preprocess.legacy_basicsr import import_basicsr

    import_basicsr()
    from basicsr.archs.rrdbnet_arch import RRDBNet

    path = Path(directory) / (name or f"RealESRGAN_x{scale}plus-f{num_feat}b{num_block}.pth")
    if not path.exists():
        torch.manual_seed(SEED)
        net = RRDBNet(num_in_ch=3, num_out_ch=3, scale=scale, num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"params_ema": net.state_dict()}, path)
    return path
