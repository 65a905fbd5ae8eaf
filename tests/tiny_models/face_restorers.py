"""Random-weight GFPGAN v1.4 and CodeFormer checkpoints in the users' file layout ({"params_ema": ...}).

spandrel builds both at their published sizes (GFPGAN's config is fixed, CodeFormer's conv
stacks are), so these are full-size networks; weights are stored in fp16 to halve the files.
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 0


def _save(state_dict: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    torch.save({"params_ema": half}, path)
    return path


def build_gfpgan(directory: Path) -> Path:
    """`GFPGANv1.4.pth` layout: GFPGANv1Clean, 512 px, channel_multiplier 2."""
    from spandrel.architectures.GFPGAN import GFPGAN

    path = Path(directory) / "GFPGANv1.4.pth"
    if not path.exists():
        torch.manual_seed(SEED)
        net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                     fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
        _save(net.state_dict(), path)
    return path


def build_codeformer(directory: Path) -> Path:
    """`codeformer.pth` layout, with a one-layer 64-wide transformer (the conv stacks are the real size)."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    path = Path(directory) / "codeformer.pth"
    if not path.exists():
        torch.manual_seed(SEED)
        net = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=1024, latent_size=256,
                         connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"])
        _save(net.state_dict(), path)
    return path
