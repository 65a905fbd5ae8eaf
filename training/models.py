"""Load a Stable Diffusion base model (SD 1.x/2.x, SDXL) from local files — never a download.

A diffusers folder loads with from_pretrained; a single `.safetensors`/`.ckpt` checkpoint with
from_single_file and a local config folder (`base_model_config`), since the default config would
come from the Hugging Face Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BaseModel:
    family: str  # sd1 | sd2 | sdxl
    pipeline: Any  # the diffusers pipeline holding all components (kept for validation sampling)
    path: Path
    sha256: str

    @property
    def text_encoders(self) -> list:
        encoders = [self.pipeline.text_encoder]
        if getattr(self.pipeline, "text_encoder_2", None) is not None:
            encoders.append(self.pipeline.text_encoder_2)
        return encoders

    @property
    def tokenizers(self) -> list:
        tokenizers = [self.pipeline.tokenizer]
        if getattr(self.pipeline, "tokenizer_2", None) is not None:
            tokenizers.append(self.pipeline.tokenizer_2)
        return tokenizers


class BaseModelError(ValueError):
    """The base model cannot be loaded; the message says which file and what to do."""


def detect_family(folder: Path) -> str:
    """sd1 / sd2 / sdxl from a diffusers folder's model_index.json and UNet config."""
    index = json.loads((folder / "model_index.json").read_text())
    if "text_encoder_2" in index or "XL" in index.get("_class_name", ""):
        return "sdxl"
    unet = json.loads((folder / "unet" / "config.json").read_text())
    return "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"


def resolve_base_model(name_or_path: str):
    """Registry name or local path → store.registry.ResolvedModel (path + sha256)."""
    from store.registry import load_registry

    return load_registry().resolve(name_or_path)


def load_base_model(name_or_path: str, config_folder: str | None = None, family: str = "auto",
                    resolved=None) -> BaseModel:
    """The pipeline for `name_or_path` in float32 on CPU; the caller moves and casts its parts."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    resolved = resolved or resolve_base_model(name_or_path)
    path = Path(resolved.path)
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise BaseModelError(f"{path}: not a diffusers folder (no model_index.json)")
        family = detect_family(path) if family == "auto" else family
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        pipe = cls.from_pretrained(path, local_files_only=True, safety_checker=None, requires_safety_checker=False) \
            if family != "sdxl" else cls.from_pretrained(path, local_files_only=True)
    else:
        if not config_folder:
            raise BaseModelError(
                f"{path}: a single-file checkpoint needs base_model_config — a local diffusers folder of the "
                f"same family (only its configs and tokenizer are read), since nothing is downloaded"
            )
        config_path = Path(config_folder)
        family = detect_family(config_path) if family == "auto" else family
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        kwargs = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        pipe = cls.from_single_file(str(path), config=str(config_path), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    to_float32(pipe)
    return BaseModel(family, pipe, path, resolved.sha256)


def to_float32(pipe) -> None:
    """Every module of the pipeline in float32, whatever dtype its files hold.

    A folder saved in fp16 loads as fp16 (transformers 5 keeps the saved dtype), and CPU matmuls
    refuse fp16 text-encoder outputs against fp32 LoRA weights; on a GPU, training.train casts the
    frozen parts to the mixed-precision dtype itself.
    """
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and \
                any(p.is_floating_point() and p.dtype != torch.float32 for p in component.parameters()):
            component.to(torch.float32)
