"""Step "restore": GFPGAN / CodeFormer files in the users' layout restore the detected face only."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import ModelMissing, load_registry


@pytest.fixture(scope="session")
def restorer_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("restorers")


@pytest.fixture(scope="session")
def gfpgan_file(restorer_dir):
    from tests.tiny_models.face_restorers import build_gfpgan

    return build_gfpgan(restorer_dir)


@pytest.fixture(scope="session")
def codeformer_file(restorer_dir):
    from tests.tiny_models.face_restorers import build_codeformer

    return build_codeformer(restorer_dir)


@pytest.fixture(scope="module")
def messi(photos):
    """messi5.jpg and its faces from the align step (cascade fallback)."""
    image = load_image_file(photos / "messi5.jpg").image
    return image, load_step("align", {"mode": "none"}, load_registry()).run([Item(image=image)])[0].meta


def assert_only_the_face_changed(before, after, box):
    a, b = np.asarray(before, dtype=np.int16), np.asarray(after, dtype=np.int16)
    changed = np.abs(a - b).max(axis=2) > 2
    x0, y0, x1, y1 = (round(v) for v in box)
    assert changed[y0:y1, x0:x1].mean() > 0.5  # the face itself is replaced
    w = x1 - x0
    outside = changed.copy()
    outside[max(0, y0 - w):y1 + w, max(0, x0 - w):x1 + w] = False  # paste-back region: face plus feathered margin
    assert not outside.any()  # the rest of the photo is untouched


@pytest.mark.slow
def test_gfpgan_restores_the_face_and_leaves_the_rest(atelier_env, messi, gfpgan_file, photos):
    image, align_meta = messi
    step = load_step("restore", {"model": str(gfpgan_file)}, load_registry())
    assert step.backend == "gfpgan"
    out = step.run([Item(image=image, meta=align_meta)])[0]
    assert out.meta["faces_restored"] == 1 and out.meta["faces_from"] == "align"
    assert out.image.size == image.size
    assert_only_the_face_changed(image, out.image, align_meta["main_face"]["box"])
    # an image without faces passes through untouched (its own detection finds none)
    fish = step.run([Item(image=load_image_file(photos / "HappyFish.jpg").image)])[0]
    assert fish.image is None and fish.meta["faces_restored"] == 0 and fish.meta["faces_from"] == "yuface"


def test_without_align_it_detects_with_the_align_chain(atelier_env, gfpgan_file, photos):
    """No RetinaFace weights: yuface (then dlib HOG, then the cascade) finds the face, as in align."""
    step = load_step("restore", {"model": str(gfpgan_file)}, load_registry())
    out = step.run([Item(image=load_image_file(photos / "messi5.jpg").image)])[0]
    assert out.meta["faces_from"] == "yuface" and out.meta["faces_restored"] >= 1
    cascade = load_step("restore", {"model": str(gfpgan_file), "detector_fallback": "opencv-cascade"}, load_registry())
    assert cascade.run([Item(image=load_image_file(photos / "HappyFish.jpg").image)])[0].meta["faces_from"] == "opencv-cascade"


@pytest.mark.slow
def test_codeformer_restores_with_fidelity(atelier_env, messi, codeformer_file):
    image, align_meta = messi
    step = load_step("restore", {"model": str(codeformer_file), "fidelity": 0.5}, load_registry())
    assert step.backend == "codeformer" and step.params["fidelity"] == 0.5
    out = step.run([Item(image=image, meta=align_meta)])[0]
    assert out.meta["faces_restored"] == 1
    assert_only_the_face_changed(image, out.image, align_meta["main_face"]["box"])


def test_no_faces_from_align_means_no_change(atelier_env, gfpgan_file, photos):
    step = load_step("restore", {"model": str(gfpgan_file)}, load_registry())
    out = step.run([Item(image=load_image_file(photos / "leuvenB.jpg").image, meta={"faces": [], "main_face": None})])[0]
    assert out.image is None and out.meta["faces_restored"] == 0


def test_missing_restorer_names_the_path(atelier_env):
    with pytest.raises(ModelMissing, match=r"gfpgan/GFPGANv1.4.pth"):
        load_step("restore", {}, load_registry())


def test_blend_out_of_range_is_refused(atelier_env):
    with pytest.raises(ValueError, match="step 'restore': blend"):
        load_step("restore", {"blend": 1.5}, load_registry())


def test_an_upscaler_file_is_not_taken_for_a_face_restorer(atelier_env, tmp_path):
    from tests.tiny_models.esrgan import build_esrgan

    with pytest.raises(ValueError, match="is a ESRGAN model, expected CodeFormer or GFPGAN"):
        load_step("restore", {"model": str(build_esrgan(tmp_path))}, load_registry())
