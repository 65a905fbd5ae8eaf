"""Step "outpaint": pad a non-square image to 1:1 and fill the new border.

With a Stable Diffusion inpainting model (a diffusers folder: the registry's "sd-inpainting", or
any local folder) the border is generated at `resolution` px, prompted by the image's caption when
there is one, and scaled to the canvas. Without one, the documented fallback is an edge-aware
fill: OpenCV inpainting (Telea) at low resolution plus a blur that grows away from the edge.
Either way the original pixels are copied back unchanged; meta["mask"] says which box is original
and the "generated" mask (255 on the filled border) makes training give the filled area zero loss
weight. Earlier masks are padded onto the square ("generated" with 255, others with 0).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from preprocess.face_detect import faces_moved
from preprocess.masks import GENERATED, pad_mask
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class OutpaintParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "sd-inpainting"  # registry name or a local diffusers inpainting folder
    fallback: Literal["opencv", "none"] = "opencv"  # when the registry model is missing
    resolution: int = Field(512, ge=64, le=2048)  # side at which the inpainting model runs
    steps: int = Field(25, ge=1, le=200)
    guidance: float = Field(7.5, ge=0, le=30)
    prompt: str | None = None  # used when the image has no caption
    negative_prompt: str = "border, frame, text, watermark"
    seed: int = 0
    feather: float = Field(0.03, ge=0, le=0.5)  # width of the blend into the new border, as a share of the side

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


def square_canvas(rgb: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The image centred on a square canvas (zeros around it) and its box [x0, y0, x1, y1]."""
    height, width = rgb.shape[:2]
    side = max(width, height)
    x0, y0 = (side - width) // 2, (side - height) // 2
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[y0:y0 + height, x0:x0 + width] = rgb
    return canvas, [x0, y0, x0 + width, y0 + height]


def distance_outside(side: int, box: list[int]) -> np.ndarray:
    """Pixels' distance (px) from the kept box; 0 inside it."""
    ys, xs = np.ogrid[:side, :side]
    dx = np.maximum(np.maximum(box[0] - xs, xs - (box[2] - 1)), 0)
    dy = np.maximum(np.maximum(box[1] - ys, ys - (box[3] - 1)), 0)
    return np.hypot(dx, dy).astype(np.float32)


def edge_fill(canvas: np.ndarray, box: list[int], work: int = 384) -> np.ndarray:
    """Fallback fill of everything outside `box`: Telea inpainting at `work` px, blurred with distance."""
    side = canvas.shape[0]
    scale = min(1.0, work / side)
    small = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else canvas.copy()
    mask = np.full(small.shape[:2], 255, np.uint8)
    sb = [int(np.ceil(box[0] * scale)), int(np.ceil(box[1] * scale)), int(box[2] * scale), int(box[3] * scale)]
    mask[sb[1]:sb[3], sb[0]:sb[2]] = 0
    filled = cv2.inpaint(small, mask, 3, cv2.INPAINT_TELEA)
    filled = cv2.resize(filled, (side, side), interpolation=cv2.INTER_CUBIC) if scale < 1 else filled
    blurred = cv2.GaussianBlur(filled, (0, 0), max(1.0, side / 48))
    ramp = np.clip(distance_outside(side, box) / max(1.0, side / 12), 0, 1)[..., None]
    return (filled * (1 - ramp) + blurred * ramp + 0.5).astype(np.uint8)


def compose(canvas: np.ndarray, fill: np.ndarray, base: np.ndarray, box: list[int], feather_px: float) -> np.ndarray:
    """`fill` outside the box, blended from `base` over `feather_px` next to it; the box keeps `canvas`."""
    side = canvas.shape[0]
    alpha = np.clip(distance_outside(side, box) / max(feather_px, 1e-6), 0, 1)[..., None] if feather_px > 0 else 1.0
    out = (base * (1 - alpha) + fill * alpha + 0.5).astype(np.uint8)
    out[box[1]:box[3], box[0]:box[2]] = canvas[box[1]:box[3], box[0]:box[2]]
    return out


