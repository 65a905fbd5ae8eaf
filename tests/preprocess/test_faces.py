"""Step "align": the offline detector finds the real face, ignores texture, and crops around it."""

from __future__ import annotations

import pytest

from preprocess.faces import eye_angle
from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import ModelMissing, file_hash, load_registry

# messi5.jpg (548×342): the face, read off the photo, is about x 222–264, y 88–132
TRUE_FACE = [222, 88, 264, 132]


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def run(step, path):
    return step.run([Item(image=load_image_file(path).image, name=path.name)])[0]


@pytest.fixture
def cascade_step(atelier_env):
    return load_step("align", {"mode": "none"}, load_registry())


def test_offline_detector_finds_messis_face_not_his_shirt(cascade_step, photos):
    out = run(cascade_step, photos / "messi5.jpg")
    assert cascade_step.backend == "opencv-cascade"
    assert out.image is None  # mode none: detect only
    faces = out.meta["faces"]
    assert len(faces) == 1, faces  # the cascade's larger box on the shirt is rejected (no eye inside)
    main = out.meta["main_face"]
    assert iou(main["box"], TRUE_FACE) > 0.4, main["box"]
    assert len(main["landmarks"]) == 5
    x0, y0, x1, y1 = main["box"]
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in main["landmarks"])
    assert "facexlib/detection_Resnet50_Final.pth" in out.meta["fallback_reason"]


@pytest.mark.parametrize("name", ["HappyFish.jpg", "leuvenB.jpg", "MilkyWay_1080x1920.png", "ellipses.jpg"])
def test_photos_without_faces_have_no_main_face(cascade_step, photos, name):
    out = run(cascade_step, photos / name)
    assert out.meta["faces"] == [] and out.meta["main_face"] is None


def test_face_mode_crops_square_around_the_face_with_eyes_level(atelier_env, photos):
    step = load_step("align", {"mode": "face", "margin": 1.0}, load_registry())
    out = run(step, photos / "messi5.jpg")
    assert out.image is not None and out.image.width == out.image.height
    main = out.meta["main_face"]
    x0, y0, x1, y1 = main["box"]
    assert abs((x0 + x1) / 2 - out.image.width / 2) < 6 and abs((y0 + y1) / 2 - out.image.height / 2) < 6
    assert out.image.width == pytest.approx(3 * (TRUE_FACE[2] - TRUE_FACE[0]), rel=0.25)
    assert abs(eye_angle(main)) < 1.0  # the tilted head is levelled
    assert out.meta["crop"]["by"] == "face" and abs(out.meta["crop"]["angle"]) > 5


def test_focal_mode_without_faces_crops_to_the_aspect(atelier_env, photos):
    step = load_step("align", {"mode": "face", "aspect": 1.0}, load_registry())
    out = run(step, photos / "leuvenB.jpg")
    assert out.meta["crop"]["by"] == "focal"
    assert out.image.size == (563, 563)


def test_missing_detector_without_fallback_names_the_path(atelier_env):
    with pytest.raises(ModelMissing, match="facexlib/detection_Resnet50_Final.pth"):
        load_step("align", {"fallback": "none"}, load_registry())


def test_bad_parameter_names_step_and_field(atelier_env):
    with pytest.raises(ValueError, match="step 'align': mode"):
        load_step("align", {"mode": "sideways"}, load_registry())


@pytest.fixture(scope="session")
def retinaface_file(tmp_path_factory):
    from tests.tiny_models.retinaface import build_retinaface

    return build_retinaface(tmp_path_factory.mktemp("retinaface"))


def test_retinaface_weights_in_the_users_layout_load_and_detect(atelier_env, photos, retinaface_file):
    step = load_step("align", {"model": str(retinaface_file), "mode": "none", "max_faces": 5, "conf_threshold": 0.5},
                     load_registry())
    assert step.backend == "retinaface" and step.model_hash == file_hash(retinaface_file)
    out = run(step, photos / "messi5.jpg")
    faces = out.meta["faces"]  # random weights: arbitrary boxes, but real inference and real decoding
    assert 1 <= len(faces) <= 5
    for face in faces:
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= 548 and 0 <= y0 < y1 <= 342
        assert len(face["landmarks"]) == 5 and face["score"] >= 0.5 and face["estimated_landmarks"] is False
    assert out.meta["backend"] == "retinaface" and "fallback_reason" not in out.meta
