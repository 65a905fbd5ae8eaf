"""Tagging real photos: a tiny WD14 ONNX tagger and a tiny DeepDanbooru project through the real loading code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from preprocess.tag_postprocess import TagPostProcess, postprocess_tags
from tests.tiny_models.fixtures import registry, tiny_deepdanbooru, tiny_wd14  # noqa: F401

PHOTOS = ["messi5.jpg", "HappyFish.jpg", "MilkyWay_1080x1920.png", "FlyingKonqui_2560x1600.png", "ellipses.jpg"]


@pytest.fixture(scope="module")
def images(photos):
    return {name: load_image_file(photos / name).image for name in PHOTOS}


def tag(registry, images, names, **params):  # noqa: F811
    step = load_step("tag", params, registry)
    return step, [o.tags for o in step.run([Item(images[n], name=n) for n in names])]


def what_wd14_sees(image) -> np.ndarray:
    """Mean B, G, R in 0…1 of the photo on a white square (transparency over white), as the tagger gets it."""
    from preprocess.tagging import rgb_on_white

    rgb = np.asarray(rgb_on_white(image), dtype=np.float64)
    height, width = rgb.shape[:2]
    side = max(height, width)
    total = rgb.sum(axis=(0, 1)) + 255.0 * (side * side - height * width)
    return (total / (side * side) / 255.0)[::-1]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_wd14_default_thresholds_per_category(registry, tiny_wd14, images):  # noqa: F811
    step, [tags] = tag(registry, images, ["messi5.jpg"], model=str(tiny_wd14))
    assert (step.backend, step.model_id) == ("wd14-onnx", str(tiny_wd14))
    assert len(step.model_hash) == 64
    by_text = {t.text: t for t in tags}
    # general ≥ 0.35, character ≥ 0.85, only the top rating (≥ 0.5)
    assert {"1girl", "solo", "long hair", "star (symbol)", "^_^", "kaname madoka", "general"} <= set(by_text)
    assert not {"outdoors", "hatsune miku", "sensitive", "questionable"} & set(by_text)
    assert by_text["kaname madoka"].category == "character" and by_text["general"].category == "rating"
    assert by_text["1girl"].confidence == pytest.approx(0.90, abs=1e-4)
    confidences = [t.confidence for t in tags]
    assert confidences == sorted(confidences, reverse=True)


def test_wd14_sees_the_photo_in_bgr_on_white(registry, tiny_wd14, images):  # noqa: F811
    _, results = tag(registry, images, PHOTOS, model=str(tiny_wd14), general_threshold=0.0)
    for name, tags in zip(PHOTOS, results):
        blue, green, red = what_wd14_sees(images[name])
        by_text = {t.text: t.confidence for t in tags}
        assert by_text["blue theme"] == pytest.approx(sigmoid(8 * (blue - red)), abs=0.02), name
        night = sigmoid(math.log(0.95 / 0.05) - 2 * (blue + green + red))
        assert by_text["night sky"] == pytest.approx(night, abs=0.02), name


def test_a_threshold_tried_on_real_photos(registry, tiny_wd14, images):  # noqa: F811
    # the Milky Way (dark) scores "night sky" far above the bright aquarium fish
    _, results = tag(registry, images, ["MilkyWay_1080x1920.png", "HappyFish.jpg"], model=str(tiny_wd14), general_threshold=0.0)
    night = [{t.text: t.confidence for t in tags}["night sky"] for tags in results]
    assert night[0] > night[1] + 0.1
    between = (night[0] + night[1]) / 2
    _, results = tag(registry, images, ["MilkyWay_1080x1920.png", "HappyFish.jpg"], model=str(tiny_wd14), general_threshold=between)
    assert ["night sky" in {t.text for t in tags} for tags in results] == [True, False]


def test_post_processing_as_curators_expect(registry, tiny_wd14, images):  # noqa: F811
    _, [tags] = tag(
        registry, images, ["messi5.jpg"], model=str(tiny_wd14), character_threshold=0.8, rating_threshold=1.0,
        blacklist=["solo"], rename={"long_hair": "very_long_hair", "1girl": "1woman"}, trigger_word="ohwx person",
        max_tags=4, underscores_to_spaces=False, escape_parentheses=False,
    )
    assert [t.text for t in tags] == ["ohwx person", "kaname_madoka", "1woman", "hatsune_miku", "star_(symbol)"]
    assert tags[0].confidence == 1.0
    assert [t.category for t in tags[1:4]] == ["character", "general", "character"]


def test_batches_give_the_same_tags_as_single_images(registry, tiny_wd14, images):  # noqa: F811
    _, together = tag(registry, images, PHOTOS, model=str(tiny_wd14), batch_size=3)
    _, alone = tag(registry, images, PHOTOS, model=str(tiny_wd14), batch_size=1)
    for a, b in zip(together, alone):
        assert [t.text for t in a] == [t.text for t in b]
        assert [t.confidence for t in a] == pytest.approx([t.confidence for t in b], abs=1e-5)


def test_postprocess_rules_on_raw_scores():
    raw = [("^_^", 0.9, "general"), ("hat_(object)", 0.8, "general"), ("long_hair", 0.7, "general"),
           ("long hair", 0.6, "general"), ("safe", 0.4, "rating"), ("sensitive", 0.3, "rating"),
           ("cat", 0.2, "general"), ("weird", 0.99, "copyright")]
    tags = postprocess_tags(raw, TagPostProcess(general_threshold=0.5, rating_threshold=0.35, trigger_word="weird"))
    # kaomoji keep underscores, parentheses stored plain (exports escape them), duplicates merged at their best confidence,
    # only the top rating, unknown category counts as general, trigger word first and not repeated
    assert [(t.text, t.confidence) for t in tags] == [
        ("weird", 1.0), ("^_^", 0.9), ("hat (object)", 0.8), ("long hair", 0.7), ("safe", 0.4)]
    assert [t.text for t in postprocess_tags(raw, TagPostProcess(blacklist=["long hair", "HAT_(OBJECT)"]))] == ["weird", "^_^"]
    assert postprocess_tags([("a\\(b\\)", 0.9, "general")], TagPostProcess())[0].text == "a(b)"  # stored unescaped
    escaped = TagPostProcess(escape_parentheses=True)
    assert postprocess_tags([("a\\(b\\)", 0.9, "general")], escaped)[0].text == "a\\(b\\)"  # never double-escaped


def test_bad_parameters_name_the_step_and_field(registry, tiny_wd14, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"step 'tag': general_threshold: .*less than or equal to 1"):
        load_step("tag", {"model": str(tiny_wd14), "general_threshold": 2}, registry)
    with pytest.raises(ValueError, match=r"step 'tag': treshold: Extra inputs"):
        load_step("tag", {"model": str(tiny_wd14), "treshold": 0.5}, registry)
    with pytest.raises(ValueError, match="not a tagger folder"):
        load_step("tag", {"model": str(tmp_path)}, registry)


def test_a_tag_list_that_does_not_match_the_model_is_refused(registry, tiny_wd14, tmp_path):  # noqa: F811
    broken = tmp_path / "wd14"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((tiny_wd14 / "model.onnx").read_bytes())
    lines = (tiny_wd14 / "selected_tags.csv").read_text().splitlines()
    (broken / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="14 outputs but selected_tags.csv lists 13 tags"):
        load_step("tag", {"model": str(broken)}, registry)
    (broken / "selected_tags.csv").write_text("id,tag\n1,x\n")
    with pytest.raises(ValueError, match="missing column"):
        load_step("tag", {"model": str(broken)}, registry)


def test_a_missing_registry_model_says_where_to_put_it(registry):  # noqa: F811
    from store.registry import ModelMissing

    with pytest.raises(ModelMissing, match="wd14-vit-v2.*put it at"):
        load_step("tag", {}, registry)


def test_cli_step_tag_json(atelier_env, tiny_wd14, photos, tmp_path):  # noqa: F811
    from flows.cli import app

    result = CliRunner().invoke(app, ["step", "tag", str(photos / "messi5.jpg"), str(photos / "HappyFish.jpg"),
                                      "--out", str(tmp_path / "out"), "--set", f"model={tiny_wd14}",
                                      "--set", "trigger_word=ohwx", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["backend"] for r in records] == ["wd14-onnx", "wd14-onnx"]
    assert all(r["tags"][0] == {"text": "ohwx", "confidence": 1.0, "category": "general"} for r in records)
    assert (tmp_path / "out" / "results.jsonl").read_text().count("\n") == 2


@pytest.mark.slow
def test_deepdanbooru_project_tags_real_photos(registry, tiny_deepdanbooru, photos, images, tmp_path):  # noqa: F811
    from PIL import Image

    # a WebP copy: deepdanbooru's own reader cannot open WebP, the step hands it decoded pixels
    webp = tmp_path / "messi5.webp"
    Image.open(photos / "messi5.jpg").save(webp, "WEBP", quality=95)
    step = load_step("tag", {"model": str(tiny_deepdanbooru), "general_threshold": 0.0,
                             "character_threshold": 0.0, "rating_threshold": 0.0, "batch_size": 2}, registry)
    assert step.backend == "deepdanbooru"
    items = [Item(images["messi5.jpg"]), Item(load_image_file(webp).image), Item(images["HappyFish.jpg"])]
    results = [o.tags for o in step.run(items)]
    categories = {t.text: t.category for t in results[0]}
    assert categories["hatsune miku"] == "character" and categories["star (sky)"] == "general"
    assert [c for c in categories.values() if c == "rating"] == ["rating"]  # one rating, the top one
    assert any(t.startswith("rating:") for t, c in categories.items() if c == "rating")
    assert len(results[0]) == 10 + 2 + 1
    jpeg, webp_, fish = ({t.text: t.confidence for t in tags} for tags in results)
    assert jpeg["1girl"] == pytest.approx(webp_["1girl"], abs=0.02)  # same photo, lossy re-encode
    assert max(abs(jpeg[t] - fish[t]) for t in jpeg if t in fish) > 1e-3  # the model looks at the image
    single = load_step("tag", {"model": str(tiny_deepdanbooru), "general_threshold": 0.0, "character_threshold": 0.0,
                               "rating_threshold": 0.0, "batch_size": 1}, registry).run(items[:1])[0].tags
    assert [t.confidence for t in single] == pytest.approx([t.confidence for t in results[0]], abs=1e-5)


@pytest.mark.slow
def test_deepdanbooru_and_torch_models_share_a_process(tiny_deepdanbooru, tmp_path):  # noqa: F811
    import subprocess
    import sys
    from pathlib import Path

    # a fresh process, so the import order is the one a prepare worker has: TensorFlow first, then triton
    script = (
        "from preprocess.steps import load_step\n"
        "from store.registry import load_registry\n"
        "from store.settings import load_settings\n"
        f"registry = load_registry(settings=load_settings({{'ATELIER_HOME': {str(tmp_path)!r}}}))\n"
        f"load_step('tag', {{'model': {str(tiny_deepdanbooru)!r}}}, registry)\n"
        "import triton\n"
        "print('both loaded')\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "both loaded" in done.stdout, done.stderr[-2000:]
