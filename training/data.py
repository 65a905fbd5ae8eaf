"""Training data: a kohya-layout folder → examples in aspect-ratio buckets, captions, cached latents.

Everything random here takes an explicit generator, so the order of the data and each step's
caption are functions of (seed, epoch, step) — which is what makes resume exact.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class Example:
    path: Path
    sha256: str
    caption: str
    repeats: int
    folder: str  # the kohya subfolder, e.g. "3_sks dog"
    size: tuple[int, int]  # (width, height) of the image as stored


class NoImagesFound(ValueError):
    """The training folder holds no images in `N_name/` subfolders; the message says what was seen."""


def is_mask_file(path: Path) -> bool:
    """`NAME.mask.png` / `NAME.<name>.mask.png` beside an image are its masks, not training images."""
    return path.name.lower().endswith(".mask.png")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scan_kohya_folder(root: Path, repeats: int | None = None) -> list[Example]:
    """Images in `root/N_identifier class/` with `.txt` captions beside them (N = repeats)."""
    from preprocess.load import load_image_file

    root = Path(root)
    examples, seen = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        seen.append(sub.name)
        match = re.fullmatch(r"(\d+)_(.*)", sub.name)
        if not match:
            continue
        for image in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not is_mask_file(p)):
            caption_file = image.with_suffix(".txt")
            caption = caption_file.read_text().strip() if caption_file.exists() else match[2]
            loaded = load_image_file(image)  # a bad file fails here, naming itself
            size = (loaded.width, loaded.height)
            examples.append(Example(image, file_sha256(image), caption, repeats or int(match[1]), sub.name, size))
    if not examples:
        raise NoImagesFound(
            f"{root}: no images found — a kohya training folder holds subfolders named `N_identifier class` "
            f"(N = repeats) with images and .txt captions; subfolders seen: {seen or 'none'}"
        )
    return examples


def make_buckets(resolution: int, step: int, min_side: int, max_side: int) -> list[tuple[int, int]]:
    """(width, height) buckets with area ≤ resolution², sides multiples of `step` (kohya-style)."""
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = min_side
    while width <= max_side:
        height = min(max_side, (area // width) // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log space, ties → larger area)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def cover_crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resize that covers the bucket, and the centre crop's (top, left) — SDXL's crop conditioning."""
    width, height = bucket
    scale = max(width / size[0], height / size[1])
    resized = (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))
    return resized, ((resized[1] - height) // 2, (resized[0] - width) // 2)


def load_for_bucket(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """RGB image resized to cover the bucket and centre-cropped; pixels in [-1, 1], CHW."""
    from preprocess.load import load_image_file

    image = load_image_file(path).image.convert("RGB")  # upright (EXIF), 8-bit
    resized_size, (top, left) = cover_crop(image.size, bucket)
    resized = image.resize(resized_size, Image.Resampling.LANCZOS)
    crop = resized.crop((left, top, left + bucket[0], top + bucket[1]))
    array = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def build_caption(caption: str, config, generator: random.Random) -> str:
    """Caption → prompt: identifier + class word, tag shuffle after keep_tokens, caption dropout."""
    opts = config.caption
    if config.instance_prompt:
        caption = config.instance_prompt
    subject = " ".join(p for p in (config.identifier, config.class_word) if p)
    if subject and subject not in caption:
        caption = f"{subject}{opts.tag_separator}{caption}" if caption else subject
    if opts.shuffle_tags:
        tags = [t.strip() for t in caption.split(opts.tag_separator.strip() or ",") if t.strip()]
        kept, rest = tags[: opts.keep_tokens], tags[opts.keep_tokens:]
        generator.shuffle(rest)
        caption = opts.tag_separator.join(kept + rest)
    if opts.caption_dropout_rate and generator.random() < opts.caption_dropout_rate:
        caption = ""
    return caption


def epoch_batches(examples: list[Example], buckets: dict[int, tuple[int, int]], batch_size: int,
                  seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of example indices: repeats expanded, shuffled within each bucket, batches shuffled.

    A pure function of (examples, seed, epoch): resume recomputes it instead of storing it.
    """
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, example in enumerate(examples):
        by_bucket.setdefault(buckets[index], []).extend([index] * example.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        rng.shuffle(items)
        batches.extend(items[i:i + batch_size] for i in range(0, len(items), batch_size))
    rng.shuffle(batches)
    return batches


class LatentCache:
    """VAE latent distributions on disk, keyed by (VAE hash, image sha256, bucket); an edit or new bucket misses."""

    def __init__(self, folder: Path, vae, vae_hash: str, device: torch.device, dtype: torch.dtype):
        self.folder, self.vae, self.vae_hash = Path(folder), vae, vae_hash
        self.device, self.dtype = device, dtype
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def key(self, example: Example, bucket: tuple[int, int]) -> str:
        return hashlib.sha256(f"{self.vae_hash}:{example.sha256}:{bucket[0]}x{bucket[1]}".encode()).hexdigest()

    def get(self, example: Example, bucket: tuple[int, int]) -> torch.Tensor:
        """Mean and log-variance of the latent distribution, (8, h/f, w/f) float32 on CPU."""
        from safetensors.torch import load_file, save_file

        key = self.key(example, bucket)
        if key in self.memory:
            return self.memory[key]
        path = self.folder / key[:2] / f"{key}.safetensors"
        if path.exists():
            self.hits += 1
            params = load_file(str(path))["latent_dist"]
        else:
            self.misses += 1
            pixels = load_for_bucket(example.path, bucket)
            with torch.no_grad():
                moments = self.vae.encode(pixels[None].to(self.device, self.dtype)).latent_dist.parameters
            params = moments[0].float().cpu().contiguous()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # data-parallel ranks may encode one image at once
            save_file({"latent_dist": params}, str(tmp))
            tmp.replace(path)  # atomic: a killed run never leaves half a file
        self.memory[key] = params
        return params


def sample_latents(params: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw latents from cached (mean, logvar) moments, as DiagonalGaussianDistribution.sample does."""
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean + std * torch.randn(mean.shape, generator=generator)


def tag_frequency(examples: list[Example], separator: str = ",") -> dict[str, dict[str, int]]:
    """{folder: {tag: count}} as kohya's ss_tag_frequency records it."""
    freq: dict[str, dict[str, int]] = {}
    for example in examples:
        counts = freq.setdefault(example.folder, {})
        for tag in (t.strip() for t in example.caption.split(separator)):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return freq
