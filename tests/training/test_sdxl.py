"""SDXL: a LoRA on a tiny SDXL (two text encoders, size/crop conditioning) saves in sd-scripts' SDXL layout."""

import pytest
import torch
from safetensors import safe_open

from tests.training.conftest import tiny_config


@pytest.fixture(scope="package")
def tiny_sdxl_dir(tmp_path_factory):
    from tests.tiny_models.sd import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def test_sdxl_lora_saves_sgm_names_and_loads_in_diffusers(tiny_sdxl_dir, kohya_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from training.config import load_config
    from training.train import run_training

    config = load_config(tiny_config(tiny_sdxl_dir, max_train_steps=3, train_batch_size=2, train_text_encoder=True,
                                     learning_rate=1e-2))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    assert result["family"] == "sdxl"
    path = result["outputs"]["lora"]["path"]
    with safe_open(path, "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}
        meta = handle.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"  # as sd-scripts
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q" in modules  # SGM name, as sd-scripts
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k" in modules
    assert any(m.startswith("lora_te1_text_model_") for m in modules)
    assert any(m.startswith("lora_te2_text_model_") for m in modules)

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image()
    pipe.load_lora_weights(path)
    with_kohya = image()
    assert abs(with_kohya - before).max() > 1e-4
    unet_layers = [k for k in pipe.unet.state_dict() if ".lora_A." in k]
    assert len(unet_layers) == sum(1 for m in modules if m.startswith("lora_unet_"))  # every module found its layer
    ids = pipe.tokenizer(["sks dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids

    @torch.no_grad()
    def encoded():
        return [pipe.text_encoder(ids)[0], pipe.text_encoder_2(ids)[0]]

    kohya_states = encoded()
    pipe.unload_lora_weights()
    base_states = encoded()
    pipe.load_lora_weights(result["outputs"]["lora_peft"]["path"])
    assert abs(image() - with_kohya).max() < 1e-2
    for base, kohya, peft in zip(base_states, kohya_states, encoded()):  # both encoders at the kohya file's strength
        assert 0.98 < float((peft - base).norm() / (kohya - base).norm()) < 1.02
