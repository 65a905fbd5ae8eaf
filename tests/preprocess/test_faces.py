"""Step "align" on real photos: faces found where there are faces and nowhere else, FFHQ-aligned crops
whose eyes an independent detector finds level and at the template's spacing, and bad input recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from preprocess.face_align import eye_angle, template_eye_share
from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import ModelMissing, file_hash, load_registry

# messi5.jpg (548×342): the face, read off the photo, is about x 222–264, y 88–132
TRUE_FACE = [222, 88, 264, 132]
PORTRAITS = ["photos/obama.jpg", "photos/biden.jpg", "photos/astronaut.png", "photos/messi5.jpg"]
NO_FACE = ["photos/HappyFish.jpg", "photos/leuvenB.jpg", "photos/MilkyWay_1080x1920.png", "photos/ellipses.jpg",
           "photos/FlyingKonqui_2560x1600.png", "photos/Elarun_2560x1600.png"]


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def run(step, image):
    return step.run([Item(image=image)])[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATELIER_HOME", str(tmp_path_factory.mktemp("home")))
        patch.delenv("ATELIER_MODELS", raising=False)
        yield


@pytest.fixture(scope="module")
def fixtures(photos):
    return photos.parent


@pytest.fixture(scope="module")
def detect_step(env):
    return load_step("align", {"mode": "none"}, load_registry())


@pytest.fixture(scope="module")
def align_step(env):
    return load_step("align", {"mode": "face", "size": 512}, load_registry())


@pytest.fixture(scope="module")
def dlib_eyes():
    """An independent eye finder for the crops: dlib's HOG detector + its 68-point predictor (not yuface)."""
    import dlib

    from preprocess.face_landmarks import dlib_models, five_from_68

    hog, models = dlib.get_frontal_face_detector(), dlib_models()

    def eyes(image: Image.Image):
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        rects = hog(rgb, 0)
        assert len(rects) >= 1, "dlib finds no face in the aligned crop"
        r = max(rects, key=lambda r: r.width())
        points = five_from_68(models.shape(rgb, [r.left(), r.top(), r.right(), r.bottom()], 68))
        return points[0], points[1]

    return eyes


@pytest.mark.parametrize("name", PORTRAITS)
def test_one_face_is_found_in_each_portrait_where_dlib_sees_it(detect_step, fixtures, name):
    import dlib

    out = run(detect_step, load_image_file(fixtures / name).image)
    assert detect_step.backend == "yuface" and out.meta["backend"] == "yuface"
    assert len(out.meta["faces"]) == 1, out.meta["faces"]
    main = out.meta["main_face"]
    rgb = np.asarray(load_image_file(fixtures / name).image.convert("RGB"))
    rects, scores, _ = dlib.get_frontal_face_detector().run(rgb, 1, 0.5)  # an independent detector
    (hog,) = rects
    assert iou(main["box"], [hog.left(), hog.top(), hog.right(), hog.bottom()]) > 0.4
    x0, y0, x1, y1 = main["box"]
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in main["landmarks"])
    assert out.scores == {"faces": 1.0}
    if name.endswith("messi5.jpg"):
        assert iou(main["box"], TRUE_FACE) > 0.4
        # a 17×21 px hit in the crowd behind him is recorded, not used
        assert [f["box"] for f in out.meta["small_faces"]] == [[202.0, 8.0, 219.0, 29.0]]


@pytest.mark.parametrize("name", NO_FACE)
def test_photos_without_faces_have_no_face(detect_step, fixtures, name):
    out = run(detect_step, load_image_file(fixtures / name).image)
    assert out.meta["faces"] == [] and out.meta["main_face"] is None and out.scores == {"faces": 0.0}


