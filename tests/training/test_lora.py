"""A LoRA run on real photos: kohya file that A1111/ComfyUI and diffusers load, metrics, samples, falling loss."""

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.training.conftest import tiny_config

REQUIRED_METADATA = ["ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                     "ss_network_args", "ss_sd_model_name", "ss_sd_model_hash", "ss_tag_frequency", "ss_dataset_dirs",
                     "ss_num_train_images", "ss_learning_rate", "ss_max_train_steps", "ss_seed",
                     "ss_training_started_at", "modelspec.architecture", "modelspec.title", "modelspec.resolution"]


def test_kohya_keys_and_metadata_are_what_a1111_and_comfyui_read(lora_run):
    path = lora_run["result"]["outputs"]["lora"]["path"]
    with safe_open(path, "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in keys}
    modules = {k.split(".")[0] for k in keys}
    assert all(m.startswith(("lora_unet_", "lora_te_")) for m in modules)
    assert any(m.startswith("lora_te_text_model_encoder_layers_") for m in modules)  # SD 1.x: one text encoder
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    for module in modules:
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == 4 and tensors[f"{module}.alpha"].item() == 2.0
    assert len(keys) == 3 * len(modules)
    assert all(isinstance(v, str) for v in meta.values()) and not set(REQUIRED_METADATA) - set(meta)
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0" and meta["ss_v2"] == "False"
    assert json.loads(meta["ss_tag_frequency"])["3_sks dog"]["sks dog"] == 3
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_sks dog": {"n_repeats": 3, "img_count": 3}}
    assert meta["modelspec.title"] == meta["ss_output_name"] == Path(path).stem and meta["ss_seed"] == "0"
    assert meta["ss_output_name"].startswith("dogs-v1-")  # plus the start time: no two runs share an A1111 alias


def test_run_records_metrics_samples_and_tensorboard(lora_run):
    result, out = lora_run["result"], lora_run["out"]
    metrics = result["metrics"]
    assert metrics["steps"] == 4 and len(metrics["loss_history"]) == 4 and metrics["seconds_per_step"] > 0
    assert metrics["latent_cache"]["misses"] == 3
    sample = result["outputs"]["samples"][0]
    assert sample["prompt"] == "sks dog" and sample["seed"] == 0 and (out / "samples").exists()
    assert list((out / "logs").glob("events.out.tfevents.*"))


def test_saved_lora_loads_in_diffusers_and_changes_the_output(lora_run, tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def image(p):
        return p("sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]

    before = image(pipe)
    pipe.load_lora_weights(lora_run["result"]["outputs"]["lora"]["path"])
    with_kohya = image(pipe)
    assert abs(with_kohya - before).max() > 1e-3
    pipe.unload_lora_weights()
    assert abs(image(pipe) - before).max() < 1e-6
    pipe.load_lora_weights(lora_run["result"]["outputs"]["lora_peft"]["path"])  # the diffusers/peft layout
    assert abs(image(pipe) - with_kohya).max() < 2e-2  # same weights (the kohya file is fp16)


def test_peft_folder_changes_unet_and_text_encoder_by_what_the_kohya_file_does(lora_run, tiny_sd_dir):
    """alpha 2, rank 4: both layouts load at scale 0.5 (the peft folder once loaded at 1.0, twice the trained strength)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    ids = pipe.tokenizer(["sks dog, football"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def outputs():
        hidden = pipe.text_encoder(ids)[0]
        return hidden, pipe.unet(latents, torch.tensor([500]), hidden).sample

    base = outputs()
    pipe.load_lora_weights(lora_run["result"]["outputs"]["lora"]["path"])
    kohya = outputs()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(lora_run["result"]["outputs"]["lora_peft"]["path"])
    peft = outputs()
    for name, b, k, p in zip(("text encoder", "unet"), base, kohya, peft):
        kohya_delta, peft_delta = k - b, p - b
        assert kohya_delta.abs().max() > 1e-5, name  # the LoRA does something
        ratio = peft_delta.norm() / kohya_delta.norm()
        assert 0.98 < ratio < 1.02, f"{name}: the peft folder changes the output {ratio:.3f}× as much"
        assert (peft_delta - kohya_delta).norm() < 0.02 * kohya_delta.norm(), name  # fp16 rounding of the kohya file


def test_peft_folder_keeps_the_text_model_level_that_transformers_4_needs(lora_run):
    """diffusers 0.32 + transformers 4.x look up `text_encoder.text_model.encoder…`; diffusers ≥ 0.36 strips it."""
    from safetensors import safe_open

    folder = Path(lora_run["result"]["outputs"]["lora_peft"]["path"])
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    text = [k for k in keys if k.startswith("text_encoder.")]
    assert text and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in text)
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert any(k.startswith("unet.down_blocks.1.attentions.0.") for k in keys)


def test_loss_falls_over_50_steps_on_one_image(tiny_sd_dir, photos, tmp_path):
    from training.config import load_config
    from training.train import run_training

    folder = tmp_path / "data" / "1_sks dog"
    folder.mkdir(parents=True)
    shutil.copy(photos / "messi5.jpg", folder / "messi5.jpg")
    config = load_config(tiny_config(tiny_sd_dir, max_train_steps=50, learning_rate=1e-2, rank=8, enable_bucket=False,
                                     mixed_precision="bf16"))
    result = run_training(config, tmp_path / "data", tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    history = result["metrics"]["loss_history"]
    assert len(history) == 50
    assert statistics.mean(history[-10:]) < 0.97 * statistics.mean(history[:10])
    if not torch.cuda.is_available():
        assert any("no GPU" in note for note in result["metrics"]["notes"])  # bf16 asked for, fp32 used


def test_training_from_a_single_file_checkpoint(tiny_sd_dir, tiny_sd_file, kohya_folder, tmp_path):
    from training.config import load_config
    from training.models import BaseModelError
    from training.train import run_training

    without = load_config(tiny_config(tiny_sd_file, max_train_steps=1))
    with pytest.raises(BaseModelError, match="base_model_config"):
        run_training(without, kohya_folder, tmp_path / "a", cache_dir=tmp_path / "cache", log=lambda s: None)
    config = load_config(tiny_config(tiny_sd_file, max_train_steps=1, base_model_config=str(tiny_sd_dir)))
    result = run_training(config, kohya_folder, tmp_path / "b", cache_dir=tmp_path / "cache", log=lambda s: None)
    assert result["status"] == "succeeded" and result["family"] == "sd1"
