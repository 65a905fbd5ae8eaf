"""Step "img2img": rework an image with Stable Diffusion (AUTOMATIC1111's img2img as an "adapter").

The image goes through another model (or the same one with LoRAs / another VAE) at `strength`
(0: unchanged, 1: only the composition survives), prompted from a template over its caption and
tags. The model runs at `resolution` px on the short side; the result is scaled back to the input
size, so face boxes and masks of earlier steps stay valid. `Reworker` is shared with loopback and
the detailer: img2img on a text-to-image model, or inpainting on an inpainting model (9-channel UNet).
No fallback: a missing model fails naming the file to put where.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from pydantic import Field

from preprocess.diffusion import (
    DiffusionParams,
    fill_prompt,
    generator,
    lineage,
    load_diffusion_pipeline,
    unet_in_channels,
    work_size,
)
from preprocess.region_masks import composite, mask_image
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class Img2ImgParams(DiffusionParams):
    strength: float = Field(0.5, ge=0, le=1)  # denoising strength


class Reworker:
    """A loaded SD pipeline that reworks an image at a strength, whole or inside a mask."""

    def __init__(self, p: DiffusionParams, registry, step: str, want: str = "any"):
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

        self.p = p
        self.resolved = registry.resolve(p.model)  # ModelMissing says which folder to put where
        channels = unet_in_channels(self.resolved.path)
        if channels == 8:
            raise ValueError(f"step {step!r}: model: {self.resolved.path} is an instruct-pix2pix model "
                             f"(8-channel UNet): use the 'edit' step for it")
        if channels not in (4, 9):
            raise ValueError(f"step {step!r}: model: {self.resolved.path} has a {channels}-channel UNet; "
                             f"expected 4 (text-to-image) or 9 (inpainting)")
        if want == "inpaint" and channels != 9:
            raise ValueError(f"step {step!r}: model: {self.resolved.path} is not an inpainting model "
                             f"(UNet in_channels {channels}, inpainting has 9)")
        self.kind = "inpaint" if channels == 9 else "img2img"
        cls = StableDiffusionInpaintPipeline if self.kind == "inpaint" else StableDiffusionImg2ImgPipeline
        self.pipe = load_diffusion_pipeline(cls, self.resolved, p, registry, step)
        self.lineage = lineage(p, self.resolved, registry, pipeline=self.kind)

    def steps_for(self, strength: float) -> int:
        """Sampler steps to ask for so that at least one runs at this strength (diffusers runs steps × strength)."""
        return max(self.p.steps, math.ceil(1 / strength)) if strength > 0 else self.p.steps

    def __call__(self, image: Image.Image, prompt: str, strength: float, seed: int,
                 weights: np.ndarray | None = None, resolution: int | None = None) -> Image.Image:
        """The image reworked at `strength` (0 → unchanged), pasted back through `weights` when given."""
        import torch

        if strength <= 0:
            return image.copy()
        size = work_size(*image.size, resolution or self.p.resolution)
        kwargs = dict(prompt=prompt, negative_prompt=self.p.negative_prompt or None,
                      image=image.convert("RGB").resize(size, Image.Resampling.LANCZOS), strength=strength,
                      num_inference_steps=self.steps_for(strength), guidance_scale=self.p.guidance,
                      generator=generator(seed), output_type="pil")
        if self.kind == "inpaint":
            region = mask_image(weights) if weights is not None else Image.new("L", image.size, 255)
            kwargs.update(mask_image=region.resize(size, Image.Resampling.BILINEAR), width=size[0], height=size[1])
        with torch.inference_mode():
            out = self.pipe(**kwargs).images[0].resize(image.size, Image.Resampling.LANCZOS)
        if weights is not None:
            return composite(image, out, weights)
        if image.mode == "RGBA":
            out.putalpha(image.getchannel("A"))
        return out


def item_prompt(template: str, item: Item) -> str:
    return fill_prompt(template, item.caption, item.tags, item.name)


@register("img2img", params=Img2ImgParams)
def load_img2img(params: dict, registry) -> LoadedStep:
    """Load the SD pipeline (img2img, or inpainting on a 9-channel model) with its LoRAs, VAE and sampler."""
    p = validate_params(Img2ImgParams, params, "img2img")
    rework = Reworker(p, registry, "img2img")

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            prompt = item_prompt(p.prompt, item)
            meta = {**rework.lineage, "backend": f"sd-{rework.kind}", "prompt": prompt, "strength": p.strength,
                    "source_size": list(item.image.size)}
            if p.strength == 0:
                outputs.append(StepOutput(image=None, meta={**meta, "skipped": "nothing to do: strength 0"}))
                continue
            image = rework(item.image, prompt, p.strength, p.seed)
            meta["steps_run"] = int(rework.steps_for(p.strength) * p.strength)
            outputs.append(StepOutput(image=image, meta=meta))
        return outputs

    return LoadedStep("img2img", f"sd-{rework.kind}", rework.resolved.name, rework.resolved.sha256, run, p.model_dump())
