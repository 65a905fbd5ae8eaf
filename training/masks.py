"""Masked loss: a per-image weight map over the latent, multiplied into the diffusion loss.

Where a weight comes from (counted per source in the run's result and the LoRA's metadata):
- "generated": `NAME.mask.png` beside the image in an Atelier export (the folder has `atelier.json`). It is the
  prepare flow's learn mask — 255 where the photo is, 0 where the outpaint/img2img/detailer step painted —
  so generated pixels get weight 0 and the model never learns smeared or invented borders.
- "mask_file": `NAME.mask.png` beside the image in any other kohya folder (yours: white = learn, black = ignore;
  grey in between, the first channel as sd-scripts reads it).
- "alpha": the image's own alpha channel (transparent = ignore). Only with `masked_loss: true`: an alpha
  channel is often incidental, a mask file never is.
- "face": `NAME.face.mask.png` (the align step's face region); with `face_loss_weight` ≠ 1 the region's weight is
  multiplied by it (2.0: faces count twice).

Downsampling to the latent grid (the VAE's 8×8 pixel cells), in the original image's pixels, after the
same cover-resize and centre crop the image gets for its bucket (data.cover_crop):
- the learn weight is MIN-pooled (1 − adaptive max-pool of 1 − w): a latent cell that contains any ignored
  pixel gets weight 0, so no generated pixel leaks into the loss through a boundary cell;
- the face region is AREA-pooled (adaptive average): a cell half covered by the face is up-weighted half way.
weight = learn × (1 + (face_loss_weight − 1) × face_fraction). The loss is (weight × squared error) averaged over
all latent elements, as sd-scripts' apply_masked_loss does (a half-masked image counts half).

The pooled planes are cached on disk beside the latents (latents/masks/), keyed by the sources' content and the
bucket; changing face_loss_weight reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SOURCES = ("generated", "mask_file", "alpha", "face")


class MaskSizeError(ValueError):
    """A mask file whose size is not its image's (after EXIF orientation)."""


@dataclass(frozen=True)
class MaskSources:
    learn_file: Path | None  # NAME.mask.png
    learn_source: str | None  # "generated" | "mask_file"
    alpha: bool  # the image's alpha channel weighs too
    face_file: Path | None  # NAME.face.mask.png (used when face_loss_weight != 1)

    @property
    def names(self) -> list[str]:
        return [s for s, on in ((self.learn_source, self.learn_file is not None), ("alpha", self.alpha),
                                ("face", self.face_file is not None)) if on and s]

    def key(self, image_sha256: str) -> str:
        parts = [image_sha256 if self.alpha else "-"]
        for path in (self.learn_file, self.face_file):
            parts.append(hashlib.sha256(path.read_bytes()).hexdigest() if path else "-")
        return ":".join(parts)


def mask_beside(image: Path, name: str = "") -> Path | None:
    """`NAME.mask.png` (name "") or `NAME.<name>.mask.png` beside the image, when it exists."""
    path = image.with_name(f"{image.stem}{'.' + name if name else ''}.mask.png")
    return path if path.exists() else None


def has_alpha(path: Path) -> bool:
    with Image.open(path) as image:
        return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def find_sources(image: Path, root: Path, use_alpha: bool, use_face: bool) -> MaskSources:
    learn = mask_beside(image)
    source = ("generated" if (Path(root) / "atelier.json").exists() else "mask_file") if learn else None
    return MaskSources(learn, source, use_alpha and has_alpha(image), mask_beside(image, "face") if use_face else None)


def _plane(path: Path, size: tuple[int, int], what: str) -> np.ndarray:
    """A mask file as float32 [0, 1] (first channel), checked against the image's size."""
    with Image.open(path) as mask:
        if mask.size != size:
            raise MaskSizeError(f"{path}: the {what} mask is {mask.size[0]}×{mask.size[1]} but its image is "
                                f"{size[0]}×{size[1]}; a mask must have its image's size (after EXIF rotation)")
        channel = mask.convert("RGB").getchannel(0) if mask.mode not in ("L", "1") else mask.convert("L")
        return np.asarray(channel, dtype=np.float32) / 255.0


def pixel_planes(image: Path, sources: MaskSources) -> tuple[np.ndarray, np.ndarray | None]:
    """(learn weight, face region) at the image's upright size, each float32 [0, 1]."""
    from preprocess.load import load_image_file

    loaded = load_image_file(image).image
    size = loaded.size
    learn = np.ones((size[1], size[0]), dtype=np.float32)
    if sources.learn_file:
        learn *= _plane(sources.learn_file, size, "learn")
    if sources.alpha and loaded.mode == "RGBA":
        learn *= np.asarray(loaded.getchannel("A"), dtype=np.float32) / 255.0
    face = _plane(sources.face_file, size, "face") if sources.face_file else None
    return learn, face


