"""Step "outpaint": a 9:16 photo becomes square; the original pixels stay exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import load_registry


@pytest.fixture(scope="session")
def inpaint_folder(tmp_path_factory):
    from tests.tiny_models.sd_inpaint import build_tiny_sd_inpaint

    return build_tiny_sd_inpaint(tmp_path_factory.mktemp("inpaint"))


@pytest.fixture(scope="module")
def portrait(photos):
    return load_image_file(photos / "MilkyWay_1080x1920.png").image.resize((270, 480))


def assert_centre_unchanged(original, out):
    x0, y0, x1, y1 = out.meta["mask"]["keep_box"]
    assert (x1 - x0, y1 - y0) == original.size
    assert np.array_equal(np.asarray(out.image.convert("RGB"))[y0:y1, x0:x1], np.asarray(original.convert("RGB")))


def test_opencv_fallback_fills_the_border_without_a_seam(atelier_env, portrait):
    step = load_step("outpaint", {}, load_registry())
    assert step.backend == "opencv-inpaint"
    out = step.run([Item(image=portrait)])[0]
    assert out.image.size == (480, 480)
    assert out.meta["mask"] == {"keep_box": [105, 0, 375, 480], "size": [480, 480], "feather_px": 14.4,
                                "filled": "everything outside keep_box"}
    assert "sd-inpainting" in out.meta["fallback_reason"]
    assert_centre_unchanged(portrait, out)
    rgb = np.asarray(out.image, dtype=np.int16)
    # the fill continues the edge colours: columns either side of the seam are close, and not black
    assert np.abs(rgb[:, 104] - rgb[:, 105]).mean() < 12 and np.abs(rgb[:, 375] - rgb[:, 374]).mean() < 12
    assert rgb[:, :100].mean() > 0.5 * rgb[:, 105:375].mean()


def test_transparent_original_keeps_its_alpha(atelier_env, photos):
    art = load_image_file(photos / "FlyingKonqui_2560x1600.png").image.resize((320, 200))
    out = load_step("outpaint", {}, load_registry()).run([Item(image=art)])[0]
    assert out.image.size == (320, 320) and out.image.mode == "RGBA"
    alpha = np.asarray(out.image.getchannel("A"))
    assert np.array_equal(alpha[60:260], np.asarray(art.getchannel("A"))) and (alpha[:60] == 255).all()


def test_square_images_pass_through(atelier_env, portrait):
    out = load_step("outpaint", {}, load_registry()).run([Item(image=portrait.resize((200, 200)))])[0]
    assert out.image is None and out.meta["skipped"] == "already square"


def test_sd_inpainting_folder_fills_from_the_caption(atelier_env, portrait, inpaint_folder):
    step = load_step("outpaint", {"model": str(inpaint_folder), "resolution": 64, "steps": 2}, load_registry())
    assert step.backend == "sd-inpaint"
    first = step.run([Item(image=portrait, caption="a night sky full of stars")])[0]
    assert first.image.size == (480, 480) and first.meta["prompt"] == "a night sky full of stars"
    assert_centre_unchanged(portrait, first)
    fallback = load_step("outpaint", {}, load_registry()).run([Item(image=portrait)])[0]
    assert not np.array_equal(np.asarray(first.image), np.asarray(fallback.image))  # the model made the border
    again = step.run([Item(image=portrait, caption="a night sky full of stars")])[0]
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))  # seeded: same result


def test_a_folder_that_is_not_a_pipeline_is_refused(atelier_env, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers folder"):
        load_step("outpaint", {"model": str(tmp_path / "empty")}, load_registry())


def test_resolution_must_be_a_multiple_of_8(atelier_env):
    with pytest.raises(ValueError, match="step 'outpaint': resolution"):
        load_step("outpaint", {"resolution": 100}, load_registry())


def test_face_boxes_follow_the_image_through_upscale_and_outpaint(atelier_env, photos):
    from preprocess.face_detect import YuFaceDetector

    registry = load_registry()
    item = Item(image=load_image_file(photos / "messi5.jpg").image)  # 548×342
    found_first = None
    for name, params in [("align", {"mode": "none"}), ("upscale", {"target": 684, "fallback": "lanczos"}), ("outpaint", {})]:
        out = load_step(name, params, registry).run([item])[0]
        item.image = out.image or item.image
        item.meta.update(out.meta)
        found_first = found_first or out.meta["main_face"]["box"]
    assert item.image.size == (1096, 1096)
    tracked = item.meta["main_face"]["box"]
    x0, y0, x1, y1 = found_first
    assert tracked == pytest.approx([2 * x0, 2 * y0 + 206, 2 * x1, 2 * y1 + 206], abs=1)  # ×2, then 206 px down
    to_source = np.array(item.meta["transform"]["to_source"])  # and back into the original photo's pixels
    assert np.allclose(np.array([[tracked[0], tracked[1], 1]]) @ to_source.T, [[x0, y0]], atol=0.5)
    found = YuFaceDetector().detect(np.asarray(item.image.convert("RGB")))
    assert any(abs(f["box"][0] - tracked[0]) < 15 and abs(f["box"][1] - tracked[1]) < 15 for f in found)
