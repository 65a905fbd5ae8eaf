"""Choosing the VAE: a folder or a single file (diffusers or LDM keys) encodes the latents (cache keyed by its
hash), decodes the samples, is recorded on the run, and `atelier merge --vae` bakes it into a checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.training.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_vaes(tiny_sd_dir):
    from tests.tiny_models.vae import build_tiny_vae

    return {"other": build_tiny_vae(tiny_sd_dir.parent / "vaes", seed=7),
            "wide": build_tiny_vae(tiny_sd_dir.parent / "vaes", seed=8, latent_channels=8)}


def test_a_single_ldm_file_and_a_folder_load_the_same_vae(tiny_vaes, tiny_sd_dir):
    from diffusers import AutoencoderKL

    from training.vae import load_vae

    base = AutoencoderKL.from_pretrained(tiny_sd_dir / "vae")
    folder = load_vae(str(tiny_vaes["other"]["folder"]), base.config, 4)
    single = load_vae(str(tiny_vaes["other"]["file"]), base.config, 4)
    a, b = folder.vae.state_dict(), single.vae.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert single.vae.config.scaling_factor == base.config.scaling_factor
    assert folder.sha256 != single.sha256 and len(folder.sha256) == 64
    assert any(not torch.equal(a[k], base.state_dict()[k]) for k in a)


def test_a_vae_swap_changes_latents_and_decoded_samples_and_the_run_records_it(tiny_vaes, tiny_sd_dir, kohya_folder,
                                                                               tmp_path):
    from store.registry import file_hash
    from training.config import load_config
    from training.train import run_training

    run = dict(cache_dir=tmp_path / "cache", log=lambda line: None)
    common = dict(max_train_steps=1, train_batch_size=3, validation_prompts=["sks dog"], validation_inference_steps=2,
                  enable_bucket=False)
    own = run_training(load_config(tiny_config(tiny_sd_dir, **common)), kohya_folder, tmp_path / "own", **run)
    folder = tiny_vaes["other"]["folder"]
    swapped = run_training(load_config(tiny_config(tiny_sd_dir, vae=str(folder), **common)), kohya_folder,
                           tmp_path / "swapped", **run)
    assert "vae" not in own["outputs"]
    assert swapped["outputs"]["vae"] == {"name": str(folder), "path": str(folder.resolve()),
                                         "sha256": file_hash(folder)}
    # the latent cache is keyed by the VAE: the second run encodes every image again, to other latents
    assert own["metrics"]["latent_cache"]["misses"] == swapped["metrics"]["latent_cache"]["misses"] == 3
    files = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    assert len(files) == 6
    latents = [load_file(f)["latent_dist"] for f in files]
    assert all(not torch.equal(x, y) for i, x in enumerate(latents) for y in latents[i + 1:])
    # validation samples: same prompt, seed and (1-step) LoRA; decoded by another VAE
    a, b = (Path(result["outputs"]["samples"][0]["path"]).read_bytes() for result in (own, swapped))
    assert a != b


def test_samples_decode_with_the_chosen_vae(tiny_vaes, tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    from training.vae import swap_vae

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    args = dict(num_inference_steps=2, height=64, width=64, output_type="latent")
    latents = pipe("sks dog", generator=torch.Generator().manual_seed(0), **args).images
    with torch.no_grad():
        own = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        chosen = swap_vae(pipe, str(tiny_vaes["other"]["file"]))
        assert pipe.vae is chosen.vae
        other = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        again = pipe("sks dog", generator=torch.Generator().manual_seed(0), **args).images
    assert torch.equal(again, latents)  # the VAE does not change the denoising, only the decoding
    assert (own - other).abs().mean() > 1e-2


def test_a_vae_with_other_latent_channels_fails_before_training_naming_the_field(tiny_vaes, tiny_sd_dir,
                                                                                 kohya_folder, tmp_path):
    from store.config_files import ConfigError
    from training.config import load_config
    from training.preflight import check_before_training
    from training.train import run_training

    for kind in ("folder", "file"):
        config = load_config(tiny_config(tiny_sd_dir, vae=str(tiny_vaes["wide"][kind])))
        with pytest.raises(ConfigError, match=r"^vae: .* has 8 latent channels but the base model's UNet works on 4"):
            check_before_training(config, tiny_sd_dir)
        with pytest.raises(ConfigError, match="8 latent channels"):
            run_training(config, kohya_folder, tmp_path / kind, cache_dir=tmp_path / "cache", log=lambda s: None)
        assert not (tmp_path / "cache").exists()
    with pytest.raises(Exception, match="^vae: model 'no-such-vae' is neither a name"):
        check_before_training(load_config(tiny_config(tiny_sd_dir, vae="no-such-vae")), tiny_sd_dir)


def test_merge_bakes_a_vae_into_a_single_file_checkpoint(tiny_vaes, tiny_sd_file, tmp_path):
    from flows.cli import app

    out = tmp_path / "baked.safetensors"
    vae_file = tiny_vaes["other"]["folder"] / "diffusion_pytorch_model.safetensors"  # diffusers keys, one file
    result = CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--vae", str(vae_file), "--dump_path", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    before, baked, vae = load_file(tiny_sd_file), load_file(out), load_file(vae_file)
    assert summary["vae_bake"]["vae_keys"] == sum(k.startswith("first_stage_model.") for k in before)
    assert set(baked) == set(before)
    # by hand: LDM decoder.up.0 is diffusers' last up block (up_blocks.1 of 2); mid attention q is a 1×1 conv
    assert torch.equal(baked["first_stage_model.decoder.up.0.block.0.conv1.weight"],
                       vae["decoder.up_blocks.1.resnets.0.conv1.weight"])
    assert torch.equal(baked["first_stage_model.encoder.mid.attn_1.q.weight"],
                       vae["encoder.mid_block.attentions.0.to_q.weight"][:, :, None, None])
    assert torch.equal(baked["first_stage_model.quant_conv.weight"], vae["quant_conv.weight"])
    assert not torch.equal(baked["first_stage_model.quant_conv.weight"], before["first_stage_model.quant_conv.weight"])
    unet = [k for k in before if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(baked[k], before[k]) for k in unet)  # nothing else changes

    # the LDM single file bakes to the same tensors; a VAE of another family is refused naming --vae
    again = tmp_path / "again.safetensors"
    assert CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--vae", str(tiny_vaes["other"]["file"]),
                                    "--dump_path", str(again)]).exit_code == 0
    assert all(torch.equal(v, load_file(again)[k]) for k, v in baked.items())
    refused = CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--vae", str(tiny_vaes["wide"]["file"]),
                                       "--dump_path", str(tmp_path / "x.safetensors")])
    message = " ".join(refused.output.split())
    assert refused.exit_code != 0 and "--vae:" in message and "has 8 latent channels but the checkpoint's VAE has 4" in message
