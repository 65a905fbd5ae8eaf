"""Region masks for the steps that rework part of an image (masked loopback, detailer).

A mask is an "L" image the size of the image: 255 where pixels may change. Feathering ramps the
mask inwards only, so every pixel where the mask is 0 is left exactly as it was by `composite`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image


def box_mask(size: tuple[int, int], boxes: list[list[float]], dilation: int = 0, ellipse: bool = False) -> np.ndarray:
    """uint8 (H, W) mask with each box grown by `dilation` px on every side, as a rectangle or an ellipse."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        x0, y0 = max(0, round(x0 - dilation)), max(0, round(y0 - dilation))
        x1, y1 = min(width, round(x1 + dilation)), min(height, round(y1 + dilation))
        if x1 <= x0 or y1 <= y0:
            continue
        if ellipse:
            cv2.ellipse(mask, ((x0 + x1) / 2, (y0 + y1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2), 0, 0, 360, 255, -1)
        else:
            mask[y0:y1, x0:x1] = 255
    return mask


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """float32 weights in [0, 1]: the mask blurred by `radius` px, but never above the mask (inward ramp only)."""
    weights = mask.astype(np.float32) / 255
    if radius <= 0:
        return weights
    # erode by the radius, blur back out: the ramp rises from 0 at the mask's edge to 1 `radius` px inside
    eroded = cv2.erode(weights, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(radius) + 1,) * 2))
    ramp = cv2.GaussianBlur(eroded, (0, 0), max(radius / 2, 0.5))
    return np.minimum(np.maximum(ramp, eroded), weights)


def composite(original: Image.Image, generated: Image.Image, weights: np.ndarray) -> Image.Image:
    """original where weights are 0, generated where 1, blended between; same size and mode as `original`."""
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB").resize(original.size, Image.Resampling.LANCZOS), dtype=np.float32)
    w = weights[..., None]
    out = np.where(w > 0, base * (1 - w) + new * w + 0.5, base).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(out)
    if original.mode == "RGBA":
        image.putalpha(original.getchannel("A"))
    return image


def mask_image(weights: np.ndarray) -> Image.Image:
    """The weights as an "L" mask (255 = reworked, 0 = untouched)."""
    return Image.fromarray((weights * 255 + 0.5).clip(0, 255).astype(np.uint8), "L")


def load_mask_file(path: str, size: tuple[int, int], name: str = "") -> np.ndarray:
    """A mask PNG (white = rework) for an image of `size`; ValueError naming both sizes when they differ."""
    try:
        with Image.open(Path(path).expanduser()) as opened:
            mask = opened.convert("L")
    except (OSError, ValueError) as error:
        raise ValueError(f"mask: cannot read {path}: {error}") from None
    if mask.size != tuple(size):
        raise ValueError(f"mask: {path} is {mask.size[0]}×{mask.size[1]} but the image{' ' + name if name else ''} "
                         f"is {size[0]}×{size[1]}: a mask must have the image's size")
    return np.where(np.asarray(mask) >= 128, 255, 0).astype(np.uint8)


def item_mask(source: str, image: Image.Image, meta: dict[str, Any], masks: dict[str, Image.Image] | None,
              dilation: int, name: str = "") -> np.ndarray | None:
    """The region a step reworks, from `source`: "faces" (boxes an earlier step found), the name of an
    earlier step's mask, or a PNG path. None when the source names nothing for this image (no face)."""
    if source == "faces":
        boxes = [face["box"] for face in meta.get("faces") or []]
        return box_mask(image.size, boxes, dilation) if boxes else None
    if masks and source in masks:
        mask = masks[source]
        if mask.size != image.size:
            raise ValueError(f"mask {source!r} is {mask.size[0]}×{mask.size[1]} but the image is "
                             f"{image.size[0]}×{image.size[1]}: a mask must have the image's size")
        return np.where(np.asarray(mask.convert("L")) >= 128, 255, 0).astype(np.uint8)
    if "/" in source or source.lower().endswith(".png"):
        return load_mask_file(source, image.size, name)
    raise ValueError(f"mask: {source!r} is neither 'faces', an earlier step's mask ({', '.join(masks or {}) or 'none'}) "
                     f"nor a PNG file")


def generated_mask(weights: np.ndarray, earlier: Image.Image | None) -> Image.Image:
    """The "generated" mask after a rework: every pixel that may have changed, plus what was generated before."""
    mask = np.where(weights * 255 + 0.5 >= 1, 255, 0).astype(np.uint8)  # where mask_image(weights) > 0
    if earlier is not None and earlier.size == (mask.shape[1], mask.shape[0]):
        mask = np.maximum(mask, np.asarray(earlier.convert("L")))
    return Image.fromarray(mask, "L")
