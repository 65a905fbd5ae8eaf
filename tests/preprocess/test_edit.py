"""Step "edit": instruct-pix2pix from a tiny real-format pipeline; instructions per step or per image."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.load import load_image_file
from preprocess.steps import Item, check_params, load_step
from store.registry import load_registry
from tests.tiny_models.fixtures import tiny_ip2p, tiny_sd  # noqa: F401

FAST = {"resolution": 64, "steps": 2}


@pytest.fixture(scope="module")
def fish(photos):
    return load_image_file(photos / "HappyFish.jpg").image.resize((130, 97))


def test_instruction_per_step_and_per_image(atelier_env, tiny_ip2p, fish):
    step = load_step("edit", {"model": str(tiny_ip2p), "instruction": "make it a watercolour", "image_guidance": 1.2,
                              "seed": 3, **FAST}, load_registry())
    first, again = step.run([Item(image=fish)])[0], step.run([Item(image=fish)])[0]
    assert step.backend == "instruct-pix2pix" and first.image.size == fish.size
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert {k: first.meta[k] for k in ("instruction", "image_guidance", "guidance", "seed", "steps", "model")} == {
        "instruction": "make it a watercolour", "image_guidance": 1.2, "guidance": 7.5, "seed": 3, "steps": 2,
        "model": str(tiny_ip2p)}
    per_image = load_step("edit", {"model": str(tiny_ip2p), "instruction_from": "caption", "seed": 3, **FAST},
                          load_registry())
    snow, none = per_image.run([Item(image=fish, caption="add snow"), Item(image=fish)])
    assert snow.meta["instruction"] == "add snow" and snow.image.size == fish.size
    assert none.image is None and none.meta["skipped"].startswith("nothing to do")


def test_a_model_that_is_not_instruct_pix2pix_is_refused(atelier_env, tiny_sd):
    with pytest.raises(ValueError, match="is a text-to-image model, not instruct-pix2pix"):
        load_step("edit", {"model": str(tiny_sd), "instruction": "add snow"}, load_registry())


def test_an_instruction_is_required(atelier_env):
    with pytest.raises(ValueError, match="step 'edit': instruction"):
        check_params("edit", {})
