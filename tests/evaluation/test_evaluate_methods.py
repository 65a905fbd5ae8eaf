"""Evaluating textual-inversion and hypernetwork runs like any run: their prompts use the placeholder token,
their files are applied through the real client code, CLIP-T, CLIP-I and DINO score them; a VAE choice
decodes both the trained and the base samples."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import select

from evaluation.config import load_preset
from store.models import Artifact, Sample, TrainingRun
from tests.evaluation.conftest import add_run, add_subject


@pytest.fixture
def sqlite_store(atelier_env):
    from store.db import open_store

    return open_store()


def _run(store, version_id, base, method, outputs):
    run_id = add_run(store, version_id, base, None)
    with store.session() as session:
        row = session.get(TrainingRun, run_id)
        row.method, row.outputs = method, outputs
    return run_id


def _samples(store, evaluation_id):
    with store.session() as session:
        rows = session.execute(select(Sample, Artifact).join(Artifact, Sample.artifact_id == Artifact.id)
                               .where(Sample.evaluation_id == evaluation_id).order_by(Sample.id)).all()
        return {(s.model, s.prompt, s.seed): (a.sha256, s.scores, a.model_id) for s, a in rows}


def test_a_textual_inversion_run_is_sampled_with_its_token_and_scored(sqlite_store, photos, tmp_path, tiny_sd_dir,
                                                                      tiny_loras, eval_preset, registry):
    from flows.evaluate import evaluation_summary, run_evaluation

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path, names=["messi5.jpg", "HappyFish.jpg"])
    torch.manual_seed(0)
    path = tmp_path / "sks.safetensors"
    save_file({"emb_params": torch.randn(2, 32)}, str(path))  # what a TI run writes (SD 1.x, 2 vectors)
    run_id = _run(store, version_id, tiny_sd_dir, "textual_inversion",
                  {"embedding": {"path": str(path), "sha256": "e" * 64, "token": "<sks>", "num_vectors": 2}})
    evaluation = run_evaluation(store, run_id, load_preset(eval_preset), registry=registry, log=lambda s: None)
    samples = _samples(store, evaluation)
    assert {p for _, p, _ in samples} == {"a photo of <sks> person", "a <sks> person on the beach"}
    for (model, prompt, seed), (sha, scores, model_id) in samples.items():
        assert {"clip_t", "clip_i", "dino"} <= scores.keys()
        if model == "trained":
            assert sha != samples[("base", prompt, seed)][0] and model_id == str(path)
    metrics = evaluation_summary(store, evaluation)["metrics"]
    assert {"clip_t", "clip_i", "dino"} <= metrics["trained"].keys() and "dino" in metrics["lift"]

    # pivotal tuning: the embedding and its LoRA, both applied
    pivotal = _run(store, version_id, tiny_sd_dir, "textual_inversion",
                   {"embedding": {"path": str(path), "sha256": "e" * 64, "token": "<sks>", "num_vectors": 2},
                    "lora": tiny_loras[0]})
    both = _samples(store, run_evaluation(store, pivotal, load_preset(eval_preset), registry=registry,
                                          log=lambda s: None))
    for key, (sha, _, _) in both.items():
        assert (sha == samples[key][0]) == (key[0] == "base")


def test_a_hypernetwork_run_is_applied_at_the_presets_strength(sqlite_store, photos, tmp_path, tiny_sd_dir,
                                                               eval_preset, registry):
    from flows.evaluate import run_evaluation
    from training.hypernetwork import Hypernetwork

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path, names=["messi5.jpg"])
    torch.manual_seed(0)
    network = Hypernetwork([32, 64], [1, 2, 1], "relu", weight_init="XavierNormal", name="hn")
    path = network.save(tmp_path / "hn.pt", step=10)
    run_id = _run(store, version_id, tiny_sd_dir, "hypernetwork", {"hypernetwork": {"path": str(path), "sha256": "h" * 64}})
    preset = {**eval_preset, "prompts": ["a photo of {identifier} {class}"]}
    full = _samples(store, run_evaluation(store, run_id, load_preset(preset), registry=registry, log=lambda s: None))
    off = _samples(store, run_evaluation(store, run_id, load_preset({**preset, "hypernetwork_strength": 0.0}),
                                         registry=registry, log=lambda s: None))
    for (model, prompt, seed), (sha, _, _) in full.items():
        if model == "trained":
            assert sha != full[("base", prompt, seed)][0]  # strength 1 changes the picture
            assert off[(model, prompt, seed)][0] == off[("base", prompt, seed)][0]  # strength 0 is the base


def test_the_vae_decodes_trained_and_base_samples_and_defaults_to_the_runs(sqlite_store, photos, tmp_path, tiny_sd_dir,
                                                                           tiny_loras, eval_preset, registry):
    from flows.evaluate import run_evaluation
    from tests.tiny_models.vae import build_tiny_vae

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path, names=["messi5.jpg"])
    vae = build_tiny_vae(tmp_path / "vaes", seed=7)["folder"]
    preset = {**eval_preset, "prompts": ["a photo of {identifier} {class}"], "seeds": [1]}
    plain = add_run(store, version_id, tiny_sd_dir, tiny_loras[0])
    own = _samples(store, run_evaluation(store, plain, load_preset(preset), registry=registry, log=lambda s: None))
    chosen = _samples(store, run_evaluation(store, plain, load_preset({**preset, "vae": str(vae)}), registry=registry,
                                            log=lambda s: None))
    assert all(own[key][0] != chosen[key][0] for key in own)  # base and trained both decode with it
    # a run trained with that VAE is sampled with it when the preset names none
    recorded = _run(store, version_id, tiny_sd_dir, "lora", {"lora": tiny_loras[0],
                                                              "vae": {"name": "tiny", "path": str(vae), "sha256": "v" * 64}})
    by_run = _samples(store, run_evaluation(store, recorded, load_preset(preset), registry=registry, log=lambda s: None))
    assert {k: v[0] for k, v in by_run.items()} == {k: v[0] for k, v in chosen.items()}
