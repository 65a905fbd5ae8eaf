"""SwinIR (spandrel, the released .pth layout) and LDSR (diffusers' LDM ×4 pipeline) as upscale backends."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import load_registry
from tests.tiny_models.fixtures import tiny_ldsr, tiny_sd, tiny_swinir  # noqa: F401


@pytest.fixture(scope="module")
def fish(photos):
    return load_image_file(photos / "HappyFish.jpg").image.resize((75, 56))


def test_swinir_upscales_tiled_like_untiled(atelier_env, tiny_swinir, fish):
    tiled = load_step("upscale", {"model": str(tiny_swinir), "target": 224, "tile": 32, "tile_pad": 16}, load_registry())
    whole = load_step("upscale", {"model": str(tiny_swinir), "target": 224, "tile": 128}, load_registry())
    a, b = tiled.run([Item(image=fish)])[0], whole.run([Item(image=fish)])[0]
    assert tiled.backend == "swinir" and a.meta["scale"] == 4 and a.image.size == (300, 224)
    # windows see a little less context at tile edges: close to the untiled result, not equal
    assert np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).mean() < 3


def test_ldsr_upscales_reproducibly(atelier_env, tiny_ldsr, fish):
    step = load_step("upscale", {"model": str(tiny_ldsr), "target": 112, "tile": 64, "steps": 2, "seed": 1},
                     load_registry())
    first, again = step.run([Item(image=fish)])[0], step.run([Item(image=fish)])[0]
    assert step.backend == "ldsr" and first.image.size == (150, 112)
    assert first.meta["steps"] == 2 and first.meta["seed"] == 1 and first.meta["scale"] == 4
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_a_folder_that_is_not_ldsr_is_refused(atelier_env, tiny_sd):
    with pytest.raises(ValueError, match="not an LDMSuperResolutionPipeline"):
        load_step("upscale", {"model": str(tiny_sd)}, load_registry())
