"""Evaluating a LoRA run on the tiny SD: samples for trained and base with the same prompts and seeds,
stored with lineage, a labelled grid, metrics overall and per prompt; then the CLI a user types."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from evaluation.config import ConfigError, load_preset
from store.models import Artifact, Evaluation, Sample
from tests.evaluation.conftest import add_run, add_subject


@pytest.fixture
def sqlite_store(atelier_env):
    from store.db import open_store

    return open_store()


def _samples(store, evaluation_id):
    with store.session() as session:
        rows = session.execute(select(Sample, Artifact).join(Artifact, Sample.artifact_id == Artifact.id)
                               .where(Sample.evaluation_id == evaluation_id).order_by(Sample.id)).all()
        return [(s.model, s.prompt, s.seed, s.scores, a.sha256, a.step, a.params, a.image_id) for s, a in rows]


def test_evaluation_samples_trained_and_base_and_records_metrics(sqlite_store, photos, tmp_path, tiny_sd_dir,
                                                                 tiny_loras, eval_preset, registry):
    from evaluation.grid import HEADER, LABEL_WIDTH
    from flows.evaluate import evaluation_summary, run_evaluation

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path)
    run_a = add_run(store, version_id, tiny_sd_dir, tiny_loras[0])
    run_b = add_run(store, version_id, tiny_sd_dir, tiny_loras[1])
    preset = load_preset(eval_preset)
    first = run_evaluation(store, run_a, preset, registry=registry, log=lambda s: None)
    rows = _samples(store, first)
    assert len(rows) == 2 * 2 * 2  # prompts × seeds × (trained, base)
    assert {r[1] for r in rows} == {"a photo of sks person", "a sks person on the beach"}
    _, _, seed, scores, _, step, params, image_id = rows[0]
    assert step == "sample" and image_id is None and params["run"] == run_a and params["seed"] == seed
    assert params["settings"]["scheduler"] == "DPMSolverMultistepScheduler" and params["settings"]["height"] == 64
    assert {"clip_t", "clip_i", "dino", "aesthetic", "face_identity"} <= scores.keys()
    by_key = {(r[0], r[1], r[2]): r[4] for r in rows}
    for (m, p, s), digest in by_key.items():
        if m == "trained":
            assert digest != by_key[("base", p, s)]  # the LoRA changes the picture
    assert by_key[("base", "a photo of sks person", 1)] != by_key[("base", "a photo of sks person", 2)]

    summary = evaluation_summary(store, first)
    metrics = summary["metrics"]
    assert summary["status"] == "succeeded" and summary["samples"] == 8
    assert metrics["trained"]["samples"] == 4 and metrics["references"] == {"version_id": version_id, "images": 3, "faces": 1}
    assert metrics["lift"]["dino"] == pytest.approx(metrics["trained"]["dino"] - metrics["base"]["dino"])
    assert 0 <= metrics["trained"]["faces_missing"] <= 4 and 0 <= metrics["trained"]["diversity"] <= 2
    assert set(summary["per_prompt"]["a sks person on the beach"]) == {"trained", "base"}
    grid = Image.open(io.BytesIO(store.blobs.get(summary["grid_sha256"], "png")))
    assert grid.size == (LABEL_WIDTH + 4 * 64 + 8, HEADER + 2 * 64)

    # re-scoring the stored samples (lossless PNGs) on the same references gives the same numbers;
    # on another version's images, other numbers
    from flows.evaluate import rescore_evaluation

    again = rescore_evaluation(store, first, version_id, registry=registry)
    for model in ("trained", "base"):
        for key, value in metrics[model].items():
            assert again[model][key] == pytest.approx(value, abs=1e-4), (model, key)
    other_version = add_subject(store, photos, tmp_path, names=["ellipses.jpg"])
    other = rescore_evaluation(store, first, other_version, registry=registry)
    assert other["references"]["images"] == 4 and other["trained"]["dino"] != pytest.approx(metrics["trained"]["dino"])

    # the same preset again: nothing is sampled twice
    assert run_evaluation(store, run_a, preset, registry=registry, log=lambda s: None) == first
    # another run with the same preset: identical base samples (fixed seeds), different trained ones
    second_rows = _samples(store, run_evaluation(store, run_b, preset, registry=registry, log=lambda s: None))
    second = {(r[0], r[1], r[2]): r[4] for r in second_rows}
    assert all(second[k] == v for k, v in by_key.items() if k[0] == "base")
    assert any(second[k] != v for k, v in by_key.items() if k[0] == "trained")


def test_bad_presets_and_runs_fail_clearly(sqlite_store, photos, tmp_path, tiny_sd_dir, tiny_loras, eval_preset, registry):
    from flows.evaluate import run_evaluation
    from store.registry import ModelMissing

    with pytest.raises(ConfigError, match=r"preset: seeds: List should have at least 1 item"):
        load_preset({**eval_preset, "seeds": []})
    with pytest.raises(ConfigError, match=r"prompt 'a {subject}'"):
        load_preset({**eval_preset, "prompts": ["a {subject}"]})
    with pytest.raises(ConfigError, match=r"default.yaml \(with --set overrides\): guidance_scle: unknown field"):
        load_preset(None, {"guidance_scle": 3})
    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path)
    failed = add_run(store, version_id, tiny_sd_dir, None, status="failed")
    with pytest.raises(ValueError, match=f"training run {failed} is failed"):
        run_evaluation(store, failed, load_preset(eval_preset), registry=registry)
    run_id = add_run(store, version_id, tiny_sd_dir, tiny_loras[0])
    with pytest.raises(ModelMissing, match="'no-such-dino'"):
        run_evaluation(store, run_id, load_preset({**eval_preset, "dino_model": "no-such-dino"}), registry=registry)
    with store.session() as session:
        row = session.scalar(select(Evaluation).where(Evaluation.run_id == run_id))
        assert row.status == "failed" and "no-such-dino" in row.metrics["error"]
    with pytest.raises(ConfigError, match="scheduler: 'Nope' is not a diffusers scheduler"):
        run_evaluation(store, run_id, load_preset({**eval_preset, "scheduler": "Nope"}), registry=registry)


def test_cli_eval_runs_diff_promote_rollback(sqlite_store, prefect_harness, photos, tmp_path, tiny_sd_dir, tiny_loras,
                                             eval_preset):
    from flows.cli import app

    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        return result

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path)
    run_a = add_run(store, version_id, tiny_sd_dir, tiny_loras[0])
    run_b = add_run(store, version_id, tiny_sd_dir, tiny_loras[1])
    preset_file = tmp_path / "preset.yaml"
    preset_file.write_text(yaml.safe_dump(eval_preset))
    result = run("eval", run_a, "--preset", preset_file, "--set", "seeds=[5]", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["samples"] == 2 * 1 * 2
    assert run("eval", run_b, "--preset", preset_file, "--set", "seeds=[5]", "--no-flow").exit_code == 0
    bad = run("eval", run_a, "--preset", preset_file, "--set", "height=abc")
    assert bad.exit_code == 1 and "height: Input should be a valid integer" in " ".join(bad.output.split())

    listing = json.loads(run("runs", "subject", "--json").stdout)
    assert [r["run_id"] for r in listing["runs"]] == [run_b, run_a]
    assert listing["runs"][1]["version"] == 1 and "dino" in listing["runs"][1]["metrics"]
    diff = json.loads(run("runs", "diff", run_a, run_b, "--json").stdout)
    assert diff["config"] == {} and diff["data"] == {"a": "subject@1", "b": "subject@1"}
    assert diff["metrics"]["dino"]["delta"] == pytest.approx(diff["metrics"]["dino"]["b"] - diff["metrics"]["dino"]["a"])
    assert run("runs", "nosuch").exit_code == 1

    published = tmp_path / "loras" / "subject.safetensors"
    slots = tmp_path / "slots.yaml"
    slots.write_text(yaml.safe_dump({"slots": {"subject": {"primary_metric": "dino", "publish_path": str(published)}}}))
    first = json.loads(run("promote", run_a, "--slot", "subject", "--slots", slots, "--json").stdout)
    assert first["action"] == "manual" and first["champion"]["run_id"] == run_a
    assert run("promote", run_b, "--slot", "subject", "--slots", slots).exit_code == 0
    assert published.read_bytes() == Path(tiny_loras[1]["path"]).read_bytes()
    back = json.loads(run("rollback", "subject", "--slots", slots, "--json").stdout)
    assert back["run_id"] == run_a and published.read_bytes() == Path(tiny_loras[0]["path"]).read_bytes()
    missing = run("rollback", "nosuch", "--slots", slots)
    assert missing.exit_code == 1 and "no slot 'nosuch'" in " ".join(missing.output.split())
    listing = json.loads(run("runs", "subject", "--json").stdout)
    assert listing["runs"][1]["champion_of"] == ["subject"]


def test_shipped_configs_are_valid_and_nightly_config_errors_name_the_field(atelier_env, tmp_path):
    from evaluation.config import load_slots
    from flows.cli import app
    from flows.nightly import load_nightly

    preset = load_preset()
    assert len(preset.prompts) >= 10 and len(preset.seeds) >= 3
    assert all("{identifier}" in p and "{class}" in p for p in preset.prompts)
    assert "subject-lora" in load_slots()
    assert load_nightly().slot == "subject-lora"
    bad = tmp_path / "nightly.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "d", "sources": ["x"], "min_new_images": 0}))
    result = CliRunner().invoke(app, ["nightly", "--config", str(bad)])
    assert result.exit_code == 1
    assert "nightly.yaml: min_new_images: Input should be greater than or equal to 1" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["nightly", "--config", str(bad), "--set", "min_new_images=2", "--set", "slot=nope"])
    assert result.exit_code == 1 and "no slot 'nope'" in " ".join(result.output.split())


def test_lora_strength_zero_is_the_base_and_a_dreambooth_run_samples_its_own_pipeline(
        sqlite_store, photos, tmp_path, tiny_sd_dir, tiny_loras, eval_preset, registry):
    import torch
    from diffusers import StableDiffusionPipeline

    from flows.evaluate import run_evaluation
    from store.models import TrainingRun

    store = sqlite_store
    version_id = add_subject(store, photos, tmp_path, names=["messi5.jpg"])
    preset = load_preset({**eval_preset, "prompts": ["a photo of {identifier} {class}"], "lora_scale": 0.0})
    rows = _samples(store, run_evaluation(store, add_run(store, version_id, tiny_sd_dir, tiny_loras[0]), preset,
                                          registry=registry, log=lambda s: None))
    by_key = {(r[0], r[2]): r[4] for r in rows}
    assert all(by_key[("trained", seed)] == by_key[("base", seed)] for seed in (1, 2))  # strength 0: no change

    # a DreamBooth run: its own diffusers folder (here the tiny SD with a nudged UNet)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    with torch.no_grad():
        for parameter in pipe.unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    pipe.save_pretrained(tmp_path / "db" / "pipeline")
    run_id = add_run(store, version_id, tiny_sd_dir, None)
    with store.session() as session:
        run = session.get(TrainingRun, run_id)
        run.method, run.outputs = "dreambooth", {"pipeline": {"path": str(tmp_path / "db" / "pipeline"), "sha256": "1" * 64}}
    rows = _samples(store, run_evaluation(store, run_id, load_preset(eval_preset), registry=registry, log=lambda s: None))
    dreambooth = {(r[0], r[1], r[2]): r for r in rows}
    for (model, prompt, seed), row in dreambooth.items():
        if model == "trained":
            assert row[4] != dreambooth[("base", prompt, seed)][4]
            assert row[6]["model"] == "trained"
    with store.session() as session:
        artifact = session.scalar(select(Artifact).where(Artifact.params["run"].as_integer() == run_id,
                                                         Artifact.model_hash == "1" * 64).limit(1))
        assert artifact is not None and artifact.model_id == str(tmp_path / "db" / "pipeline")
