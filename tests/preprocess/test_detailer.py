"""Step "detailer": the face in messi5.jpg is found, inpainted at a higher resolution and pasted back."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import load_registry
from tests.tiny_models.fixtures import tiny_sd, tiny_sd_inpaint, tiny_yolo  # noqa: F401

FAST = {"resolution": 64, "steps": 4, "strength": 0.9}


@pytest.fixture(scope="module")
def messi(photos):
    return load_image_file(photos / "messi5.jpg").image  # 548×342, one face


@pytest.fixture(scope="module")
def detailer(tmp_path_factory, tiny_sd_inpaint):
    import os

    os.environ["ATELIER_HOME"] = str(tmp_path_factory.mktemp("detailer-home"))  # no RetinaFace: yuface runs
    return load_step("detailer", {"model": str(tiny_sd_inpaint), "dilation": 6, "feather": 6,
                                  "padding": 24, **FAST}, load_registry())


def test_face_is_reworked_and_nothing_outside_its_mask_changes(detailer, messi):
    out = detailer.run([Item(image=messi, name="messi5.jpg", caption="a football player")])[0]
    assert out.image.size == messi.size and detailer.backend == "sd-inpaint"
    (region,) = out.meta["regions"]
    assert region["label"] == "face" and region["by"] == "yuface"
    x0, y0, x1, y1 = region["box"]
    cx0, cy0, cx1, cy1 = region["crop"]
    assert cx0 <= x0 - 30 and cy0 <= y0 - 30 and cx1 >= x1 + 30 and cy1 >= y1 + 30  # dilation + padding of context
    detail = np.asarray(out.masks["detail"])
    generated = np.asarray(out.masks["generated"])
    assert detail.shape == generated.shape == (342, 548)
    before, after = np.asarray(messi.convert("RGB"), np.int16), np.asarray(out.image.convert("RGB"), np.int16)
    assert np.array_equal(before[detail == 0], after[detail == 0])  # outside the mask: exactly the original
    assert ((detail > 0) == (generated == 255)).all()
    inner = (slice(round(y0) + 6, round(y1) - 6), slice(round(x0) + 6, round(x1) - 6))
    assert (detail[inner] == 255).all() and np.abs(before[inner] - after[inner]).mean() > 5
    # the feather: the mask ramps up inside the dilated box, it never spreads beyond it
    assert detail[round(y0) - 7, round((x0 + x1) / 2)] == 0 and 0 < detail[round(y0) - 4, round((x0 + x1) / 2)] < 255
    assert out.meta["prompt"] == "a football player" and out.meta["strength"] == 0.9 and out.meta["seed"] == 0
    assert region["seed"] == 0


def test_earlier_faces_are_reused_and_an_empty_detection_is_nothing_to_do(detailer, messi, photos):
    box = {"box": [300, 40, 360, 110], "score": 1.0, "landmarks": None}
    out = detailer.run([Item(image=messi, meta={"faces": [box]})])[0]
    assert out.meta["regions"][0]["box"] == [300, 40, 360, 110]  # taken from align, in this image's pixels
    sky = load_image_file(photos / "MilkyWay_1080x1920.png").image.resize((135, 240))
    nothing = detailer.run([Item(image=sky)])[0]
    assert nothing.image is None and nothing.meta["regions"] == []
    assert nothing.meta["skipped"] == "nothing to do: no faces found"


def test_a_yolo_onnx_detector_finds_other_classes(atelier_env, tiny_sd_inpaint, tiny_yolo, messi):
    step = load_step("detailer", {"model": str(tiny_sd_inpaint), "detect": [str(tiny_yolo)], "classes": ["person"],
                                  "max_regions": 2, **FAST}, load_registry())
    out = step.run([Item(image=messi)])[0]
    assert 1 <= len(out.meta["regions"]) <= 2
    assert all(r["label"] == "person" and r["by"] == "yolo-onnx:tiny-yolov8-hand" for r in out.meta["regions"])
    detail = np.asarray(out.masks["detail"])
    assert np.array_equal(np.asarray(messi)[detail == 0], np.asarray(out.image)[detail == 0])


def test_a_text_to_image_model_is_refused(atelier_env, tiny_sd):
    with pytest.raises(ValueError, match="not an inpainting model"):
        load_step("detailer", {"model": str(tiny_sd)}, load_registry())
