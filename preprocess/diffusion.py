"""What the Stable Diffusion image steps share: their parameters, pipeline loading, prompts and lineage.

img2img, loopback, detailer and edit load a diffusers pipeline from a local folder (registry name
or path; never a download), optionally with LoRA files and another VAE, swap the sampler by name,
fill a prompt template from the image's caption and tags, and record in meta everything that
changes the pixels (model, prompt, seed, strength, steps, sampler, LoRAs, VAE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from store.config_files import ConfigError

# AUTOMATIC1111's sampler names → (diffusers scheduler class, extra config)
A1111_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "dpm++ 2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++ 2m karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++ sde": ("DPMSolverSinglestepScheduler", {}),
}
TEMPLATE_FIELDS = ("caption", "tags", "name")


class LoraFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # registry name or a local kohya/diffusers LoRA .safetensors
    weight: float = Field(1.0, ge=-4, le=4)


class DiffusionParams(BaseModel):
    """Parameters every SD-backed step takes (each step adds its own)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "sd15"  # registry name or a local diffusers folder
    prompt: str = "{caption}, {tags}"  # template over the image's caption, tags and file name
    negative_prompt: str = ""
    seed: int = 0  # one generator per image, seeded with this: a result does not depend on the batch
    steps: int = Field(20, ge=1, le=200)  # sampler steps at strength 1 (img2img runs strength × steps)
    guidance: float = Field(7.5, ge=0, le=30)
    sampler: str | None = None  # diffusers scheduler class or A1111 name ("Euler a", "DPM++ 2M Karras"); None: the model's
    loras: list[LoraFile] = Field(default_factory=list)
    vae: str | None = None  # registry name or a local AutoencoderKL folder; None: the model's own
    resolution: int = Field(512, ge=64, le=2048)  # short side the model works at; the result keeps the input size

    @field_validator("prompt")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**{f: "" for f in TEMPLATE_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"template {value!r}: only {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)} "
                             f"may be filled ({error})") from None
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str | None) -> str | None:
        if value is not None:
            scheduler_class(value)
        return value


def scheduler_class(name: str) -> tuple[type, dict[str, Any]]:
    """(diffusers scheduler class, config overrides) for a class name or an A1111 sampler name."""
    import diffusers

    class_name, extra = A1111_SAMPLERS.get(name.strip().lower(), (name, {}))
    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler") or not hasattr(cls, "from_config"):
        raise ConfigError(f"sampler {name!r}: not a diffusers scheduler class (e.g. DPMSolverMultistepScheduler) "
                          f"nor one of {', '.join(sorted(A1111_SAMPLERS))}")
    return cls, extra


def set_scheduler(pipe, name: str | None) -> None:
    """Swap in a scheduler by name, keeping the model's noise schedule (betas, timestep spacing)."""
    if not name:
        return
    cls, extra = scheduler_class(name)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


def fill_prompt(template: str, caption: str | None, tags: list[str], name: str = "") -> str:
    """`"{caption}, {tags}"` → `"a man in a red shirt, 1boy, smile"`; empty parts and their commas drop out."""
    text = template.format(caption=caption or "", tags=", ".join(tags), name=Path(name).stem if name else "")
    parts = [part.strip() for part in text.split(",")]
    return ", ".join(part for part in parts if part)


def unet_in_channels(folder: Path) -> int:
    """Input channels of a diffusers folder's UNet: 4 text-to-image, 9 inpainting, 8 instruct-pix2pix."""
    config = Path(folder) / "unet" / "config.json"
    if not config.is_file():
        raise ValueError(f"{folder}: not a diffusers Stable Diffusion folder (no unet/config.json)")
    return int(json.loads(config.read_text()).get("in_channels", 4))


def work_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The size the model runs at: short side `resolution`, aspect kept, both sides multiples of 8."""
    factor = resolution / min(width, height)
    return max(8, round(width * factor / 8) * 8), max(8, round(height * factor / 8) * 8)


def generator(seed: int):
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def load_diffusion_pipeline(cls, resolved, p: DiffusionParams, registry, step: str):
    """`cls.from_pretrained` of a local folder (no safety checker), with the params' VAE, LoRAs and sampler.

    GPU in fp16 when there is one, else CPU fp32. Errors name the step, the field and the file.
    """
    import torch

    folder = Path(resolved.path)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"step {step!r}: model: {folder} is not a diffusers folder (no model_index.json)")
    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    pipe = cls.from_pretrained(str(folder), local_files_only=True, safety_checker=None, feature_extractor=None,
                               requires_safety_checker=False, dtype=dtype)
    if p.vae:  # the training side's VAE choice (registry name, diffusers folder, or an LDM/diffusers single file)
        from training.vae import load_vae

        try:
            chosen = load_vae(p.vae, dict(pipe.vae.config), int(pipe.unet.config.out_channels))
        except ValueError as error:  # a missing file stays ModelMissing, naming where to put it
            raise ValueError(f"step {step!r}: {error}") from None
        pipe.vae = chosen.vae.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, p.sampler)
    if p.loras:
        names = []
        for index, lora in enumerate(p.loras):
            path = Path(registry.resolve(lora.path).path)
            try:
                pipe.load_lora_weights(str(path), adapter_name=f"lora{index}")
            except (ValueError, KeyError, RuntimeError, OSError) as error:
                raise ValueError(f"step {step!r}: loras.{index}.path: {path} is not a LoRA this model loads "
                                 f"({str(error).splitlines()[0][:200]})") from None
            names.append(f"lora{index}")
        pipe.set_adapters(names, adapter_weights=[lora.weight for lora in p.loras])
    return pipe.to("cuda" if cuda else "cpu")


def lineage(p: DiffusionParams, resolved, registry, **extra) -> dict[str, Any]:
    """What every result's meta records (computed once per load): which weights, seed, sampler, LoRAs, VAE."""
    loras = [{"path": lora.path, "weight": lora.weight,
              "sha256": registry.resolve(lora.path).short_hash} for lora in p.loras]
    record = {"model": resolved.name, "weights": resolved.short_hash, "negative_prompt": p.negative_prompt,
              "seed": p.seed, "steps": p.steps, "guidance": p.guidance, "sampler": p.sampler, "loras": loras,
              "vae": p.vae, "resolution": p.resolution}
    if p.vae:
        record["vae_sha256"] = registry.resolve(p.vae).short_hash
    record.update(extra)
    return record
