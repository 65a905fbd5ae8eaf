"""Samples with fixed prompts and seeds, from a trained model and from its base model alone.

The same (prompt, seed) always gives the same latents: each image has its own torch.Generator,
so batching does not change a sample. A LoRA run samples base + LoRA at `lora_scale`; a
DreamBooth run samples its own pipeline folder; a textual-inversion run the base with its embedding
loaded (its prompts use the placeholder token as the identifier); a hypernetwork run the base with
the hypernetwork on its attention at `hypernetwork_strength`. The base model is sampled with the
same settings, and both decode with the same VAE (the preset's `vae`, else the one the run trained with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from evaluation.config import ConfigError, EvalPreset
from preprocess.tagging import pick_device


@dataclass
class GeneratedSample:
    model: str  # trained | base
    template: str  # the preset's prompt, with placeholders
    prompt: str  # as sent to the pipeline
    seed: int
    image: Image.Image


def fill_prompt(template: str, identifier: str | None, class_word: str | None) -> str:
    """`a {identifier} {class} on the beach` → `a sks dog on the beach` (missing words drop out)."""
    text = template.format(identifier=identifier or "", **{"class": class_word or ""})
    return " ".join(text.split())


def set_scheduler(pipe, name: str | None) -> None:
    """Swap in a diffusers scheduler by class name, keeping the model's noise schedule."""
    if not name:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config") or not name.endswith("Scheduler"):
        raise ConfigError(f"scheduler: {name!r} is not a diffusers scheduler class (e.g. DPMSolverMultistepScheduler)")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def generate(pipe, model: str, templates: list[str], preset: EvalPreset, identifier: str | None,
             class_word: str | None, device: str = "cpu", on_image: Callable[[], None] | None = None) -> list[GeneratedSample]:
    """Every template × seed through `pipe`, batched per prompt; returns samples in (prompt, seed) order."""
    import torch

    from training.aesthetic_gradients import load_aesthetic

    aesthetic = load_aesthetic(preset)
    out: list[GeneratedSample] = []
    for template in templates:
        prompt = fill_prompt(template, identifier, class_word)
        embeds = aesthetic.prompt_embeds(pipe, prompt) if aesthetic else None  # once per prompt, outside inference_mode
        for start in range(0, len(preset.seeds), preset.batch_size):
            seeds = preset.seeds[start:start + preset.batch_size]
            generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
            text = {"prompt_embeds": embeds.repeat(len(seeds), 1, 1)} if embeds is not None else {"prompt": [prompt] * len(seeds)}
            kwargs: dict[str, Any] = dict(**text, generator=generators,
                                          num_inference_steps=preset.num_inference_steps,
                                          guidance_scale=preset.guidance_scale, height=preset.height, width=preset.width)
            if preset.negative_prompt:
                kwargs["negative_prompt"] = [preset.negative_prompt] * len(seeds)
            with torch.inference_mode():
                images = pipe(**kwargs).images
            for seed, image in zip(seeds, images):
                out.append(GeneratedSample(model, template, prompt, seed, image))
                if on_image:
                    on_image()
    return out


def run_kind(method: str, outputs: dict[str, Any]) -> str:
    """`lora` when the run has a LoRA file to apply on the base, `pipeline` for DreamBooth weights,
    `embedding` (textual inversion) and `hypernetwork` for those methods' files."""
    for kind, key in (("textual_inversion", "embedding"), ("hypernetwork", "hypernetwork")):
        if method == kind:
            if key not in outputs:
                raise ValueError(f"the {method} run has no {key!r} output to sample (outputs: {', '.join(outputs) or 'none'})")
            return key
    if method in ("lora", "dreambooth-lora") or ("lora" in outputs and "pipeline" not in outputs):
        if "lora" not in outputs:
            raise ValueError(f"the {method} run has no 'lora' output to sample (outputs: {', '.join(outputs) or 'none'})")
        return "lora"
    if "pipeline" not in outputs:
        raise ValueError(f"the {method} run has no 'pipeline' output to sample (outputs: {', '.join(outputs) or 'none'})")
    return "pipeline"


def sample_run(method: str, outputs: dict[str, Any], base_model: str, base_model_config: str | None,
               templates: list[str], preset: EvalPreset, identifier: str | None, class_word: str | None,
               on_image: Callable[[], None] | None = None) -> list[GeneratedSample]:
    """Samples of the trained model and of its base, same prompts, seeds, sampler settings and VAE."""
    from training.adapters import load_adapter
    from training.models import load_base_model
    from training.vae import swap_vae

    device = pick_device(preset.device)
    kind = run_kind(method, outputs)
    vae = preset.vae or (outputs.get("vae") or {}).get("path")
    if kind == "embedding":  # the placeholder token is the subject's word, for the base model too
        identifier = outputs["embedding"]["token"]
    base = load_base_model(base_model, base_model_config).pipeline
    swap_vae(base, vae)
    base.to(device)
    set_scheduler(base, preset.scheduler)
    samples = generate(base, "base", templates, preset, identifier, class_word, device, on_image)
    trained = base
    if kind == "lora":  # LoRA as a diffusers adapter; LoCon/LoHa/LoKr/DoRA merged in (training/adapters.py)
        load_adapter(base, outputs["lora"]["path"], preset.lora_scale)
    elif kind == "embedding":
        from training.textual_inversion import load_into_pipeline

        load_into_pipeline(base, outputs["embedding"]["path"], identifier)
        if "lora" in outputs:  # pivotal tuning: the LoRA trained with the embedding
            load_adapter(base, outputs["lora"]["path"], preset.lora_scale)
    elif kind == "hypernetwork":
        from training.hypernetwork import Hypernetwork, apply_hypernetwork

        apply_hypernetwork(base.unet, Hypernetwork.load(outputs["hypernetwork"]["path"]), preset.hypernetwork_strength)
    else:
        del base
        trained = load_base_model(outputs["pipeline"]["path"]).pipeline
        swap_vae(trained, vae)
        trained.to(device)
        set_scheduler(trained, preset.scheduler)
    samples += generate(trained, "trained", templates, preset, identifier, class_word, device, on_image)
    return samples
