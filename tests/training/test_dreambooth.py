"""DreamBooth with prior preservation: class images generated once and reused; a folder and a single file out."""

from pathlib import Path

import torch

from tests.training.conftest import tiny_config


def test_dreambooth_run_with_prior_preservation(tiny_sd_dir, kohya_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from training.config import load_config
    from training.train import run_training

    lines = []
    config = load_config(tiny_config(tiny_sd_dir, method="dreambooth", max_train_steps=3, learning_rate=1e-4,
                                     enable_bucket=False, gradient_checkpointing=True,
                                     prior={"enabled": True, "num_class_images": 2, "num_inference_steps": 2}))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lines.append)
    assert result["status"] == "succeeded"
    assert any("generating 2 class images of 'a photo of dog'" in line for line in lines)
    class_images = list((tmp_path / "cache" / "class_images").glob("*/*.png"))
    assert len(class_images) == 2

    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    tuned = StableDiffusionPipeline.from_pretrained(result["outputs"]["pipeline"]["path"], local_files_only=True)
    single = StableDiffusionPipeline.from_single_file(result["outputs"]["checkpoint"]["path"], config=str(tiny_sd_dir),
                                                      local_files_only=True)
    tuned_unet, base_unet, single_unet = tuned.unet.state_dict(), base.unet.state_dict(), single.unet.state_dict()
    assert any(not torch.equal(tuned_unet[k], base_unet[k]) for k in base_unet)  # the UNet was trained
    assert all(torch.allclose(single_unet[k].float(), tuned_unet[k], atol=1e-3) for k in tuned_unet)  # fp16 file
    assert torch.equal(tuned.text_encoder.state_dict()["embeddings.token_embedding.weight"],
                       base.text_encoder.state_dict()["embeddings.token_embedding.weight"])  # frozen
    # saved as transformers 4 names them (it loads random weights from transformers 5's flattened names)
    from safetensors import safe_open

    with safe_open(str(Path(result["outputs"]["pipeline"]["path"]) / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())

    # a second run reuses the cached class images and latents
    lines.clear()
    again = run_training(config.model_copy(update={"max_train_steps": 1}), kohya_folder, tmp_path / "again",
                         cache_dir=tmp_path / "cache", log=lines.append)
    assert not any("generating" in line for line in lines)
    assert again["metrics"]["latent_cache"]["misses"] == 0


def test_dreambooth_lora_trains_a_lora_with_the_prior(tiny_sd_dir, kohya_folder, tmp_path):
    from safetensors import safe_open

    from training.config import load_config
    from training.train import run_training

    lines = []
    config = load_config(tiny_config(tiny_sd_dir, method="dreambooth-lora", max_train_steps=2, enable_bucket=False,
                                     instance_prompt="a photo of sks dog",
                                     prior={"enabled": True, "num_class_images": 1, "num_inference_steps": 2,
                                            "class_prompt": "a dog"}))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lines.append)
    assert any("class images of 'a dog'" in line for line in lines)
    assert set(result["outputs"]) == {"lora", "lora_peft", "samples"}
    with safe_open(result["outputs"]["lora"]["path"], "pt") as handle:
        assert handle.metadata()["modelspec.trigger_phrase"] == "sks dog"
