"""SDXL at full topology (random weights, 2.6 B UNet + two text encoders): kohya names as sd-scripts gives them
(LDM block names for the UNet, lora_te1/lora_te2), diffusers loads every module and the output changes.

Building, saving, training and loading SDXL in fp32 peaks at 15 GB and takes 6 minutes on 2 cores: opt-in.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch
from safetensors import safe_open

from tests.training import interop

# measured on the 2-core build machine: 6 min wall, 15.0 GB peak RSS — over the suite's budget (3 min, 12 GB),
# so it runs only when asked: ATELIER_TEST_SDXL_FULL=1 pytest tests/training/test_interop_sdxl.py
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("ATELIER_TEST_SDXL_FULL"),
                                                   reason="full-size SDXL: ~15 GB and ~6 min; set ATELIER_TEST_SDXL_FULL=1")]


@pytest.fixture(scope="session")
def sdxl_full(tmp_path_factory):
    from tests.tiny_models.full_size import build_sdxl_full

    folder = build_sdxl_full(tmp_path_factory.mktemp("sdxl-full"))
    gc.collect()
    return folder


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_full, photos, tmp_path_factory):
    result = interop.train_one_step(sdxl_full, photos, tmp_path_factory.mktemp("sdxl-lora"), "sdxl")
    gc.collect()  # the run's pipeline, before diffusers loads a second one
    outputs = result["outputs"]
    loaded = interop.load_in_diffusers(sdxl_full, "sdxl", outputs["lora"]["path"], outputs["lora_peft"]["path"])
    with safe_open(outputs["lora"]["path"], "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"result": result, "tensors": tensors, **loaded}


def test_sdxl_kohya_keys_are_exactly_the_names_sd_scripts_gives(sdxl_full, sdxl_lora):
    expected = interop.expected_names(sdxl_full, "sdxl")
    # 70 transformer blocks × 10 linears + 11 transformers × proj_in/out; ViT-L 12 × 6, bigG 32 × 6
    assert (len(expected["unet"]), len(expected["text_encoder"]), len(expected["text_encoder_2"])) == (722, 72, 192)
    assert any(n.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for n in expected["unet"])
    names = set(expected["unet"]) | set(expected["text_encoder"]) | set(expected["text_encoder_2"])
    keys = set(sdxl_lora["tensors"])
    assert keys == {f"{n}.{part}" for n in names for part in ("lora_down.weight", "lora_up.weight", "alpha")}


def test_sdxl_loads_in_diffusers_with_nothing_missing_and_changes_the_output(sdxl_lora):
    names = {k.rsplit(".", 2)[0] for k in sdxl_lora["tensors"]}
    assert set(sdxl_lora["loaded"]) == names
    for name, (down, up, scaling) in sdxl_lora["loaded"].items():
        assert torch.equal(down.reshape(-1), sdxl_lora["tensors"][f"{name}.lora_down.weight"].float().reshape(-1))
        assert scaling == pytest.approx(interop.ALPHA / interop.RANK)
    assert sdxl_lora["key_warnings"] == []
    delta = sdxl_lora["kohya"] - sdxl_lora["base"]
    assert delta.abs().max() > 1e-4 * sdxl_lora["base"].abs().max()


def test_sdxl_peft_folder_changes_the_output_by_the_same_amount(sdxl_lora):
    kohya, peft = sdxl_lora["kohya"] - sdxl_lora["base"], sdxl_lora["peft"] - sdxl_lora["base"]
    ratio = (peft.norm() / kohya.norm()).item()
    assert torch.allclose(peft, kohya, rtol=0.02, atol=0.02 * kohya.abs().max().item()), f"peft/kohya change {ratio:.3f}"
