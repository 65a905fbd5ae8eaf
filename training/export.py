"""Trained weights in the layouts users load: kohya LoRA (A1111/ComfyUI), diffusers/peft LoRA, DreamBooth.

kohya LoRA: `lora_unet_*` / `lora_te_*` (SDXL: `lora_te1_*`, `lora_te2_*`) with `.lora_down.weight`,
`.lora_up.weight` and a scalar `.alpha`; training metadata (`ss_*` and `modelspec.*`) in the header,
all values strings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


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


def share_readable(outputs) -> None:
    """Files 0644 and folders 0755 for every path in a run's outputs (a file, a folder, or nested dicts of them).

    Weights are read by services running as other users (ComfyUI, A1111), and temporary-file helpers
    create 0600 files; this leaves the owner's write bit and gives everyone else read access.
    """
    if isinstance(outputs, dict):
        for key, value in outputs.items():
            if key == "path" and isinstance(value, str):
                share_path(Path(value))
            else:
                share_readable(value)
    elif isinstance(outputs, list):
        for value in outputs:
            share_readable(value)


def share_path(path: Path) -> None:
    path = Path(path)
    if path.is_dir():
        path.chmod(0o755)
        for item in path.rglob("*"):
            item.chmod(0o755 if item.is_dir() else 0o644)
    elif path.is_file():
        path.chmod(0o644)


def save_lora_kohya(path: Path, layers: dict[str, torch.Tensor], alpha: float, family: str,
                    metadata: dict[str, str], unet_config: dict | None = None) -> dict[str, str]:
    """The kohya file, with sd-scripts' sshs_* hashes and modelspec.hash_sha256 of its own tensors; mode 0644."""
    from training.metadata import lora_hashes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tensors = to_kohya(layers, alpha, family, unet_config)
    save_file(tensors, str(tmp), metadata={**metadata, **lora_hashes(tensors, metadata)})
    tmp.chmod(0o644)
    tmp.replace(path)
    return {"path": str(path), "sha256": sha256_file(path)}


def peft_layout(layers: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """peft LoRA weights as every diffusers loads them at the trained strength, text encoders in either transformers.

    diffusers reads no lora_alpha beside peft keys (it takes alpha = rank, scale 1), so the scale
    alpha/rank is baked into lora_B. Text-encoder keys keep CLIPTextModel's `text_model.` level:
    transformers 4.x needs it, and diffusers ≥ 0.36 strips it for transformers 5's flattened model.
    """
    scale = float(alpha) / rank
    out = {}
    for key, value in layers.items():
        value = value.detach().float().cpu()
        if ".lora_B." in key:
            value = value * scale
        head, _, rest = key.partition(".")
        if head.startswith("text_encoder") and not rest.startswith("text_model."):
            key = f"{head}.text_model.{rest}"
        out[key] = value.contiguous()
    return out


def save_lora_peft(folder: Path, pipeline_cls, layers: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, str]:
    """diffusers layout (`pytorch_lora_weights.safetensors`, peft keys) that `load_lora_weights(folder)` reads."""
    folder = Path(folder)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_layout(layers, alpha, rank).items():
        head, _, rest = key.partition(".")
        groups.setdefault(head, {})[rest] = value
    kwargs = {"unet_lora_layers": groups.get("unet")}
    if "text_encoder" in groups:
        kwargs["text_encoder_lora_layers"] = groups["text_encoder"]
    if "text_encoder_2" in groups:
        kwargs["text_encoder_2_lora_layers"] = groups["text_encoder_2"]
    pipeline_cls.save_lora_weights(folder, safe_serialization=True, **kwargs)
    # what was trained; the weights already carry alpha/rank, so a loader must use lora_alpha = rank
    (folder / "lora_config.json").write_text(json.dumps({"rank": rank, "lora_alpha": rank, "trained_lora_alpha": alpha,
                                                         "alpha_baked_into_lora_B": alpha / rank}))
    share_path(folder)
    return {"path": str(folder), "sha256": sha256_folder(folder)}


def keep_text_model_level(folder: Path) -> None:
    """CLIP text-encoder weights under `text_model.*`, as transformers 4 saves them (transformers 5 drops the level).

    transformers 4 (what sd-scripts pins) silently loads random weights from the flattened names;
    transformers 5 reads either. `text_projection.*` stays at the top, where both put it.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    def renamed(key: str) -> str:
        return key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"

    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            metadata, keys = handle.metadata(), list(handle.keys())
        if all(renamed(k) == k for k in keys):
            continue
        state = load_file(str(path))
        save_file({renamed(k): v for k, v in state.items()}, str(path), metadata=metadata)
    index = Path(folder) / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def save_dreambooth(folder: Path, pipeline, family: str) -> dict[str, dict[str, str]]:
    """The fine-tuned pipeline as a diffusers folder, and (SD 1.x) an LDM single-file checkpoint."""
    from training.ldm_keys import pipeline_to_ldm
    from training.metadata import modelspec_architecture, modelspec_implementation

    folder = Path(folder)
    pipeline.save_pretrained(folder / "pipeline", safe_serialization=True)
    for name in ("text_encoder", "text_encoder_2"):
        if (folder / "pipeline" / name).is_dir():
            keep_text_model_level(folder / "pipeline" / name)
    outputs = {"pipeline": {"path": str(folder / "pipeline"), "sha256": sha256_folder(folder / "pipeline")}}
    if family == "sd1":  # SD 2.x and SDXL keep OpenCLIP in their single files: that layout is not written yet
        path = folder / "model.safetensors"
        state = pipeline_to_ldm(pipeline.unet, pipeline.vae, pipeline.text_encoder)
        v_prediction = pipeline.scheduler.config.get("prediction_type") == "v_prediction"
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(path), metadata={
            "modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": modelspec_architecture(family, v_prediction),
            "modelspec.implementation": modelspec_implementation(family, "checkpoint"),
            "modelspec.prediction_type": "v" if v_prediction else "epsilon"})
        outputs["checkpoint"] = {"path": str(path), "sha256": sha256_file(path)}
    return outputs
