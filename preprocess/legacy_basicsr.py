"""Make the old basicsr / realesrgan / gfpgan packages importable on current torchvision.

basicsr 1.4 imports `torchvision.transforms.functional_tensor`, removed in torchvision 0.17.
Its only use is `rgb_to_grayscale`, which lives on in `torchvision.transforms.functional`;
registering a module under the old name before the import is the whole fix. Atelier itself
loads weights through spandrel (see preprocess/image_models.py); this shim is for code and
tests that build the original architectures (e.g. basicsr's RRDBNet).
"""

from __future__ import annotations

import sys
import types

OLD_NAME = "torchvision.transforms.functional_tensor"


def install_functional_tensor_shim() -> None:
    """Register the removed torchvision module (idempotent; a no-op on old torchvision)."""
    if OLD_NAME in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    shim = types.ModuleType(OLD_NAME)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[OLD_NAME] = shim


def import_basicsr():
    """`import basicsr` with the shim in place; returns the module."""
    install_functional_tensor_shim()
    import basicsr

    return basicsr