def latent_planes(learn: np.ndarray, face: np.ndarray | None, bucket: tuple[int, int],
                  latent_hw: tuple[int, int]) -> torch.Tensor:
    """(2, h, w) float32: min-pooled learn weight and area-pooled face fraction over the bucket's crop."""
    from training.data import cover_crop

    height, width = learn.shape
    resized, (top, left) = cover_crop((width, height), bucket)
    sx, sy = resized[0] / width, resized[1] / height
    # the bucket's crop in original pixels, widened to whole pixels (conservative for the min-pool)
    x0, y0 = int(np.floor(left / sx)), int(np.floor(top / sy))
    x1 = min(width, int(np.ceil((left + bucket[0]) / sx)))
    y1 = min(height, int(np.ceil((top + bucket[1]) / sy)))
    crop = torch.from_numpy(learn[y0:y1, x0:x1].copy())[None, None]
    learn_latent = 1.0 - F.adaptive_max_pool2d(1.0 - crop, latent_hw)
    if face is None:
        face_latent = torch.zeros_like(learn_latent)
    else:
        face_latent = F.adaptive_avg_pool2d(torch.from_numpy(face[y0:y1, x0:x1].copy())[None, None], latent_hw)
    return torch.cat([learn_latent, face_latent], dim=1)[0].contiguous()


def combine(planes: torch.Tensor, face_loss_weight: float) -> torch.Tensor:
    """(2, h, w) planes → (1, h, w) loss weight."""
    learn, face = planes[0:1], planes[1:2]
    return learn * (1.0 + (face_loss_weight - 1.0) * face)


class LossMasks:
    """The run's masks: which images have which sources, pooled planes cached on disk, batches of weights."""

    def __init__(self, config, examples, root: Path, cache_folder: Path, log=print):
        self.mode = config.masked_loss  # None: auto (on when mask files are present), True, False
        self.face_loss_weight = config.face_loss_weight
        self.folder = Path(cache_folder) / "masks"
        self.memory: dict[str, torch.Tensor] = {}
        use_face = config.face_loss_weight != 1.0
        if self.mode is False:
            self.sources = {}
        else:
            found = {e.path: find_sources(e.path, root, self.mode is True, use_face) for e in examples}
            self.sources = {path: s for path, s in found.items() if s.names}
        self.enabled = bool(self.sources) or self.mode is True
        counts = Counter(name for s in self.sources.values() for name in s.names)
        self.counts = {name: counts.get(name, 0) for name in SOURCES}
        if self.mode is None and self.sources:
            log(f"masked loss: on (mask files beside {len(self.sources)} images: {self._count_text()}; "
                f"masked_loss: false turns it off)")
        elif self.mode is True:
            log(f"masked loss: {len(self.sources)} of {len(examples)} images have masks ({self._count_text()})")

    def _count_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items() if v) or "none"

    def planes(self, example, bucket: tuple[int, int], latent_hw: tuple[int, int]) -> torch.Tensor | None:
        from safetensors.torch import load_file, save_file

        sources = self.sources.get(example.path)
        if sources is None:
            return None
        key = hashlib.sha256(f"{sources.key(example.sha256)}:{bucket}:{latent_hw}".encode()).hexdigest()
        if key in self.memory:
            return self.memory[key]
        path = self.folder / key[:2] / f"{key}.safetensors"
        if path.exists():
            planes = load_file(str(path))["planes"]
        else:
            planes = latent_planes(*pixel_planes(example.path, sources), bucket, latent_hw)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            save_file({"planes": planes}, str(tmp))
            tmp.replace(path)
        self.memory[key] = planes
        return planes

    def weights(self, batch, bucket: tuple[int, int], latent_hw: tuple[int, int]) -> torch.Tensor | None:
        """(B, 1, h, w) loss weights for a batch (ones for images without masks); None when no image has one."""
        planes = [self.planes(e, bucket, latent_hw) for e in batch]
        if all(p is None for p in planes):
            return None
        ones = torch.ones((1, *latent_hw))
        return torch.stack([combine(p, self.face_loss_weight) if p is not None else ones for p in planes])

    def summary(self) -> dict:
        return {"enabled": self.enabled, "mode": {None: "auto", True: "on", False: "off"}[self.mode],
                "images_with_masks": len(self.sources), "sources": self.counts,
                "face_loss_weight": self.face_loss_weight}

    def metadata(self) -> dict[str, str]:
        """sd-scripts' ss_masked_loss, and which masks (Atelier's own key)."""
        return {"ss_masked_loss": str(self.enabled),
                "atelier_masked_loss": json.dumps({k: v for k, v in self.summary().items() if k != "enabled"})}


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample MSE (B,), each element's squared error times its weight (broadcast over channels)."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weights is not None:
        if weights.shape[-2:] != loss.shape[-2:] or weights.shape[0] != loss.shape[0]:
            raise MaskSizeError(f"loss weights of shape {tuple(weights.shape)} do not match the latents "
                                f"{tuple(loss.shape)}: a mask must be (batch, 1, latent height, latent width)")
        loss = loss * weights.to(loss.device, loss.dtype)
    return loss.mean(dim=[1, 2, 3])
