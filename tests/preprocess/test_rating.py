"""Step "rating": NudeNet's real detector on real photos, rated as the tagger's rating category."""

from __future__ import annotations

import pytest

from preprocess.load import load_image_file
from preprocess.rating import RatingParams, rate
from preprocess.steps import Item, load_step
from store.registry import load_registry


def test_portraits_are_rated_safe_and_nudenet_sees_the_face(atelier_env, photos):
    step = load_step("rating", {}, load_registry())
    outs = step.run([Item(image=load_image_file(photos / n).image) for n in ("obama.jpg", "astronaut.png")]
                    + [Item(image=load_image_file(photos / "HappyFish.jpg").image)])
    assert step.backend == "nudenet" and step.model_id == "nudenet-320n" and len(step.model_hash) == 64
    for out in outs:
        (tag,) = out.tags
        assert (tag.text, tag.category) == ("rating:safe", "rating") and tag.confidence > 0.5
        assert out.scores["rating"] == 0.0 and out.scores["nsfw_explicit"] < 0.45
    # real inference: the portraits' faces are found (NudeNet has FACE_MALE / FACE_FEMALE classes), the fish has none
    assert any(d["class"].startswith("FACE_") for d in outs[0].meta["detections"])
    assert any(d["class"].startswith("FACE_") for d in outs[1].meta["detections"])
    assert not any(d["class"].startswith("FACE_") for d in outs[2].meta["detections"])


@pytest.mark.parametrize("found, rating", [
    ([{"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.8}, {"class": "FACE_FEMALE", "score": 0.9}], "explicit"),
    ([{"class": "BUTTOCKS_EXPOSED", "score": 0.6}], "questionable"),
    ([{"class": "BUTTOCKS_EXPOSED", "score": 0.3}, {"class": "BELLY_EXPOSED", "score": 0.9}], "safe"),
    ([], "safe"),
])
def test_the_rating_follows_the_strongest_exposed_class(found, rating):
    got, confidence, scores = rate(found, RatingParams())
    assert got == rating and scores["rating"] == ("safe", "questionable", "explicit").index(rating)
    assert 0 <= confidence <= 1


def test_a_broken_model_file_fails_naming_it(atelier_env, tmp_path):
    from pathlib import Path

    import nudenet

    bad = tmp_path / "320n.onnx"
    bad.write_bytes((Path(nudenet.__file__).parent / "320n.onnx").read_bytes()[:10_000])
    with pytest.raises(ValueError, match=f"{bad}: not a readable ONNX NudeNet detector"):
        load_step("rating", {"model": str(bad)}, load_registry())
