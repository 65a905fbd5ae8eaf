"""Step "upscale": a Real-ESRGAN file in the users' layout, tiled; Lanczos without one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess.image_models import load_image_model
from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from preprocess.upscale import upscale_tiled
from store.registry import ModelMissing, load_registry


@pytest.fixture(scope="session")
def esrgan_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("esrgan")


@pytest.fixture(scope="session")
def x4_file(esrgan_dir):
    from tests.tiny_models.esrgan import build_esrgan

    return build_esrgan(esrgan_dir, scale=4)


@pytest.fixture(scope="session")
def x2_file(esrgan_dir):
    from tests.tiny_models.esrgan import build_esrgan

    return build_esrgan(esrgan_dir, scale=2)


def test_realesrgan_brings_short_side_to_target(atelier_env, photos, x4_file):
    fish = load_image_file(photos / "HappyFish.jpg").image  # 259×194
    step = load_step("upscale", {"model": str(x4_file), "target": 512, "tile": 64}, load_registry())
    assert step.backend == "realesrgan"
    out = step.run([Item(image=fish)])[0]
    assert out.image.size == (684, 512)
    assert out.meta["scale"] == 4 and out.meta["passes"] == 1 and out.meta["weights"] == step.model_hash[:12]


def test_tiles_join_without_seams(photos, x4_file):
    rgb = np.asarray(load_image_file(photos / "HappyFish.jpg").image)
    network = load_image_model(x4_file).model
    tiled = upscale_tiled(rgb, network, 4, tile=64, pad=16)
    whole = upscale_tiled(rgb, network, 4, tile=4096, pad=0)
    assert tiled.shape == (194 * 4, 259 * 4, 3)
    assert np.array_equal(tiled, whole)


def test_x2_model_runs_twice_for_a_x4_need(atelier_env, photos, x2_file):
    small = load_image_file(photos / "HappyFish.jpg").image.resize((128, 96))
    out = load_step("upscale", {"model": str(x2_file), "target": 384}, load_registry()).run([Item(image=small)])[0]
    assert out.meta["scale"] == 2 and out.meta["passes"] == 2 and out.image.size == (512, 384)


def test_large_images_pass_through(atelier_env, photos):
    out = load_step("upscale", {"target": 512}, load_registry()).run([Item(image=load_image_file(photos / "leuvenB.jpg").image)])[0]
    assert out.image is None and "skipped" in out.meta


def test_lanczos_fallback_is_recorded_and_keeps_alpha(atelier_env, photos):
    art = load_image_file(photos / "FlyingKonqui_2560x1600.png").image.resize((320, 200))
    step = load_step("upscale", {"target": 400, "fallback": "lanczos"}, load_registry())
    assert step.backend == "lanczos" and step.model_id is None
    out = step.run([Item(image=art)])[0]
    assert out.image.size == (640, 400) and out.image.mode == "RGBA"
    assert "realesrgan/RealESRGAN_x4plus.pth" in out.meta["fallback_reason"]
    expected = np.asarray(art.getchannel("A").resize((640, 400), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(out.image.getchannel("A")), expected)


def test_no_fallback_names_the_missing_file(atelier_env):
    with pytest.raises(ModelMissing, match="RealESRGAN_x4plus.pth"):
        load_step("upscale", {"fallback": "none"}, load_registry())


def test_a_path_that_does_not_exist_is_an_error_not_a_fallback(atelier_env, tmp_path):
    with pytest.raises(ModelMissing, match="nor an existing file"):
        load_step("upscale", {"model": str(tmp_path / "nope.pth")}, load_registry())


def test_weights_of_the_wrong_shape_name_the_file(atelier_env, tmp_path):
    from tests.tiny_models.esrgan import build_esrgan

    odd = build_esrgan(tmp_path, num_grow_ch=4)  # an RRDBNet variant spandrel cannot size
    with pytest.raises(ValueError, match=f"{odd}: weights do not fit"):
        load_step("upscale", {"model": str(odd)}, load_registry())


def test_legacy_packages_import_on_current_torchvision():
    """basicsr/realesrgan/gfpgan import `torchvision.transforms.functional_tensor`; the shim provides it."""
    import subprocess
    import sys

    code = ("from preprocess.legacy_basicsr import import_basicsr; import_basicsr(); "
            "from realesrgan import RealESRGANer; from gfpgan import GFPGANer; print('imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "imported", result.stderr[-2000:]
