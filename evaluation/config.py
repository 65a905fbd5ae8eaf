"""Evaluation presets (configs/eval/*.yaml) and model slots (configs/slots.yaml), validated at load.

A preset names the prompts (with `{identifier}` and `{class}` placeholders), the seeds and the
sampler settings under the names diffusers' pipelines use, and the encoders the metrics use
(registry names or local folders). Errors name the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from store.config_files import ConfigError, read_yaml
from store.config_files import deep_merge as merge_overrides
from training.aesthetic_options import AestheticOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = REPO_ROOT / "configs" / "eval" / "default.yaml"
DEFAULT_SLOTS = REPO_ROOT / "configs" / "slots.yaml"

# every metric a slot may name, and whether higher is better
METRICS = {"clip_t": True, "clip_i": True, "dino": True, "aesthetic": True, "face_identity": True,
           "diversity": True, "faces_missing": False}


class EvalPreset(AestheticOptions):  # aesthetic_*: aesthetic gradients while sampling
    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    num_inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    height: int = Field(512, ge=8)
    width: int = Field(512, ge=8)
    negative_prompt: str | None = None
    scheduler: str | None = None  # a diffusers scheduler class, e.g. DPMSolverMultistepScheduler; None: the model's
    lora_scale: float = Field(1.0, ge=0)  # LoRA strength for LoRA runs
    hypernetwork_strength: float = Field(1.0, ge=0)  # for hypernetwork runs (A1111's "strength")
    vae: str | None = None  # decode with this VAE (registry name or path); None: the run's training VAE, else the base's
    batch_size: int = Field(4, ge=1)  # images per pipeline call
    device: str = "auto"  # auto | cpu | cuda
    clip_model: str = "clip-vit-l14"
    dino_model: str = "dino-vits16"
    face_model: str | None = "arcface-r50"  # None: no face identity metric
    aesthetic_model: str | None = "laion-aesthetic-v2"  # None: no aesthetic metric

    @model_validator(mode="after")
    def _placeholders(self) -> EvalPreset:
        for prompt in self.prompts:
            try:
                prompt.format(identifier="x", **{"class": "y"})
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"prompt {prompt!r}: only {{identifier}} and {{class}} may be filled ({error})")
        return self

    @property
    def sampler_settings(self) -> dict[str, Any]:
        """What a sample's lineage records: everything that changes the pixels."""
        return self.model_dump(include={"num_inference_steps", "guidance_scale", "height", "width",
                                        "negative_prompt", "scheduler", "lora_scale", "hypernetwork_strength",
                                        "vae"}) | self.aesthetic_settings

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class Guard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.0, ge=0)  # how far the metric may fall (rise, for lower-is-better) vs the champion


class Slot(BaseModel):
    """A place one model serves from: its champion is replaced only by a challenger that beats it."""

    model_config = ConfigDict(extra="forbid")

    primary_metric: str = "dino"
    min_margin: float = Field(0.0, ge=0)  # the challenger must beat the champion's primary metric by this much
    guards: dict[str, Guard] = {}
    publish_path: str | None = None  # the stable file users load (e.g. ComfyUI models/loras/subject.safetensors)
    # pivotal tuning (textual inversion + LoRA): where the LoRA goes, e.g. ComfyUI models/loras/ while the
    # embedding goes to models/embeddings/ (default: beside the embedding as <name>.lora.safetensors)
    publish_lora_path: str | None = None

    @model_validator(mode="after")
    def _known_metrics(self) -> Slot:
        for name in [self.primary_metric, *self.guards]:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
        return self


class SlotsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: dict[str, Slot]


def describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"] if item["type"] != "extra_forbidden" else "unknown field (check the spelling)"
        lines.append(f"{source}: {field}: {msg}")
    return "; ".join(lines)


def load_preset(source: Path | str | dict | None = None, overrides: dict[str, Any] | None = None) -> EvalPreset:
    """A preset file (default configs/eval/default.yaml) or dict, plus `--set` overrides → EvalPreset."""
    if isinstance(source, dict):
        raw, name = dict(source), "preset"
    else:
        path = Path(source) if source else DEFAULT_PRESET
        raw, name = read_yaml(path), str(path)
    if overrides:
        raw, name = merge_overrides(raw, overrides), name + " (with --set overrides)"
    try:
        return EvalPreset.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error, name)) from None


def load_slots(path: Path | str | None = None) -> dict[str, Slot]:
    path = Path(path) if path else DEFAULT_SLOTS
    try:
        return SlotsFile.model_validate(read_yaml(path)).slots
    except ValidationError as error:
        raise ConfigError(describe(error, str(path))) from None


def get_slot(name: str, path: Path | str | None = None) -> Slot:
    slots = load_slots(path)
    if name not in slots:
        raise ConfigError(f"{path or DEFAULT_SLOTS}: no slot {name!r}; slots: {', '.join(slots) or 'none'}")
    return slots[name]
