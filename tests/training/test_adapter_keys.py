"""LoCon/LoHa/LoKr/DoRA key names against AUTOMATIC1111's and ComfyUI's loading rules, at SD 1.5's topology.

A1111's built-in Lora extension (extensions-builtin/Lora/lora_convert.py `convert_diffusers_name_to_compvis`,
network_lora/hada/lokr.py) and ComfyUI (comfy/lora.py `model_lora_keys_unet/clip`, comfy/weight_adapter/*.py)
are restated here as rules on names, so the test needs neither program. A1111's rules hard-code SD 1.5's
block layout (two resnets per down block, three per up block), so the UNet here has SD 1.5's blocks at
narrow widths: the names depend on the topology only.
"""

import re
from types import SimpleNamespace

import pytest
import torch

from tests.training.conftest import tiny_config

KINDS = ["locon", "loha", "lokr", "dora"]
CLIP_LAYERS = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2"]
RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def a1111_compvis_name(name: str) -> str | None:
    """A1111's SD 1.x rule: kohya module name → its compvis module name (None: no rule matches)."""
    rules = [
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
        (r"lora_unet_time_embedding_linear_(\d+)(.*)", lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
        (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_"
                   f"{RESNET.get(m[4], m[4]) if m[2] == 'resnets' else m[4]}"),
        (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_"
                   f"{RESNET.get(m[3], m[3]) if m[1] == 'resnets' else m[3]}"),
        (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_"
                   f"{RESNET.get(m[4], m[4]) if m[2] == 'resnets' else m[4]}"),
        (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
        (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
         lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"),
        (r"lora_te_text_model_encoder_layers_(\d+)_(.+)", lambda m: f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"),
    ]
    for pattern, build in rules:
        if match := re.match(pattern, name):
            return build(match)
    return None


def a1111_module_type(suffixes: set[str]) -> str | None:
    """Which of A1111's network module types takes a module with these keys (network_*.py `create_module`)."""
    if {"lora_up.weight", "lora_down.weight"} <= suffixes:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= suffixes:
        return "hada"
    has_1 = "lokr_w1" in suffixes or {"lokr_w1_a", "lokr_w1_b"} <= suffixes
    has_2 = "lokr_w2" in suffixes or {"lokr_w2_a", "lokr_w2_b"} <= suffixes
    return "lokr" if has_1 and has_2 else None


def comfy_adapter(suffixes: set[str]) -> str | None:
    """Which of ComfyUI's weight adapters loads a module with these keys (comfy/weight_adapter/*.py `load`)."""
    if "lora_up.weight" in suffixes and "lora_down.weight" in suffixes:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= suffixes:
        return "loha"
    if suffixes & {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a"}:
        return "lokr"
    return None


@pytest.fixture(scope="module")
def sd15_topology():
    """SD 1.5's UNet blocks (4 levels, 2 resnets down, 3 up, attention in the first 3) at narrow widths, and a CLIP."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=32, attention_head_dim=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                num_attention_heads=4, vocab_size=1000))
    return unet, text_encoder


def network_names(kind: str, unet, text_encoder) -> dict[str, set[str]]:
    """{module name: its key suffixes} of the file training/adapters.py writes for this kind."""
    from training.adapters import add_network, kohya_state
    from training.config import load_config

    config = load_config(tiny_config("unused", network=kind, rank=4, train_text_encoder=True))
    model = SimpleNamespace(pipeline=SimpleNamespace(unet=unet), text_encoders=[text_encoder])
    trained = {"unet": unet}
    add_network(config, model, trained, torch.device("cpu"))
    try:
        names: dict[str, set[str]] = {}
        for key in kohya_state(trained, "sd1", unet):
            module, _, suffix = key.partition(".")
            names.setdefault(module, set()).add(suffix)
        return names
    finally:
        for part in ("unet_lycoris", "text_encoder_lycoris"):
            for module in trained[part].values():
                module.restore()  # put the original forwards back for the next kind


@pytest.mark.parametrize("kind", KINDS)
def test_every_module_has_a_layer_in_a1111_and_comfyui(sd15_topology, kind):
    from training.ldm_keys import unet_key_to_ldm

    unet, text_encoder = sd15_topology
    names = network_names(kind, unet, text_encoder)
    unet_weights = [k for k in unet.state_dict() if k.endswith(".weight")]
    layers = 3
    # A1111: compvis module names of the loaded checkpoint (named_modules of the LDM model, dots → underscores)
    a1111 = {"diffusion_model_" + unet_key_to_ldm(k, unet.config)[: -len(".weight")].replace(".", "_")
             for k in unet_weights}
    a1111 |= {f"transformer_text_model_encoder_layers_{b}_{c}" for b in range(layers) for c in CLIP_LAYERS}
    # ComfyUI: lora_unet_ + every diffusers UNet weight's path; lora_te_text_model_encoder_layers_{b}_{layer}
    comfy = {"lora_unet_" + k[: -len(".weight")].replace(".", "_") for k in unet_weights}
    comfy |= {f"lora_te_text_model_encoder_layers_{b}_{c}" for b in range(layers) for c in CLIP_LAYERS}

    # SD 1.5's UNet: 281 modules with the 3×3 convs, 229 without (DoRA); CLIP: 6 per layer
    assert len(names) == {"dora": 229}.get(kind, 281) + 6 * layers
    for module, suffixes in names.items():
        assert a1111_compvis_name(module) in a1111, module
        assert module in comfy, module
        want = {"locon": ("lora", "lora"), "dora": ("lora", "lora"), "loha": ("hada", "loha"), "lokr": ("lokr", "lokr")}
        assert (a1111_module_type(suffixes), comfy_adapter(suffixes)) == want[kind], (module, suffixes)
        assert ("dora_scale" in suffixes) == (kind == "dora") and "alpha" in suffixes
    parts = {m.split("_")[2] for m in names if m.startswith("lora_unet_")}
    assert parts == ({"down", "mid", "up", "time"} | ({"conv"} if kind != "dora" else set()))  # conv_in / conv_out


@pytest.mark.parametrize("kind", ["locon", "loha", "dora"])
def test_sdxl_files_use_sgm_names_and_load_in_diffusers(kind, kohya_folder, tmp_path):
    """SDXL: UNet modules by their SGM path (as sd-scripts names them), lora_te1_/lora_te2_; LoCon and DoRA's peft folder load."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    from tests.tiny_models.sd import build_tiny_sdxl
    from training.config import load_config
    from training.ldm_keys import unet_key_to_ldm
    from training.train import run_training

    folder = build_tiny_sdxl(tmp_path / "sdxl")
    config = load_config(tiny_config(folder, network=kind, rank=4, max_train_steps=2, train_batch_size=2,
                                     train_text_encoder=True, learning_rate=1e-2))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    path = result["outputs"]["lora"]["path"]
    with safe_open(path, "pt") as handle:
        modules = {k.split(".")[0] for k in handle.keys()}
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    sgm = {"lora_unet_" + unet_key_to_ldm(k, pipe.unet.config)[: -len(".weight")].replace(".", "_")
           for k in pipe.unet.state_dict() if k.endswith(".weight")}  # ComfyUI's and A1111's SDXL rule
    unet_modules = {m for m in modules if m.startswith("lora_unet_")}
    assert unet_modules <= sgm
    assert ("lora_unet_input_blocks_1_0_in_layers_2" in unet_modules) == (kind != "dora")  # a 3×3 resnet conv
    te = modules - unet_modules
    assert te and all(re.fullmatch(rf"lora_te[12]_text_model_encoder_layers_\d+_({'|'.join(CLIP_LAYERS)})", m) for m in te)
    assert {m[:8] for m in te} == {"lora_te1", "lora_te2"}
    def image(p):
        return p("sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]

    before = image(pipe)
    if kind == "locon":
        pipe.load_lora_weights(path)
        assert abs(image(pipe) - before).max() > 1e-4
        loaded = {k for k in pipe.unet.state_dict() if ".lora_A." in k}
        assert len(loaded) == len(unet_modules)  # every module found its layer
    if kind == "dora":  # the peft folder, with both text encoders' magnitudes, = the file merged into the pipeline
        from training.adapters import load_adapter

        merged = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
        merged.set_progress_bar_config(disable=True)
        load_adapter(merged, path)
        change = abs(image(merged) - before).max()
        pipe.load_lora_weights(result["outputs"]["lora_peft"]["path"])
        assert change > 1e-3 and abs(image(pipe) - image(merged)).max() < 0.05 * change