def load_inpainting_pipeline(folder):
    """StableDiffusionInpaintPipeline from a local folder (no download, no safety checker), GPU when present."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    cuda = torch.cuda.is_available()
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        dtype=torch.float16 if cuda else torch.float32,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if cuda else "cpu")


@register("outpaint", params=OutpaintParams)
def load_outpaint(params: dict, registry) -> LoadedStep:
    """Load the inpainting pipeline from its local folder, or the OpenCV fallback."""
    import torch

    p = validate_params(OutpaintParams, params, "outpaint")
    resolved, fallback_reason = registry.resolve_or_fallback(p.model, p.fallback != "none")
    if resolved is not None and not (resolved.path / "model_index.json").is_file():
        raise ValueError(f"step 'outpaint': model: {resolved.path} is not a diffusers folder (no model_index.json)")
    pipe = load_inpainting_pipeline(resolved.path) if resolved is not None else None
    backend = "sd-inpaint" if pipe is not None else "opencv-inpaint"

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            width, height = item.image.size
            meta = {"backend": backend}
            if resolved is not None:
                meta["weights"] = resolved.short_hash
            if fallback_reason:
                meta["fallback_reason"] = fallback_reason
            if width == height:
                outputs.append(StepOutput(image=None, meta={**meta, "skipped": "already square"}))
                continue
            canvas, box = square_canvas(np.asarray(item.image.convert("RGB")))
            side = canvas.shape[0]
            base = edge_fill(canvas, box)
            fill = base
            if pipe is not None:
                prompt = item.caption or p.prompt or ""
                mask = np.full((side, side), 255, np.uint8)
                mask[box[1]:box[3], box[0]:box[2]] = 0
                size = (p.resolution, p.resolution)
                generated = pipe(
                    prompt=prompt, negative_prompt=p.negative_prompt or None,
                    image=Image.fromarray(base).resize(size, Image.Resampling.LANCZOS),
                    mask_image=Image.fromarray(mask).resize(size, Image.Resampling.NEAREST),
                    height=p.resolution, width=p.resolution, num_inference_steps=p.steps, guidance_scale=p.guidance,
                    generator=torch.Generator("cpu").manual_seed(p.seed), output_type="pil",
                ).images[0]
                fill = np.asarray(generated.convert("RGB").resize((side, side), Image.Resampling.LANCZOS))
                meta.update(prompt=prompt, seed=p.seed, steps=p.steps, resolution=p.resolution)
            feather_px = round(p.feather * side, 1)
            out = compose(canvas, fill, base, box, feather_px)
            meta["mask"] = {"keep_box": box, "size": [side, side], "feather_px": feather_px,
                            "filled": "everything outside keep_box"}
            meta.update(faces_moved(item.meta, 1.0, box[0], box[1]))  # earlier face boxes, in the square's pixels
            image = Image.fromarray(out)
            if item.image.mode == "RGBA":  # new border is opaque; the original keeps its transparency
                alpha = Image.new("L", (side, side), 255)
                alpha.paste(item.image.getchannel("A"), (box[0], box[1]))
                image.putalpha(alpha)
            generated = np.full((side, side), 255, np.uint8)
            generated[box[1]:box[3], box[0]:box[2]] = 0
            masks = {name: pad_mask(mask, (side, side), (box[0], box[1]), 255 if name == GENERATED else 0)
                     for name, mask in item.masks.items()}
            masks.setdefault(GENERATED, Image.fromarray(generated))  # a padded earlier one already covers the border
            outputs.append(StepOutput(image=image, meta=meta, masks=masks))
        return outputs

    return LoadedStep("outpaint", backend, resolved.name if resolved else None, resolved.sha256 if resolved else "",
                      run, p.model_dump())
