"""Aesthetic gradients at sampling time: a tiny SD + tiny CLIP, an embedding made from real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation.config import load_preset
from evaluation.sampling import generate
from preprocess.load import load_image_file
from store.config_files import ConfigError
from tests.tiny_models.fixtures import tiny_clip, tiny_sd  # noqa: F401
from training.aesthetic_gradients import (
    AestheticGradients,
    image_embedding,
    load_embedding,
    load_projection,
    save_embedding,
)


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embedding_file(tmp_path_factory, tiny_clip, photos):
    images = [load_image_file(photos / name).image for name in ("Elarun_2560x1600.png", "MilkyWay_1080x1920.png")]
    path = tmp_path_factory.mktemp("aesthetic") / "space.safetensors"
    return save_embedding(image_embedding(images, tiny_clip), path)


def test_embedding_is_the_normalised_mean_and_loads_in_both_formats(embedding_file, tiny_clip, photos, tmp_path):
    embedding = load_embedding(embedding_file)
    assert embedding.shape == (1, 32) and torch.allclose(embedding.norm(), torch.tensor(1.0))
    one = image_embedding([load_image_file(photos / "Elarun_2560x1600.png").image], tiny_clip)
    two = image_embedding([load_image_file(photos / "MilkyWay_1080x1920.png").image], tiny_clip)
    mean = (one + two) / 2
    assert torch.allclose(embedding, mean / mean.norm(), atol=1e-6)
    pt = save_embedding(embedding, tmp_path / "space.pt")  # the extension's format: a (1, D) tensor in a .pt
    assert torch.equal(load_embedding(pt), embedding)
    torch.save({"not": "a tensor"}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="bad.pt does not hold one"):
        load_embedding(tmp_path / "bad.pt")


def test_gradient_steps_move_the_text_towards_the_embedding_and_restore_the_encoder(pipe, embedding_file, tiny_clip):
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    flags = [p.requires_grad for p in pipe.text_encoder.parameters()]
    target, projection = load_embedding(embedding_file), load_projection(tiny_clip)
    ag = AestheticGradients(target, projection, steps=5, lr=1e-2, weight=1.0)
    prompt = "a photo of a cat"
    tuned = ag.prompt_embeds(pipe, prompt)
    assert tuned.shape == (1, 77, 32)
    tokens = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = pipe.text_encoder(tokens)[0]
    assert not torch.allclose(tuned, plain)
    # the pipeline's text encoder is exactly as it was (weights and requires_grad)
    after = pipe.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in pipe.text_encoder.parameters()] == flags
    # the tuned copy's pooled embedding is closer to the target than the original's
    import copy

    encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(True)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    sims = []
    for _ in range(6):
        features = projection(encoder(tokens).pooler_output)
        sim = (features / features.norm(dim=-1, keepdim=True) @ target.T).mean()
        sims.append(sim.item())
        optimizer.zero_grad()
        (-sim).backward()
        optimizer.step()
    assert sims[-1] > sims[0]
    # weight 0 and steps 0 are the plain encoding
    assert torch.equal(AestheticGradients(target, projection, 5, 1e-2, 0.0).prompt_embeds(pipe, prompt), plain)
    assert torch.equal(AestheticGradients(target, projection, 0, 1e-2, 1.0).prompt_embeds(pipe, prompt), plain)


def test_evaluation_samples_with_aesthetic_gradients(atelier_env, pipe, embedding_file, tiny_clip, tmp_path):
    preset = {"prompts": ["a photo of a {class}"], "seeds": [0, 1], "num_inference_steps": 2, "height": 64,
              "width": 64, "batch_size": 2}
    plain = generate(pipe, "base", preset["prompts"], load_preset(preset), None, "cat")
    aesthetic = {**preset, "aesthetic_embedding": str(embedding_file), "aesthetic_clip": str(tiny_clip),
                 "aesthetic_steps": 3, "aesthetic_lr": 1e-2, "aesthetic_weight": 1.0}
    config = load_preset(aesthetic)
    tuned = generate(pipe, "base", preset["prompts"], config, None, "cat")
    again = generate(pipe, "base", preset["prompts"], config, None, "cat")
    assert [s.seed for s in tuned] == [0, 1] and tuned[0].image.size == (64, 64)
    for a, b, c in zip(plain, tuned, again):
        assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(np.asarray(b.image), np.asarray(c.image))  # same settings, same pixels
    settings = config.sampler_settings
    assert {k: settings[k] for k in ("aesthetic_steps", "aesthetic_lr", "aesthetic_weight")} == {
        "aesthetic_steps": 3, "aesthetic_lr": 1e-2, "aesthetic_weight": 1.0}
    json.dumps(settings)
    after = generate(pipe, "base", preset["prompts"], load_preset(preset), None, "cat")  # nothing left behind
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(plain, after))


def test_class_images_use_aesthetic_gradients_and_their_own_cache(pipe, embedding_file, tiny_clip, tmp_path):
    from training.prior import class_images_folder, ensure_class_images

    ag = AestheticGradients(load_embedding(embedding_file), load_projection(tiny_clip), 3, 1e-2, 1.0)
    plain = ensure_class_images(pipe, tmp_path / "plain", "a photo of a dog", 1, 64, steps=2, log=lambda _: None)
    tuned = ensure_class_images(pipe, tmp_path / "tuned", "a photo of a dog", 1, 64, steps=2, log=lambda _: None,
                                aesthetic=ag)
    assert not np.array_equal(np.asarray(load_image_file(plain[0]).image), np.asarray(load_image_file(tuned[0]).image))
    settings = {"aesthetic_embedding": str(embedding_file), "aesthetic_steps": 3}
    assert class_images_folder(tmp_path, "h", "p", 64) != class_images_folder(tmp_path, "h", "p", 64, settings)


def test_training_validation_samples_use_aesthetic_gradients(pipe, embedding_file, tiny_clip, tmp_path):
    import contextlib

    from training.config import TrainConfig
    from training.train import validation_samples

    base = {"base_model": "unused", "resolution": 64, "validation_prompts": ["a photo of a dog"],
            "validation_seeds": [0], "validation_inference_steps": 2}
    plain = validation_samples(pipe, TrainConfig.model_validate(base), tmp_path / "plain", 1, "cpu",
                               contextlib.nullcontext)
    config = TrainConfig.model_validate({**base, "aesthetic_embedding": str(embedding_file),
                                         "aesthetic_clip": str(tiny_clip), "aesthetic_steps": 3,
                                         "aesthetic_lr": 1e-2, "aesthetic_weight": 1.0})
    tuned = validation_samples(pipe, config, tmp_path / "tuned", 1, "cpu", contextlib.nullcontext)
    assert plain[0]["sha256"] != tuned[0]["sha256"]


def test_cli_writes_an_embedding_from_files(atelier_env, tiny_clip, photos, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "fish.pt"
    result = CliRunner().invoke(app, ["aesthetic-embedding", str(out), str(photos / "HappyFish.jpg"),
                                      "--clip", str(tiny_clip), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dimensions"] == 32 and load_embedding(out).shape == (1, 32)
    missing = CliRunner().invoke(app, ["aesthetic-embedding", str(out), "--dataset", "nope", "--clip", str(tiny_clip)])
    assert missing.exit_code == 1 and "dataset 'nope' not found" in missing.output
