"""SD 1.5 at full topology (random weights): the kohya LoRA file has exactly sd-scripts' names, diffusers loads it
with nothing missing or left over and it changes the output; the peft folder changes it by the same amount (alpha baked in by i12a).

One LoRA training step at 64 px on UNet (attention, proj_in/out, feed-forward) and text encoder (attention, MLP).
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.training import interop


@pytest.fixture(scope="session")
def sd15_full(tmp_path_factory):
    from tests.tiny_models.full_size import build_sd15_full

    return build_sd15_full(tmp_path_factory.mktemp("sd15-full"))


@pytest.fixture(scope="module")
def sd15_lora(sd15_full, photos, tmp_path_factory):
    result = interop.train_one_step(sd15_full, photos, tmp_path_factory.mktemp("sd15-lora"), "sd1")
    outputs = result["outputs"]
    loaded = interop.load_in_diffusers(sd15_full, "sd1", outputs["lora"]["path"], outputs["lora_peft"]["path"])
    with safe_open(outputs["lora"]["path"], "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"result": result, "tensors": tensors, **loaded}


def test_kohya_keys_are_exactly_the_names_sd_scripts_gives(sd15_full, sd15_lora):
    expected = interop.expected_names(sd15_full, "sd1")
    assert len(expected["unet"]) == 192 and len(expected["text_encoder"]) == 72  # SD 1.5's counts in sd-scripts
    names = set(expected["unet"]) | set(expected["text_encoder"])
    keys = set(sd15_lora["tensors"])
    assert keys == {f"{n}.{part}" for n in names for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    for name in names:
        down, up = sd15_lora["tensors"][f"{name}.lora_down.weight"], sd15_lora["tensors"][f"{name}.lora_up.weight"]
        assert down.shape[0] == interop.RANK and up.shape[1] == interop.RANK
        assert sd15_lora["tensors"][f"{name}.alpha"].item() == interop.ALPHA
        if name.endswith(("proj_in", "proj_out")):  # SD 1.5's 1×1 convolutions: conv-shaped LoRA as sd-scripts
            assert down.dim() == 4 and down.shape[2:] == (1, 1)


def test_diffusers_loads_every_module_with_nothing_missing_or_unexpected(sd15_lora):
    names = {k.rsplit(".", 2)[0] for k in sd15_lora["tensors"]}
    assert set(sd15_lora["loaded"]) == names  # every file module became a LoRA layer, and no other did
    for name, (down, up, scaling) in sd15_lora["loaded"].items():
        assert torch.equal(down.reshape(-1), sd15_lora["tensors"][f"{name}.lora_down.weight"].float().reshape(-1))
        assert torch.equal(up.reshape(-1), sd15_lora["tensors"][f"{name}.lora_up.weight"].float().reshape(-1))
        assert scaling == pytest.approx(interop.ALPHA / interop.RANK)
    assert sd15_lora["key_warnings"] == []


def test_the_lora_changes_the_output(sd15_lora):
    delta = sd15_lora["kohya"] - sd15_lora["base"]
    assert delta.abs().max() > 1e-4 * sd15_lora["base"].abs().max()


def test_the_peft_folder_changes_the_output_by_the_same_amount(sd15_lora):
    kohya, peft = sd15_lora["kohya"] - sd15_lora["base"], sd15_lora["peft"] - sd15_lora["base"]
    ratio = (peft.norm() / kohya.norm()).item()
    assert torch.allclose(peft, kohya, rtol=0.02, atol=0.02 * kohya.abs().max().item()), f"peft/kohya change {ratio:.3f}"
