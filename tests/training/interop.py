"""Shared by the full-topology interop tests: sd-scripts' LoRA names derived on their own, a run, a diffusers load.

sd-scripts' rules (networks/lora.py, LoRANetwork.create_modules): for every module whose class is
`Transformer2DModel` (UNet) or `CLIPAttention`/`CLIPSdpaAttention`/`CLIPMLP` (text encoders), every child
that is an `nn.Linear` or a 1×1 `nn.Conv2d` gets a LoRA named `prefix + "." + module name + "." + child name`
with "." → "_"; prefixes `lora_unet`, `lora_te` (SDXL: `lora_te1`, `lora_te2`). sd-scripts' SD 1.x UNet
(library/original_unet.py) names its modules as diffusers does; its SDXL UNet (library/sdxl_original_unet.py)
uses the original LDM names, input_blocks.N.1 / middle_block.1 / output_blocks.N.1 for the transformers,
which is the mapping `ldm_transformer_name` below (written here from the LDM layout, not taken from
Atelier's code). sd-scripts pins transformers 4.x, whose CLIPTextModel holds its layers under `text_model.`;
transformers 5's CLIPTextModel is flat (`encoder.layers.N...`), so the names get that `text_model.` back.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import torch

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
RANK, ALPHA = 4, 2.0  # alpha ≠ rank: a loader that drops alpha shows at twice the strength


def ldm_transformer_name(name: str, layers_per_block: int = 2) -> str:
    """diffusers UNet module path → the LDM (sd-scripts SDXL) path of the same module."""
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        return f"input_blocks.{int(m[1]) * (layers_per_block + 1) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        return f"output_blocks.{int(m[1]) * (layers_per_block + 1) + int(m[2])}.1.{m[3]}"
    raise ValueError(f"not a transformer module: {name}")


def sd_scripts_path(root: torch.nn.Module, path: str, ldm: bool) -> str:
    """The module's path in sd-scripts' models (LDM for the SDXL UNet; transformers 4's CLIP layout)."""
    if ldm:
        return ldm_transformer_name(path)
    if type(root).__name__.startswith("CLIPText") and not hasattr(root, "text_model"):
        return f"text_model.{path}"
    return path


def sd_scripts_names(root: torch.nn.Module, prefix: str, classes: tuple[str, ...], ldm: bool = False) -> dict[str, str]:
    """{sd-scripts LoRA name: diffusers/transformers module path} for every module sd-scripts' LoRA targets."""
    names = {}
    for name, module in root.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            linear = type(child).__name__ == "Linear"
            conv1x1 = type(child).__name__ == "Conv2d" and child.kernel_size == (1, 1)
            if linear or conv1x1:
                path = f"{name}.{child_name}"
                sd_path = sd_scripts_path(root, path, ldm)
                names[f"{prefix}.{sd_path}".replace(".", "_")] = path
    return names


def expected_names(folder: Path, family: str) -> dict[str, dict[str, str]]:
    """sd-scripts' names for the model in `folder`, built from its configs on the meta device (no weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    text_classes = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
    out = {"unet": sd_scripts_names(unet, "lora_unet", ("Transformer2DModel",), ldm=family == "sdxl")}
    prefixes = ["lora_te"] if family != "sdxl" else ["lora_te1", "lora_te2"]
    for key, encoder, prefix in zip(("text_encoder", "text_encoder_2"), encoders, prefixes):
        out[key] = sd_scripts_names(encoder, prefix, text_classes)
    return out


def train_one_step(base: Path, photos: Path, work: Path, family: str, steps: int = 1) -> dict:
    from training.config import load_config
    from training.train import run_training

    sub = work / "data" / "1_sks dog"
    sub.mkdir(parents=True, exist_ok=True)
    shutil.copy(photos / "messi5.jpg", sub / "messi5.jpg")
    (sub / "messi5.txt").write_text("sks dog, grass")
    config = load_config({
        "base_model": str(base), "model_family": family, "resolution": 64, "enable_bucket": False,
        "max_train_steps": steps, "learning_rate": 5e-3, "rank": RANK, "lora_alpha": ALPHA, "report_to": "none",
        "checkpointing_steps": 10**6, "train_text_encoder": True, "target_modules": UNET_TARGETS,
        "text_encoder_target_modules": TEXT_TARGETS, "identifier": "sks", "class_word": "dog"})
    return run_training(config, work / "data", work / "out", dataset={"name": "interop", "version": 1},
                        cache_dir=work / "cache", log=lambda line: None)


def _prediction(pipe, family: str) -> torch.Tensor:
    """The UNet's noise prediction for fixed latents and prompt (through the text encoders)."""
    g = torch.Generator().manual_seed(0)
    latents, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    ids = pipe.tokenizer(["sks dog, grass"], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        if family != "sdxl":
            return pipe.unet(latents, t, pipe.text_encoder(ids)[0]).sample
        one = pipe.text_encoder(ids, output_hidden_states=True)
        two = pipe.text_encoder_2(ids, output_hidden_states=True)
        hidden = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        return pipe.unet(latents, t, hidden, added_cond_kwargs={"text_embeds": two[0], "time_ids": time_ids}).sample


def _loaded_modules(pipe, family: str) -> dict[str, torch.nn.Module]:
    """{sd-scripts name: peft LoRA layer} for every module diffusers put a LoRA on."""
    found = {}
    parts = [("unet", pipe.unet, "lora_unet")]
    parts += [("text_encoder", pipe.text_encoder, "lora_te" if family != "sdxl" else "lora_te1")]
    if family == "sdxl":
        parts.append(("text_encoder_2", pipe.text_encoder_2, "lora_te2"))
    for part, root, prefix in parts:
        for name, module in root.named_modules():
            if hasattr(module, "lora_A") and len(getattr(module, "lora_A")):
                path = sd_scripts_path(root, name, part == "unet" and family == "sdxl")
                found[f"{prefix}.{path}".replace(".", "_")] = module
    return found


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def load_in_diffusers(base: Path, family: str, lora_file: Path, peft_folder: Path) -> dict:
    """Base prediction, with the kohya file, with the peft folder; the modules loaded and the warnings logged."""
    import warnings

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(base, torch_dtype=torch.float32)
    records = _Records()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            base_pred = _prediction(pipe, family)
            pipe.load_lora_weights(str(lora_file), adapter_name="kohya")
            modules = _loaded_modules(pipe, family)
            loaded = {name: (m.lora_A["kohya"].weight.detach().clone(), m.lora_B["kohya"].weight.detach().clone(),
                             m.scaling["kohya"]) for name, m in modules.items()}
            kohya_pred = _prediction(pipe, family)
            pipe.unload_lora_weights()
            pipe.load_lora_weights(str(peft_folder), adapter_name="peft")
            peft_pred = _prediction(pipe, family)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    lines = records.lines + [str(w.message) for w in caught]
    return {"base": base_pred, "kohya": kohya_pred, "peft": peft_pred, "loaded": loaded,
            "key_warnings": [line for line in lines if re.search(r"unexpected|missing|not (been )?used", line, re.I)]}