@pytest.mark.parametrize("name", PORTRAITS)
def test_aligned_crop_has_level_eyes_at_the_ffhq_spacing(align_step, dlib_eyes, fixtures, name):
    out = run(align_step, load_image_file(fixtures / name).image)
    assert out.image.size == (512, 512) and out.meta["crop"]["by"] == "face"
    left, right = dlib_eyes(out.image)  # measured on the output pixels by another detector
    assert abs(eye_angle([left, right])) < 1.0
    share = math.dist(left, right) / 512
    assert share == pytest.approx(template_eye_share(), rel=0.05)
    assert out.masks["face"].size == (512, 512) and np.asarray(out.masks["face"])[256, 256] == 255


def test_the_recorded_transform_maps_faces_both_ways(align_step, fixtures):
    out = run(align_step, load_image_file(fixtures / "photos/obama.jpg").image)
    meta = out.meta
    matrix, inverse = np.array(meta["crop"]["matrix"]), np.array(meta["crop"]["inverse"])
    source = np.array(meta["source_main_face"]["landmarks"])
    crop = np.array(meta["main_face"]["landmarks"])
    assert np.allclose(np.c_[source, np.ones(5)] @ matrix.T, crop, atol=0.2)
    assert np.allclose(np.c_[crop, np.ones(5)] @ inverse.T, source, atol=0.2)
    assert meta["transform"] == {"from_source": meta["crop"]["matrix"], "to_source": meta["crop"]["inverse"]}
    assert meta["source_size"] == [910, 1137] and meta["source_faces"][0] == meta["source_main_face"]


def test_68_point_landmarks_on_a_dlib_box(env, fixtures, dlib_eyes):
    step = load_step("align", {"mode": "face", "landmarks": 68}, load_registry())
    out = run(step, load_image_file(fixtures / "photos/astronaut.png").image)
    main = out.meta["main_face"]
    assert len(main["landmarks68"]) == 68 and main["landmarks_from"] == "dlib-68 (hog box)"
    x0, y0, x1, y1 = main["box"]
    inside = sum(x0 - 10 <= x <= x1 + 10 and y0 - 10 <= y <= y1 + 10 for x, y in main["landmarks68"])
    assert inside >= 64
    left, right = dlib_eyes(out.image)
    assert abs(eye_angle([left, right])) < 1.0


@pytest.mark.parametrize("fallback", ["dlib-hog", "opencv-cascade"])
def test_each_fallback_finds_messis_face(env, fixtures, fallback):
    step = load_step("align", {"mode": "none", "fallback": fallback}, load_registry())
    out = run(step, load_image_file(fixtures / "photos/messi5.jpg").image)
    assert step.backend == fallback and len(out.meta["faces"]) == 1
    assert iou(out.meta["main_face"]["box"], TRUE_FACE) > 0.4


def test_focal_mode_without_faces_crops_to_the_aspect(align_step, fixtures):
    out = run(align_step, load_image_file(fixtures / "photos/leuvenB.jpg").image)
    assert out.meta["crop"]["by"] == "focal" and out.image.size == (563, 563)


# ---- bad input: recorded with what was found, never a crash

def test_a_face_cut_by_the_border_is_aligned_and_the_mirrored_part_masked(align_step, fixtures):
    out = run(align_step, load_image_file(fixtures / "faces/obama_partial_face.jpg").image)
    crop = out.meta["crop"]
    assert crop["cut_by_border"] and crop["outside"] > 0.05
    generated = np.asarray(out.masks["generated"])
    assert generated.shape == (512, 512) and generated[:, :40].mean() > 200 and generated[:, -40:].max() == 0


def test_several_faces_are_all_recorded_and_the_main_one_is_aligned(align_step, fixtures):
    obama = load_image_file(fixtures / "photos/obama.jpg").image
    astronaut = load_image_file(fixtures / "photos/astronaut.png").image
    group = Image.new("RGB", (obama.width + 512, obama.height), "white")
    group.paste(obama, (0, 0))
    group.paste(astronaut, (obama.width, 300))
    out = run(align_step, group)
    assert len(out.meta["source_faces"]) == 2 and out.scores == {"faces": 2.0}
    assert out.meta["source_main_face"]["box"][0] < obama.width  # the larger, more central face
    assert out.image.size == (512, 512)


