"""Step "edit": change an image by an instruction with instruct-pix2pix ("make it a watercolour").

The instruction is the step's `instruction` (the same for every image) or, with
`instruction_from: caption`, each image's own caption field (a curator writes "remove the hat"
there); an image without one is recorded as "nothing to do". `image_guidance` says how closely the
result keeps the input, `guidance` how strongly it follows the text. The model must be an
instruct-pix2pix diffusers folder (8-channel UNet); any other is refused when the step loads.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image
from pydantic import Field, ValidationInfo, field_validator

from preprocess.diffusion import DiffusionParams, generator, lineage, load_diffusion_pipeline, unet_in_channels, work_size
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class EditParams(DiffusionParams):
    model: str = "instruct-pix2pix"
    prompt: str = ""  # unused: the instruction is the prompt
    instruction_from: Literal["param", "caption"] = "param"
    instruction: str | None = Field(None, validate_default=True)
    image_guidance: float = Field(1.5, ge=1, le=10)  # ≥ 1; higher keeps closer to the input image
    guidance: float = Field(7.5, ge=1, le=30)

    @field_validator("instruction", mode="after")
    @classmethod
    def _instruction_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("instruction_from", "param") == "param" and not (value or "").strip():
            raise ValueError("give one, or set instruction_from: caption to take each image's caption")
        return value


@register("edit", params=EditParams)
def load_edit(params: dict, registry) -> LoadedStep:
    """Load the instruct-pix2pix pipeline; a model that is not one fails here, naming it."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    p = validate_params(EditParams, params, "edit")
    resolved = registry.resolve(p.model)
    channels = unet_in_channels(resolved.path)
    if channels != 8:
        kind = {4: "a text-to-image model", 9: "an inpainting model"}.get(channels, f"a {channels}-channel UNet")
        raise ValueError(f"step 'edit': model: {resolved.path} is {kind}, not instruct-pix2pix (its UNet takes "
                         f"{channels} input channels; instruct-pix2pix takes 8: latents + image latents)")
    pipe = load_diffusion_pipeline(StableDiffusionInstructPix2PixPipeline, resolved, p, registry, "edit")
    base = lineage(p, resolved, registry, image_guidance=p.image_guidance, instruction_from=p.instruction_from)

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            instruction = (p.instruction if p.instruction_from == "param" else item.caption) or ""
            meta = {**base, "backend": "instruct-pix2pix", "instruction": instruction.strip()}
            if not instruction.strip():
                outputs.append(StepOutput(image=None, meta={**meta, "skipped": "nothing to do: the image has no caption "
                                                                               "to take the instruction from"}))
                continue
            size = work_size(*item.image.size, p.resolution)
            with torch.inference_mode():
                out = pipe(prompt=instruction.strip(), negative_prompt=p.negative_prompt or None,
                           image=item.image.convert("RGB").resize(size, Image.Resampling.LANCZOS),
                           num_inference_steps=p.steps, guidance_scale=p.guidance,
                           image_guidance_scale=p.image_guidance, generator=generator(p.seed)).images[0]
            image = out.resize(item.image.size, Image.Resampling.LANCZOS)
            if item.image.mode == "RGBA":
                image.putalpha(item.image.getchannel("A"))
            outputs.append(StepOutput(image=image, meta=meta))
        return outputs

    return LoadedStep("edit", "instruct-pix2pix", resolved.name, resolved.sha256, run, p.model_dump())
