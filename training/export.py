"""Trained weights in the layouts users load: kohya LoRA (A1111/ComfyUI), diffusers/peft LoRA, DreamBooth.

kohya LoRA: `lora_unet_*` / `lora_te_*` (SDXL: `lora_te1_*`, `lora_te2_*`) with `.lora_down.weight`,
`.lora_up.weight` and a scalar `.alpha`; training metadata (`ss_*` and `modelspec.*`) in the header,
all values strings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from training.adapters import network_metadata

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-768-v", "sdxl": "stable-diffusion-xl-v1-base"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(q for q in Path(folder).rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(folder)}\0{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def lora_layers(unet, text_encoders: list) -> dict[str, torch.Tensor]:
    """peft LoRA weights with diffusers prefixes: `unet.*`, `text_encoder.*`, `text_encoder_2.*`."""
    from peft.utils import get_peft_model_state_dict

    layers = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    for index, encoder in enumerate(text_encoders):
        if getattr(encoder, "peft_config", None):
            prefix = "text_encoder" if index == 0 else "text_encoder_2"
            layers.update({f"{prefix}.{k}": v for k, v in get_peft_model_state_dict(encoder).items()})
    return layers


def to_kohya(layers: dict[str, torch.Tensor], alpha: float, family: str,
             unet_config: dict | None = None) -> dict[str, torch.Tensor]:
    """diffusers/peft LoRA weights → kohya keys with the real alpha (diffusers' converter writes alpha = rank).

    SD 1.x/2.x UNet modules keep diffusers names (`lora_unet_down_blocks_…`, as sd-scripts writes them);
    SDXL UNet modules take the original SGM names (`lora_unet_input_blocks_…`), as sd-scripts writes those.
    """
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya

    from training.ldm_keys import unet_key_to_ldm

    if family == "sdxl":
        if unet_config is None:
            raise ValueError("an SDXL LoRA export needs the UNet config (for the SGM module names)")
        renamed = {}
        for key, value in layers.items():
            if key.startswith("unet."):
                module, _, lora_part = key[len("unet."):].partition(".lora_")
                key = "unet." + unet_key_to_ldm(module + ".weight", unet_config)[: -len(".weight")] + ".lora_" + lora_part
            renamed[key] = value
        layers = renamed
    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(layers))
    out = {}
    for key, value in kohya.items():
        if family != "sdxl" and key.startswith("lora_te1_"):
            key = "lora_te_" + key[len("lora_te1_"):]  # SD 1.x/2.x files name the one text encoder lora_te_
        head, sep, rest = key.partition("_te")
        if sep and not rest.split("_", 1)[1].startswith("text_model_"):
            # transformers 5 flattens CLIPTextModel; kohya names keep the `text_model` level
            number, _, module = rest.partition("_")
            key = f"{head}_te{number}_text_model_{module}"
        if key.endswith(".alpha"):
            out[key] = torch.tensor(float(alpha))  # scale = alpha / rank
        else:
            out[key] = value.detach().to(torch.float16).cpu().contiguous()  # what kohya and A1111 write
    return out


def kohya_metadata(config, family: str, base_model_hash: str, dataset: dict[str, Any], examples: list,
                   tag_frequency: dict, started_at: str, resolution: tuple[int, int] | None = None) -> dict[str, str]:
    """ss_* and modelspec.* header entries, all strings (nested values as JSON)."""
    dirs = {}
    for example in examples:
        entry = dirs.setdefault(example.folder, {"n_repeats": example.repeats, "img_count": 0})
        entry["img_count"] += 1
    res = resolution or (config.resolution, config.resolution)
    title = f"{dataset.get('name', 'atelier')}@{dataset.get('version', '?')}"
    meta = {
        "ss_v2": str(family == "sd2"),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        **network_metadata(config),  # ss_network_module, _dim, _alpha, _args (training/adapters.py)
        "ss_sd_model_name": Path(config.base_model).name,
        "ss_sd_model_hash": base_model_hash[:8],
        "ss_new_sd_model_hash": base_model_hash,
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_num_train_images": str(sum(e.repeats for e in examples)),
        "ss_learning_rate": str(config.learning_rate),
        "ss_text_encoder_lr": str(config.text_encoder_lr or config.learning_rate),
        "ss_unet_lr": str(config.learning_rate),
        "ss_max_train_steps": str(config.max_train_steps),
        "ss_batch_size_per_device": str(config.train_batch_size),
        # as sd-scripts counts it: per device × processes × accumulation steps (one optimizer step's samples)
        "ss_total_batch_size": str(config.train_batch_size * config.num_processes * config.gradient_accumulation_steps),
        "atelier_num_processes": str(config.num_processes),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_min_snr_gamma": str(config.snr_gamma),
        "ss_noise_offset": str(config.noise_offset),
        "ss_keep_tokens": str(config.caption.keep_tokens),
        "ss_shuffle_caption": str(config.caption.shuffle_tags),
        "ss_caption_dropout_rate": str(config.caption.caption_dropout_rate),
        "ss_mixed_precision": config.mixed_precision,
        "ss_resolution": f"({res[0]}, {res[1]})",
        "ss_enable_bucket": str(config.enable_bucket),
        "ss_seed": str(config.seed),
        "ss_training_started_at": started_at,
        "ss_output_name": title,
        "atelier_dataset": dataset.get("name", ""),
        "atelier_dataset_version": str(dataset.get("version", "")),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{MODELSPEC_ARCH[family]}/lora",
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{res[0]}x{res[1]}",
        "modelspec.date": started_at,
    }
    if config.identifier or config.class_word:
        meta["modelspec.trigger_phrase"] = " ".join(p for p in (config.identifier, config.class_word) if p)
    if config.method == "textual_inversion":  # pivotal tuning: the LoRA goes with the embedding's word
        meta["modelspec.trigger_phrase"] = config.textual_inversion.placeholder_token
    return meta


def save_lora_kohya(path: Path, layers: dict[str, torch.Tensor], alpha: float, family: str,
                    metadata: dict[str, str], unet_config: dict | None = None) -> dict[str, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(to_kohya(layers, alpha, family, unet_config), str(tmp), metadata=metadata)
    tmp.replace(path)
    return {"path": str(path), "sha256": sha256_file(path)}


def save_lora_peft(folder: Path, pipeline_cls, layers: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, str]:
    """diffusers layout (`pytorch_lora_weights.safetensors`, peft keys) that `load_lora_weights(folder)` reads."""
    folder = Path(folder)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in layers.items():
        head, _, rest = key.partition(".")
        groups.setdefault(head, {})[rest] = value.detach().cpu().contiguous()
    kwargs = {"unet_lora_layers": groups.get("unet")}
    if "text_encoder" in groups:
        kwargs["text_encoder_lora_layers"] = groups["text_encoder"]
    if "text_encoder_2" in groups:
        kwargs["text_encoder_2_lora_layers"] = groups["text_encoder_2"]
    pipeline_cls.save_lora_weights(folder, safe_serialization=True, **kwargs)
    (folder / "lora_config.json").write_text(json.dumps({"rank": rank, "lora_alpha": alpha}))
    return {"path": str(folder), "sha256": sha256_folder(folder)}


def save_dreambooth(folder: Path, pipeline, family: str) -> dict[str, dict[str, str]]:
    """The fine-tuned pipeline as a diffusers folder, and (SD 1.x) an LDM single-file checkpoint."""
    from training.ldm_keys import pipeline_to_ldm

    folder = Path(folder)
    pipeline.save_pretrained(folder / "pipeline", safe_serialization=True)
    outputs = {"pipeline": {"path": str(folder / "pipeline"), "sha256": sha256_folder(folder / "pipeline")}}
    if family == "sd1":  # SD 2.x and SDXL keep OpenCLIP in their single files: that layout is not written yet
        path = folder / "model.safetensors"
        state = pipeline_to_ldm(pipeline.unet, pipeline.vae, pipeline.text_encoder)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(path),
                  metadata={"modelspec.architecture": MODELSPEC_ARCH[family], "modelspec.sai_model_spec": "1.0.0"})
        outputs["checkpoint"] = {"path": str(path), "sha256": sha256_file(path)}
    return outputs
