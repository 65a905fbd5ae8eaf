"""Step "loopback": img2img fed its own output `loops` times (AUTOMATIC1111's loopback script).

Loop i (from 0) runs at strength × strength_change^i (capped at 1) with seed + i, on the previous
loop's output. With `mask` only that region is reworked — "faces" (boxes an earlier step found),
the name of an earlier step's mask, or a PNG of the image's size — and every pixel outside it is
left exactly as it was. Every loop's image is kept (StepOutput.intermediates "loop-1" … and the
result, the last loop); meta["loops"] records each loop's strength and seed.
"""

from __future__ import annotations

from pydantic import Field

from preprocess.diffusion import DiffusionParams
from preprocess.img2img import Reworker, item_prompt
from preprocess.region_masks import feather, generated_mask, item_mask
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class LoopbackParams(DiffusionParams):
    loops: int = Field(4, ge=1, le=64)
    strength: float = Field(0.5, ge=0, le=1)  # denoising strength of the first loop
    strength_change: float = Field(1.0, gt=0, le=2)  # multiplies the strength after each loop
    seed_change: int = 1  # added to the seed after each loop (A1111: +1)
    mask: str | None = None  # "faces", an earlier step's mask name, or a PNG path; None: the whole image
    mask_dilation: int = Field(8, ge=0, le=512)  # px added around "faces" boxes
    mask_feather: float = Field(8.0, ge=0, le=256)  # px of inward blend at the mask's edge


def loop_strengths(p: LoopbackParams) -> list[float]:
    return [round(min(1.0, p.strength * p.strength_change ** i), 6) for i in range(p.loops)]


@register("loopback", params=LoopbackParams)
def load_loopback(params: dict, registry) -> LoadedStep:
    """Load the SD pipeline once; each image then loops through it."""
    p = validate_params(LoopbackParams, params, "loopback")
    rework = Reworker(p, registry, "loopback")
    strengths = loop_strengths(p)

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            prompt = item_prompt(p.prompt, item)
            meta = {**rework.lineage, "backend": f"sd-{rework.kind}", "prompt": prompt, "strength": p.strength,
                    "strength_change": p.strength_change, "mask": p.mask, "source_size": list(item.image.size)}
            weights = None
            if p.mask:
                region = item_mask(p.mask, item.image, item.meta, item.masks, p.mask_dilation,
                                   item.name)
                if region is None or not region.any():
                    outputs.append(StepOutput(image=None, meta={**meta, "skipped": f"nothing to do: mask {p.mask!r} "
                                                                                 f"is empty for this image"}))
                    continue
                weights = feather(region, p.mask_feather)
            if not any(strengths):
                outputs.append(StepOutput(image=None, meta={**meta, "skipped": "nothing to do: strength 0"}))
                continue
            image, loops, intermediates = item.image, [], {}
            for index, strength in enumerate(strengths):
                seed = p.seed + index * p.seed_change
                image = rework(image, prompt, strength, seed, weights)
                loops.append({"loop": index + 1, "strength": strength, "seed": seed})
                if index < len(strengths) - 1:
                    intermediates[f"loop-{index + 1}"] = image
            meta["loops"] = loops
            output = StepOutput(image=image, meta=meta, intermediates=intermediates)
            if weights is not None:
                output.masks = {"generated": generated_mask(weights, item.masks.get("generated"))}
            outputs.append(output)
        return outputs

    return LoadedStep("loopback", f"sd-{rework.kind}", rework.resolved.name, rework.resolved.sha256, run,
                      p.model_dump())
