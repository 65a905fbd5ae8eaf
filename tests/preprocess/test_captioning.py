"""Captioning real photos with a tiny BLIP model saved with save_pretrained, through the real loading code."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from tests.tiny_models.fixtures import registry, tiny_blip  # noqa: F401

PHOTOS = ["messi5.jpg", "HappyFish.jpg", "MilkyWay_1080x1920.png", "FlyingKonqui_2560x1600.png"]


@pytest.fixture(scope="module")
def items(photos):
    return [Item(load_image_file(photos / name).image, name=name) for name in PHOTOS]


@pytest.fixture(scope="module")
def captioner(registry, tiny_blip):  # noqa: F811
    return load_step("caption", {"model": str(tiny_blip), "max_new_tokens": 8, "num_beams": 1, "batch_size": 2}, registry)


def test_each_photo_gets_a_caption_of_words_from_the_vocabulary(captioner, items, tiny_blip):  # noqa: F811
    from tests.tiny_models.blip import WORDS

    outputs = captioner.run(items)
    assert (captioner.backend, captioner.model_id) == ("blip", str(tiny_blip))
    captions = [o.caption for o in outputs]
    assert all(captions) and all(set(c.split()) <= set(WORDS) | {"."} for c in captions)
    assert "[" not in " ".join(captions)  # special tokens are not in the text
    assert len(set(captions)) > 1  # the model looks at the image


def test_captions_do_not_depend_on_batching(captioner, items, registry, tiny_blip):  # noqa: F811
    alone = load_step("caption", {"model": str(tiny_blip), "max_new_tokens": 8, "num_beams": 1, "batch_size": 1}, registry)
    assert [o.caption for o in captioner.run(items)] == [o.caption for o in alone.run(items)]


def test_a_prompt_starts_the_caption(registry, tiny_blip, items):  # noqa: F811
    step = load_step("caption", {"model": str(tiny_blip), "prompt": "a photo of", "max_new_tokens": 6}, registry)
    assert all(o.caption.startswith("a photo of") for o in step.run(items[:2]))


def test_bad_parameters_and_folders_are_clear_errors(registry, tiny_blip, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"step 'caption': num_beams: .*greater than or equal to 1"):
        load_step("caption", {"model": str(tiny_blip), "num_beams": 0}, registry)
    with pytest.raises(ValueError, match="not a transformers folder"):
        load_step("caption", {"model": str(tmp_path)}, registry)


def test_cli_step_caption_json(atelier_env, tiny_blip, photos, tmp_path):  # noqa: F811
    from flows.cli import app

    result = CliRunner().invoke(app, ["step", "caption", str(photos / "messi5.jpg"), "--out", str(tmp_path),
                                      "--set", f"model={tiny_blip}", "--set", "max_new_tokens=5", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["backend"] == "blip" and record["caption"]
