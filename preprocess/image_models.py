"""Image-to-image networks (Real-ESRGAN, GFPGAN, CodeFormer) loaded through spandrel.

spandrel reads the same .pth files users have (`RealESRGAN_x4plus.pth`, `GFPGANv1.4.pth`,
`codeformer.pth`) and detects the architecture from the keys. The file itself is read by
store.registry.load_state_dict: safetensors, or a pickle with weights_only=True — a
checkpoint that needs code execution is refused before spandrel sees it.
"""

from __future__ import annotations

from pathlib import Path

from store.registry import load_state_dict

_EXTRA_INSTALLED = False


def _install_extra_arches() -> None:
    global _EXTRA_INSTALLED
    if _EXTRA_INSTALLED:
        return
    from spandrel import MAIN_REGISTRY
    from spandrel_extra_arches import (
        EXTRA_REGISTRY,  # CodeFormer lives here (non-commercial licence)
    )

    MAIN_REGISTRY.add(*EXTRA_REGISTRY)
    _EXTRA_INSTALLED = True


def load_image_model(path: Path, expect: set[str] | None = None):
    """A spandrel ImageModelDescriptor in eval mode, on the GPU when there is one; `expect`: allowed ids."""
    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    _install_extra_arches()
    state_dict = load_state_dict(Path(path))
    known = ", ".join(sorted(expect or []))
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise ValueError(f"{path}: not a model architecture Atelier knows (expected {known})") from None
    except RuntimeError as error:  # detected architecture, but tensors of other shapes (a variant spandrel can't size)
        first = str(error).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit the detected architecture ({first})") from None
    if torch.cuda.is_available():
        descriptor.to("cuda")
    if expect and descriptor.architecture.id not in expect:
        raise ValueError(f"{path}: is a {descriptor.architecture.id} model, expected {' or '.join(sorted(expect))}")
    descriptor.model.eval()
    return descriptor