@pytest.mark.parametrize("mode", ["I;16", "L"])
def test_a_16_bit_or_grayscale_portrait_is_found(align_step, fixtures, tmp_path, mode):
    gray = np.asarray(load_image_file(fixtures / "photos/astronaut.png").image.convert("L"), dtype=np.uint16)
    image = Image.fromarray(gray * 257) if mode == "I;16" else Image.fromarray(gray.astype(np.uint8))
    image.save(tmp_path / "portrait.png")
    loaded = load_image_file(tmp_path / "portrait.png")
    assert loaded.mode == mode
    out = run(align_step, loaded.image)
    assert len(out.meta["faces"]) == 1 and out.image.size == (512, 512)


def test_a_face_below_the_minimum_is_recorded_not_used(align_step, fixtures):
    small = load_image_file(fixtures / "photos/messi5.jpg").image
    small = small.resize((small.width * 2 // 3, small.height * 2 // 3), Image.Resampling.LANCZOS)  # face ≈ 20 px
    out = run(align_step, small)
    assert out.meta["faces"] == [] and out.meta["main_face"] is None and out.scores == {"faces": 0.0}
    assert any(14 <= f["box"][2] - f["box"][0] < 24 for f in out.meta["small_faces"])
    assert out.meta["crop"]["by"] == "focal"


def test_missing_detector_without_fallback_names_the_path(env):
    with pytest.raises(ModelMissing, match="facexlib/detection_Resnet50_Final.pth"):
        load_step("align", {"fallback": "none"}, load_registry())


def test_a_truncated_landmark_model_fails_naming_the_file(env, tmp_path):
    from preprocess.face_landmarks import bundled

    broken = tmp_path / "shape_predictor_68_face_landmarks.dat"
    broken.write_bytes(bundled("shape68").read_bytes()[:100_000])
    with pytest.raises(ValueError, match=f"{broken}: not a dlib shape predictor"):
        load_step("align", {"landmarks": 68, "landmark_model": str(broken)}, load_registry())


@pytest.mark.parametrize("damage", ["truncated", "wrong kind"])
def test_a_bad_retinaface_file_fails_naming_the_file(env, tmp_path, retinaface_file, damage):
    bad = tmp_path / "detection_Resnet50_Final.pth"
    if damage == "truncated":
        bad.write_bytes(retinaface_file.read_bytes()[:50_000])
    else:
        import torch

        torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match=str(bad)):
        load_step("align", {"model": str(bad)}, load_registry())


def test_bad_parameter_names_step_and_field(env):
    with pytest.raises(ValueError, match="step 'align': mode"):
        load_step("align", {"mode": "sideways"}, load_registry())


@pytest.fixture(scope="session")
def retinaface_file(tmp_path_factory):
    from tests.tiny_models.retinaface import build_retinaface

    return build_retinaface(tmp_path_factory.mktemp("retinaface"))


def test_retinaface_weights_in_the_users_layout_load_and_detect(env, fixtures, retinaface_file):
    step = load_step("align", {"model": str(retinaface_file), "mode": "none", "max_faces": 5, "conf_threshold": 0.5,
                                      "min_face": 1},
                     load_registry())
    assert step.backend == "retinaface" and step.model_hash == file_hash(retinaface_file)
    out = run(step, load_image_file(fixtures / "photos/messi5.jpg").image)
    faces = out.meta["faces"]  # random weights: arbitrary boxes, but real inference and real decoding
    assert 1 <= len(faces) <= 5
    for face in faces:
        x0, y0, x1, y1 = face["box"]
        assert 0 <= x0 < x1 <= 548 and 0 <= y0 < y1 <= 342
        assert len(face["landmarks"]) == 5 and face["score"] >= 0.5 and face["estimated_landmarks"] is False
    assert out.meta["backend"] == "retinaface" and "fallback_reason" not in out.meta


def test_copies_of_the_fixtures_are_attributed(fixtures):
    licences = (fixtures / "LICENSES.md").read_text()
    for path in (fixtures / "faces").iterdir():
        assert path.name in licences, path.name
