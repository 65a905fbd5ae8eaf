"""Masks travel with the image: a step's own masks win, same-size and rescaled images carry them, others drop them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess.load import load_image_file
from preprocess.masks import carry_masks
from preprocess.steps import Item, load_step
from store.registry import load_registry


def _box_mask(size, box):
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    return Image.fromarray(mask)


def test_masks_carry_resize_or_drop_with_the_image():
    face = _box_mask((40, 20), (10, 5, 20, 15))
    same, dropped = carry_masks({"face": face}, (40, 20), Image.new("RGB", (40, 20)), {}, "restore")
    assert same["face"] is face and dropped == []
    scaled, _ = carry_masks({"face": face}, (40, 20), Image.new("RGB", (80, 40)), {}, "upscale")
    assert scaled["face"].size == (80, 40) and set(np.unique(np.asarray(scaled["face"]))) == {0, 255}
    assert np.asarray(scaled["face"])[10:30, 20:40].all() and not np.asarray(scaled["face"])[:10].any()
    cropped, dropped = carry_masks({"face": face}, (40, 20), Image.new("RGB", (20, 20)), {}, "align")
    assert cropped == {} and dropped == ["face"]
    untouched, _ = carry_masks({"face": face}, (40, 20), None, {"detail": Image.new("L", (40, 20))}, "detailer")
    assert set(untouched) == {"face", "detail"}


def test_a_mask_of_the_wrong_size_or_name_fails_naming_the_step():
    with pytest.raises(ValueError, match="step 'detailer': mask 'detail' is 10x10, the image is 40x20"):
        carry_masks({}, (40, 20), None, {"detail": Image.new("L", (10, 10))}, "detailer")
    with pytest.raises(ValueError, match="mask name 'My Mask'"):
        carry_masks({}, (40, 20), None, {"My Mask": Image.new("L", (40, 20))}, "detailer")


def test_outpaint_marks_its_fill_as_generated_and_pads_earlier_masks(atelier_env, photos):
    portrait = load_image_file(photos / "MilkyWay_1080x1920.png").image.resize((90, 160))
    face = _box_mask((90, 160), (30, 40, 60, 80))
    out = load_step("outpaint", {}, load_registry()).run([Item(image=portrait, masks={"face": face})])[0]
    x0, y0, x1, y1 = out.meta["mask"]["keep_box"]
    generated = np.asarray(out.masks["generated"])
    assert out.masks["generated"].size == out.image.size == (160, 160)
    assert not generated[y0:y1, x0:x1].any() and generated[:, :x0].all() and generated[:, x1:].all()
    moved = np.asarray(out.masks["face"])
    assert moved[40:80, x0 + 30:x0 + 60].all() and moved.sum() == 255 * 30 * 40
