"""Hypernetworks on the tiny SD: trained on a frozen model, saved in AUTOMATIC1111's file layout, loaded
with torch.load(weights_only=True), and applied to a diffusers pipeline's attention at a strength."""

import pytest
import torch

from tests.training.conftest import tiny_config

HN = {"layer_structure": [1, 2, 1], "activation_func": "relu", "add_layer_norm": True, "use_dropout": True,
      "last_layer_dropout": True}


@pytest.fixture(scope="module")
def hn_run(tiny_sd_dir, kohya_folder, tmp_path_factory):
    from training.config import load_config
    from training.train import run_training

    out = tmp_path_factory.mktemp("hn-run")
    config = load_config(tiny_config(tiny_sd_dir, method="hypernetwork", hypernetwork=HN, max_train_steps=3,
                                     learning_rate=1e-2, checkpointing_steps=3))
    result = run_training(config, kohya_folder, out, dataset={"name": "dogs", "version": 1}, cache_dir=out / "cache",
                          log=lambda line: None)
    return {"config": config, "result": result, "out": out}


def test_the_file_is_a1111s_layout_and_loads_with_weights_only(hn_run):
    from safetensors.torch import load_file

    output = hn_run["result"]["outputs"]["hypernetwork"]
    state = torch.load(output["path"], map_location="cpu", weights_only=True)  # no code runs
    widths = sorted(k for k in state if isinstance(k, int))
    assert widths == [32, 64] == output["sizes"]  # cross-attention context (32) and self-attention (64) widths
    plain = {k: v for k, v in state.items() if not isinstance(k, int)}
    assert plain["layer_structure"] == [1, 2, 1] and plain["activation_func"] == "relu"
    assert plain["is_layer_norm"] is True and plain["use_dropout"] is True and plain["step"] == 3
    assert plain["dropout_structure"] == [0.0, 0.3, 0.0] and plain["last_layer_dropout"] is True
    assert plain["weight_initialization"] == "Normal" and plain["name"] == "dogs-v1" and plain["activate_output"] is False
    assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in plain.values())
    k_state, v_state = state[64]
    # A1111's Sequential: Linear, activation, LayerNorm, Dropout, Linear, LayerNorm (no activation after the last)
    assert sorted(k_state) == ["linear.0.bias", "linear.0.weight", "linear.2.bias", "linear.2.weight",
                               "linear.4.bias", "linear.4.weight", "linear.5.bias", "linear.5.weight"]
    assert k_state["linear.0.weight"].shape == (128, 64) and k_state["linear.4.weight"].shape == (64, 128)
    assert not torch.equal(k_state["linear.0.weight"], v_state["linear.0.weight"])  # a pair, not one MLP twice
    # trained: the checkpoint of the last step holds the same weights as the file
    checkpoint = load_file(hn_run["out"] / "checkpoints" / "checkpoint-000003" / "trainable.safetensors")
    assert torch.equal(checkpoint["hypernetwork.layers.64.0.linear.0.weight"], k_state["linear.0.weight"])
    assert all(name.startswith("hypernetwork.") for name in checkpoint)  # the UNet and text encoder stay frozen


def test_applied_to_a_pipeline_it_changes_the_output_at_a_strength(hn_run, tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    from training.hypernetwork import Hypernetwork, apply_hypernetwork, remove_hypernetwork

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image()
    network = Hypernetwork.load(hn_run["result"]["outputs"]["hypernetwork"]["path"])
    previous = apply_hypernetwork(pipe.unet, network, strength=1.0)
    full = image()
    assert abs(full - before).max() > 1e-3
    network.set_strength(0.5)
    half = image()
    assert 0 < abs(half - before).max() < abs(full - before).max()
    network.set_strength(0.0)
    assert abs(image() - before).max() < 1e-5  # strength 0: the base model's own attention
    remove_hypernetwork(pipe.unet, previous)
    assert abs(image() - before).max() == 0


def test_a1111_files_of_the_first_kind_load(tmp_path):
    """NovelAI-era files: {768: (k, v)} with linear1/linear2 keys and no option keys."""
    from training.hypernetwork import Hypernetwork

    pair = tuple({"linear1.weight": torch.randn(16, 8), "linear1.bias": torch.zeros(16),
                  "linear2.weight": torch.randn(8, 16), "linear2.bias": torch.zeros(8)} for _ in range(2))
    torch.save({8: pair}, tmp_path / "old.pt")
    network = Hypernetwork.load(tmp_path / "old.pt")
    assert network.sizes == [8] and network.options["layer_structure"] == [1, 2, 1]
    context = torch.randn(1, 3, 8)
    k, _ = network.transform(context)
    assert torch.allclose(k, context + (context @ pair[0]["linear1.weight"].T) @ pair[0]["linear2.weight"].T, atol=1e-5)
    other = torch.randn(1, 3, 5)  # a width without a pair passes through
    assert all(out is other for out in network.transform(other))


@pytest.mark.parametrize("structure", [[2, 1], [1, 2], [1]])
def test_a_layer_structure_must_start_and_end_with_1(tiny_sd_dir, structure):
    from store.config_files import ConfigError
    from training.config import load_config

    with pytest.raises(ConfigError, match=r"hypernetwork\.layer_structure: .*must start and end with 1"):
        load_config(tiny_config(tiny_sd_dir, method="hypernetwork", hypernetwork={"layer_structure": structure}))


def test_an_unknown_activation_fails_naming_the_field(tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.hypernetwork import HypernetworkError
    from training.preflight import check_before_training
    from training.train import run_training

    config = load_config(tiny_config(tiny_sd_dir, method="hypernetwork", hypernetwork={"activation_func": "wobble"}))
    with pytest.raises(HypernetworkError, match="hypernetwork.activation_func: 'wobble'"):
        check_before_training(config, tiny_sd_dir)
    with pytest.raises(HypernetworkError, match="hypernetwork.activation_func: 'wobble'"):
        run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)


def test_sdxl_trains_and_applies_at_its_own_widths(tiny_sd_dir, kohya_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models.sd import build_tiny_sdxl
    from training.config import load_config
    from training.hypernetwork import Hypernetwork, apply_hypernetwork
    from training.train import run_training

    sdxl = build_tiny_sdxl(tiny_sd_dir.parent)
    config = load_config(tiny_config(sdxl, method="hypernetwork", max_train_steps=1, enable_bucket=False,
                                     hypernetwork={"weight_init": "XavierNormal"}))
    path = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache",
                        log=lambda s: None)["outputs"]["hypernetwork"]["path"]
    network = Hypernetwork.load(path)
    assert network.sizes == [64]  # SDXL's tiny UNet: 64-wide self-attention and 64-wide (two encoders) context
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    args = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    before = pipe("sks dog", generator=torch.Generator().manual_seed(0), **args).images[0]
    apply_hypernetwork(pipe.unet, network, 1.0)
    assert abs(pipe("sks dog", generator=torch.Generator().manual_seed(0), **args).images[0] - before).max() > 1e-4
