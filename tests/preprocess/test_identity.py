"""Step "identity" on real photos: the same person scores high, other people low; references or the medoid."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.identity import SAME_PERSON, medoid_scores
from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from store.registry import load_registry

PEOPLE = ["obama.jpg", "obama2.jpg", "obama_partial_face.jpg", "biden.jpg", "astronaut.png"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATELIER_HOME", str(tmp_path_factory.mktemp("home")))
        patch.delenv("ATELIER_MODELS", raising=False)
        yield


@pytest.fixture(scope="module")
def faces_dir(photos):
    return photos.parent / "faces"


@pytest.fixture(scope="module")
def images(photos, faces_dir):
    return {name: load_image_file((faces_dir if (faces_dir / name).exists() else photos) / name).image
            for name in PEOPLE}


@pytest.fixture(scope="module")
def against_obama(env, photos, images):
    step = load_step("identity", {"reference": str(photos / "obama.jpg")}, load_registry())
    return step, {name: out for name, out in zip(PEOPLE, step.run([Item(image=images[n]) for n in PEOPLE]))}


def test_obama_vs_biden_and_astronaut_are_different_people(against_obama):
    step, outs = against_obama
    assert step.backend == "dlib-resnet"  # arcface-r50 is not installed: dlib's ResNet from its wheel
    scores = {name: out.scores["identity"] for name, out in outs.items()}
    assert scores["obama2.jpg"] >= SAME_PERSON  # another photo of him
    assert scores["obama_partial_face.jpg"] >= SAME_PERSON  # his face cut by the border
    assert scores["biden.jpg"] < SAME_PERSON - 0.03 and scores["astronaut.png"] < SAME_PERSON - 0.03
    assert "arcface-r50" in outs["obama.jpg"].meta["fallback_reason"]
    assert len(outs["biden.jpg"].meta["identity"]["embedding"]) == 128


def test_without_references_the_dataset_medoid_is_the_subject(against_obama):
    _, outs = against_obama
    step_params = {}
    scores = medoid_scores(step_params, [out.meta for out in outs.values()] + [{"identity": {"embedding": None}}])
    by_name = dict(zip(list(PEOPLE) + ["no face"], scores))
    assert all(by_name[n]["identity"] >= SAME_PERSON for n in ("obama.jpg", "obama2.jpg", "obama_partial_face.jpg"))
    assert by_name["biden.jpg"]["identity"] < SAME_PERSON and by_name["astronaut.png"]["identity"] < SAME_PERSON
    assert by_name["no face"] == {}


def test_an_image_without_a_face_gets_no_score(env, photos):
    step = load_step("identity", {"reference": [str(photos / "obama.jpg")]}, load_registry())
    out = step.run([Item(image=load_image_file(photos / "HappyFish.jpg").image)])[0]
    assert out.scores == {} and out.meta["identity"] == {"face": None, "embedding": None}


def test_faces_from_align_are_used_on_the_aligned_crop(env, photos, images):
    registry = load_registry()
    aligned = load_step("align", {"mode": "face"}, registry).run([Item(image=images["obama2.jpg"])])[0]
    step = load_step("identity", {"reference": str(photos / "obama.jpg")}, registry)
    out = step.run([Item(image=aligned.image, meta=aligned.meta)])[0]
    assert out.meta["identity"]["face"] == aligned.meta["main_face"]["box"]
    assert out.scores["identity"] >= SAME_PERSON


def test_arcface_onnx_is_used_when_present(env, photos, images, tmp_path):
    from tests.tiny_models.face_embedder import WIDTH, build_tiny_face_embedder

    model = build_tiny_face_embedder(tmp_path / "w600k_r50.onnx")
    step = load_step("identity", {"model": str(model), "reference": str(photos / "obama.jpg")}, load_registry())
    assert step.backend == "arcface-onnx" and step.model_id == str(model)
    out = step.run([Item(image=images["biden.jpg"])])[0]
    vector = np.array(out.meta["identity"]["embedding"])
    assert vector.shape == (WIDTH,) and abs(np.linalg.norm(vector) - 1) < 1e-3 and -1 <= out.scores["identity"] <= 1


def test_a_reference_without_a_face_fails_naming_it(env, photos):
    with pytest.raises(ValueError, match="HappyFish.jpg: no face found"):
        load_step("identity", {"reference": str(photos / "HappyFish.jpg")}, load_registry())


def test_a_missing_reference_names_the_field(env, tmp_path):
    with pytest.raises(ValueError, match="step 'identity': reference"):
        load_step("identity", {"reference": str(tmp_path / "nobody.jpg")}, load_registry())


@pytest.mark.parametrize("damage", ["truncated", "wrong kind"])
def test_a_bad_embedder_file_fails_naming_the_file(env, tmp_path, damage):
    from preprocess.face_landmarks import bundled

    if damage == "truncated":
        bad = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
        bad.write_bytes(bundled("resnet").read_bytes()[:200_000])
        with pytest.raises(ValueError, match=f"{bad}: not a dlib face recognition file"):
            load_step("identity", {"model": "dlib", "dlib_model": str(bad)}, load_registry())
    else:
        bad = tmp_path / "w600k_r50.onnx"
        bad.write_bytes(b"this is not an onnx model")
        with pytest.raises(ValueError, match=f"{bad}: not a readable ONNX face embedder"):
            load_step("identity", {"model": str(bad)}, load_registry())
