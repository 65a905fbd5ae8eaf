"""LoCon, LoHa, LoKr and DoRA runs on the tiny SD: LyCORIS-layout files, metadata, diffusers, merge, resume."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from store.config_files import ConfigError
from tests.training.conftest import tiny_config

KINDS = ["locon", "loha", "lokr", "dora"]
# suffixes per module, as LyCORIS writes them (LoKr keeps a factor full where the rank would not be smaller)
SUFFIXES = {"locon": {"lora_down.weight", "lora_up.weight", "alpha"},
            "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
            "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
            "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"}}
ATTN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # linear 64 → 64
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # 3×3 conv 32 → 32
TE = "lora_te_text_model_encoder_layers_0_mlp_fc1"
LDM = {ATTN: "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
       CONV: "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
       TE: "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"}


def kind_config(tiny_sd_dir, kind, **fields):
    """kind: a network, or dora-input (DoRA with the magnitude per input channel, A1111's layout)."""
    if kind == "dora-input":
        kind, fields = "dora", {"dora_wd_on_output": False, **fields}
    return tiny_config(tiny_sd_dir, network=kind, rank=4, lora_alpha=2, train_text_encoder=True, learning_rate=1e-2,
                       **({} if kind == "dora" else {"conv_alpha": 1}), **fields)


@pytest.fixture(scope="module")
def adapter_runs(tiny_sd_dir, kohya_folder, tmp_path_factory):
    """Each kind trained 3 steps (UNet + text encoder) on three real photos."""
    from training.config import load_config
    from training.train import run_training

    runs = {}
    for kind in KINDS + ["dora-input"]:
        out = tmp_path_factory.mktemp(kind)
        config = load_config(kind_config(tiny_sd_dir, kind, max_train_steps=3, train_batch_size=2))
        result = run_training(config, kohya_folder, out, dataset={"name": "dogs", "version": 1},
                              cache_dir=out / "cache", log=lambda line: None)
        runs[kind] = {"config": config, "result": result, "path": result["outputs"]["lora"]["path"]}
    return runs


def read(path):
    with safe_open(path, "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def test_network_must_be_a_known_kind_and_belong_to_an_adapter_method(tiny_sd_dir):
    from training.config import load_config

    with pytest.raises(ConfigError, match=r"network: Input should be 'lora', 'locon', 'loha', 'lokr' or 'dora'"):
        load_config(tiny_config(tiny_sd_dir, network="lycoris"))
    with pytest.raises(ConfigError, match="network: loha is an adapter kind; method hypernetwork"):
        load_config(tiny_config(tiny_sd_dir, method="hypernetwork", network="loha"))


@pytest.mark.parametrize("kind", KINDS)
def test_file_has_the_lycoris_keys_and_sd_scripts_metadata(adapter_runs, kind):
    tensors, meta = read(adapter_runs[kind]["path"])
    modules = {k.split(".")[0] for k in tensors}
    assert all(m.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for m in modules)
    assert {k.partition(".")[2] for k in tensors} == SUFFIXES[kind]
    assert ATTN in modules and TE in modules and "lora_unet_time_embedding_linear_1" in modules
    assert (CONV in modules) == (kind != "dora")  # 3×3 convs: LoCon/LoHa/LoKr; DoRA keeps to linear and 1×1
    assert len(modules) == (75 if kind == "dora" else 95)
    if kind != "lokr":  # LoKr's alpha is rank where both factors are full (scale 1)
        assert tensors[f"{ATTN}.alpha"].item() == 2.0 and (kind == "dora" or tensors[f"{CONV}.alpha"].item() == 1.0)
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_network_dim"] == "4"
    assert meta["sshs_model_hash"] and meta["modelspec.hash_sha256"].startswith("0x")
    assert meta["ss_network_alpha"] == "2.0"
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == {"dora": "lora"}.get(kind, kind) and all(isinstance(v, str) for v in args.values())
    assert args["conv_dim"] == ("0" if kind == "dora" else "4") and (args.get("dora_wd") == "True") == (kind == "dora")


def test_lora_keeps_networks_lora(tiny_sd_dir):
    from training.adapters import network_metadata
    from training.config import load_config

    meta = network_metadata(load_config(tiny_config(tiny_sd_dir, rank=8)))
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "8"


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_loads_locon_and_dora_and_every_kind_merges_into_a_pipeline(adapter_runs, tiny_sd_dir, kind):
    """diffusers 0.42 reads kohya lora_up/down (+ resnet convs) but drops dora_scale (with a warning) and has no SD
    LoHa/LoKr converter: DoRA also gets a peft folder (lora_peft/) that diffusers applies with its magnitude, and
    evaluation merges LyCORIS files into the pipeline (training.adapters.load_adapter). LoHa/LoKr load in A1111
    and ComfyUI (tests/training/test_adapter_keys.py)."""
    from diffusers import StableDiffusionPipeline

    from training.adapters import load_adapter

    def pipeline():
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def image(pipe):
        return pipe("sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    path, outputs = adapter_runs[kind]["path"], adapter_runs[kind]["result"]["outputs"]
    pipe = pipeline()
    before = image(pipe)
    merged = pipeline()
    load_adapter(merged, path)  # LyCORIS files: merged in place
    with_merged = image(merged)
    change = abs(with_merged - before).max()
    assert change > 1e-3
    if kind in ("loha", "lokr"):
        with pytest.raises(ValueError, match="have not been correctly renamed"):
            pipe.load_lora_weights(path)
        assert "lora_peft" not in outputs
        return
    pipe.load_lora_weights(outputs["lora_peft"]["path"] if kind == "dora" else path)
    assert abs(image(pipe) - with_merged).max() < 0.05 * change  # diffusers at run time = the merged weights
    pipe.unload_lora_weights()
    assert abs(image(pipe) - before).max() < 1e-6
    if kind == "dora":  # the kohya file alone: diffusers keeps the low-rank part and drops the magnitude
        pipe.load_lora_weights(path)
        assert abs(image(pipe) - with_merged).max() > 0.1 * change


def expected(kind, tensors, module, weight):
    """W + ΔW from the saved factors, written out per kind (strength 1)."""
    t = {k.partition(".")[2]: v.float() for k, v in tensors.items() if k.startswith(module + ".")}
    w = weight.float()
    if kind in ("locon", "dora", "dora-input"):
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        if down.ndim == 4 and down.shape[2] == 3:  # a 3×3 down conv then a 1×1 up conv: ΔW[o] = Σ_r up[o, r]·down[r]
            delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        delta = delta * t["alpha"] / down.shape[0]
    elif kind == "loha":
        rank = t["hada_w1_b"].shape[0]
        delta = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(w.shape)
        delta = delta * t["alpha"] / rank
    else:
        w1 = t["lokr_w1"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        scale = 1.0 if "lokr_w2" in t else t["alpha"] / t["lokr_w2_b"].shape[0]  # both factors full: scale 1
        if w.ndim == 4 and w2.ndim == 4:
            delta = torch.kron(w1[:, :, None, None], w2)
        else:
            delta = torch.kron(w1, w2).reshape(w.shape)
        delta = delta * scale
    if not kind.startswith("dora"):
        return w + delta
    combined = w + delta
    if kind == "dora":  # one norm per output channel
        norms = torch.stack([combined[o].norm() for o in range(combined.shape[0])]).reshape(-1, *[1] * (w.ndim - 1))
    else:  # dora-input: one per input channel
        norms = torch.stack([combined[:, i].norm() for i in range(combined.shape[1])])
        norms = norms.reshape(1, -1, *[1] * (w.ndim - 2))
    assert t["dora_scale"].shape == norms.shape
    return t["dora_scale"] * combined / norms


@pytest.mark.parametrize("kind", KINDS + ["dora-input"])
def test_merge_writes_each_weight_as_computed_by_hand(adapter_runs, tiny_sd_file, tmp_path, kind):
    from flows.cli import app

    out = tmp_path / "merged.safetensors"
    result = CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--lora", adapter_runs[kind]["path"],
                                      "--strength", "1", "--dump_path", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["lora_merge"]
    assert summary["modules"] == (75 if kind.startswith("dora") else 95)
    base, merged = load_file(tiny_sd_file), load_file(out)
    tensors, _ = read(adapter_runs[kind]["path"])
    for module in (ATTN, TE) + (() if kind.startswith("dora") else (CONV,)):
        key = LDM[module]
        want = expected(kind, tensors, module, base[key])
        assert not torch.allclose(want, base[key].float(), atol=1e-6), module  # training moved this weight
        assert torch.allclose(merged[key].float(), want.to(merged[key].dtype).float(), atol=1e-5, rtol=1e-4), module


@pytest.mark.parametrize("kind", KINDS)
def test_stop_and_resume_equals_uninterrupted(tiny_sd_dir, kohya_folder, tmp_path, kind):
    from training.config import load_config
    from training.train import run_training

    config = load_config(kind_config(tiny_sd_dir, kind, max_train_steps=3, train_batch_size=2, use_ema=True,
                                     lr_scheduler="cosine", checkpointing_steps=2))
    run = dict(cache_dir=tmp_path / "cache", log=lambda line: None)
    whole = run_training(config, kohya_folder, tmp_path / "whole", **run)
    assert run_training(config, kohya_folder, tmp_path / "split", stop_at_step=2, **run)["status"] == "stopped"
    torch.manual_seed(4321)  # a resumed process starts with other global RNG state
    resumed = run_training(config, kohya_folder, tmp_path / "split", **run)
    a, b = load_file(whole["outputs"]["lora"]["path"]), load_file(resumed["outputs"]["lora"]["path"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["loss_history"] == whole["metrics"]["loss_history"]


@pytest.mark.parametrize("kind", ["loha", "dora"])
def test_evaluation_samples_a_lycoris_run_unlike_its_base(adapter_runs, tiny_sd_dir, kind):
    import numpy as np

    from evaluation.config import load_preset
    from evaluation.sampling import sample_run

    preset = load_preset({"prompts": ["a photo of {identifier} {class}"], "seeds": [1], "num_inference_steps": 2,
                          "height": 64, "width": 64, "batch_size": 1, "device": "cpu"})
    samples = sample_run("lora", adapter_runs[kind]["result"]["outputs"], str(tiny_sd_dir), None, preset.prompts,
                         preset, "sks", "dog")
    images = {s.model: np.asarray(s.image, dtype=np.int16) for s in samples}
    assert set(images) == {"base", "trained"} and np.abs(images["trained"] - images["base"]).max() > 0


def test_dora_input_axis_is_recorded_and_has_no_diffusers_folder(adapter_runs):
    tensors, meta = read(adapter_runs["dora-input"]["path"])
    assert json.loads(meta["ss_network_args"])["wd_on_output"] == "False"
    assert tensors[f"{ATTN}.dora_scale"].shape == (1, 64) and "lora_peft" not in adapter_runs["dora-input"]["result"]["outputs"]


def test_the_shipped_lycoris_preset_validates():
    from pathlib import Path

    from training.config import load_config

    config = load_config(Path("configs/train/lycoris-sd15.yaml"))
    assert config.network == "loha" and config.conv_dim == 4 and config.uses_lora


def test_pivotal_tuning_trains_a_loha_beside_the_embedding(tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.train import run_training

    config = load_config(tiny_config(tiny_sd_dir, method="textual_inversion", network="loha", rank=2, max_train_steps=2,
                                     textual_inversion={"placeholder_token": "<sks>", "initializer_token": "a",
                                                        "with_lora": True}))
    outputs = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)["outputs"]
    tensors, meta = read(outputs["lora"]["path"])
    assert "embedding" in outputs and f"{ATTN}.hada_w1_a" in tensors and meta["ss_network_module"] == "lycoris.kohya"
