"""Aesthetic scores of real photos: a random-weight LAION v2 head (.pth) on a tiny CLIP, through the real loaders."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from preprocess.load import load_image_file
from preprocess.steps import Item, load_step
from tests.tiny_models.fixtures import registry, tiny_aesthetic_head, tiny_clip  # noqa: F401

PHOTOS = ["messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "ellipses.jpg", "MilkyWay_1080x1920.png", "Elarun_2560x1600.png"]


@pytest.fixture(scope="module")
def items(photos):
    return [Item(load_image_file(photos / name).image, name=name) for name in PHOTOS]


@pytest.fixture(scope="module")
def scorer(registry, tiny_aesthetic_head, tiny_clip):  # noqa: F811
    return load_step("aesthetic", {"model": str(tiny_aesthetic_head), "clip": str(tiny_clip), "batch_size": 4}, registry)


def test_scores_are_on_the_1_to_10_scale_and_differ_between_photos(scorer, items):
    scores = [o.scores["aesthetic"] for o in scorer.run(items)]
    assert all(1.0 <= s <= 10.0 for s in scores)
    assert max(scores) - min(scores) > 0.01
    assert scorer.backend == "laion-aesthetic-v2" and len(scorer.model_hash) == 64


def test_the_head_reads_the_normalised_clip_image_embedding(scorer, items, tiny_clip, tiny_aesthetic_head):  # noqa: F811
    from transformers import CLIPModel, CLIPProcessor

    from store.registry import load_state_dict

    # the same number computed the long way: CLIP's own image features, L2-normalised, through the five layers
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    state = load_state_dict(tiny_aesthetic_head)
    with torch.no_grad():
        features = clip.get_image_features(**processor(images=[i.image.convert("RGB") for i in items[:2]], return_tensors="pt"))
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        x = features / features.norm(dim=-1, keepdim=True)
        for index in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    expected = x.squeeze(-1).tolist()
    assert [o.meta["aesthetic_raw"] for o in scorer.run(items[:2])] == pytest.approx(expected, abs=1e-4)


def test_batching_does_not_change_scores(scorer, items, registry, tiny_aesthetic_head, tiny_clip):  # noqa: F811
    alone = load_step("aesthetic", {"model": str(tiny_aesthetic_head), "clip": str(tiny_clip), "batch_size": 1}, registry)
    together = [o.scores["aesthetic"] for o in scorer.run(items)]
    assert together == pytest.approx([o.scores["aesthetic"] for o in alone.run(items)], abs=1e-5)


def test_a_head_for_another_clip_width_is_refused(registry, tiny_clip, tmp_path):  # noqa: F811
    from tests.tiny_models.aesthetic_head import build_tiny_aesthetic_head

    head = build_tiny_aesthetic_head(tmp_path / "l14-head.pth", in_features=768)
    with pytest.raises(ValueError, match="takes 768-wide embeddings but CLIP clip gives 32"):
        load_step("aesthetic", {"model": str(head), "clip": str(tiny_clip)}, registry)


def test_a_file_that_is_not_an_aesthetic_head_is_refused(registry, tiny_clip, tmp_path):  # noqa: F811
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, 32)}, other)
    with pytest.raises(ValueError, match=r"not a LAION aesthetic head: missing layers.0.weight"):
        load_step("aesthetic", {"model": str(other), "clip": str(tiny_clip)}, registry)


def test_a_pickle_that_runs_code_is_never_loaded(registry, tiny_clip, tmp_path):  # noqa: F811
    import pickle

    from store.registry import UnsafeWeights

    class Payload:
        def __reduce__(self):
            return (print, ("unsafe code ran",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"layers.0.weight": Payload()}))
    with pytest.raises(UnsafeWeights, match="refused"):
        load_step("aesthetic", {"model": str(evil), "clip": str(tiny_clip)}, registry)


def test_cli_step_aesthetic_json(atelier_env, tiny_aesthetic_head, tiny_clip, photos, tmp_path):  # noqa: F811
    from flows.cli import app

    result = CliRunner().invoke(app, ["step", "aesthetic", str(photos / "messi5.jpg"), "--out", str(tmp_path),
                                      "--set", f"model={tiny_aesthetic_head}", "--set", f"clip={tiny_clip}", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert 1.0 <= record["scores"]["aesthetic"] <= 10.0
    missing = CliRunner().invoke(app, ["step", "aesthetic", str(photos / "messi5.jpg"), "--out", str(tmp_path),
                                       "--set", f"model={tiny_aesthetic_head}", "--json"])
    assert missing.exit_code != 0 and "clip-vit-l14" in missing.output and "put it at" in missing.output
