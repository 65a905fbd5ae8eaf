"""A random-weight LAION aesthetic predictor v2 head, saved like `sac+logos+ava1-l14-linearMSE.pth`.

Same keys and hidden widths as the real file (layers.{0,2,4,6,7}.{weight,bias}: in→1024→128→64→16→1),
with the input width of the CLIP it is used with (tiny CLIP: 32). Weights are seeded and scaled
so that scores of real photos land inside 1–10 and differ from photo to photo.
"""

from __future__ import annotations

from pathlib import Path

WIDTHS = (1024, 128, 64, 16, 1)


def build_tiny_aesthetic_head(path: Path, *, in_features: int = 32, seed: int = 0) -> Path:
    """Write the head to `path` (a .pth of plain tensors, once) and return `path`."""
    path = Path(path)
    if path.exists():
        return path
    import torch

    generator = torch.Generator().manual_seed(seed)
    state, width = {}, in_features
    for index, out_features in zip((0, 2, 4, 6, 7), WIDTHS):
        # variance-preserving weights, so a unit-length embedding keeps its spread through the chain
        state[f"layers.{index}.weight"] = torch.randn(out_features, width, generator=generator) / width**0.5
        state[f"layers.{index}.bias"] = torch.zeros(out_features)
        width = out_features
    state["layers.7.weight"] *= 6.0
    state["layers.7.bias"] = torch.tensor([5.5])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path
