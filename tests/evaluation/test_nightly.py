"""The nightly retrain end to end on tiny models: the first night trains and promotes, a night without
new images trains nothing, a night with new images trains, evaluates and decides, a training crash
leaves the champion in place, and the night after retries the same images."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml
from sqlalchemy import func, select

from store.models import PromotionDecision, TrainingRun

pytestmark = pytest.mark.slow


@pytest.fixture
def nightly_setup(atelier_env, tmp_path, tiny_sd_dir, eval_preset):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    published = tmp_path / "ComfyUI" / "models" / "loras" / "subject.safetensors"
    slots = tmp_path / "slots.yaml"
    slots.write_text(yaml.safe_dump({"slots": {"subject": {
        "primary_metric": "dino", "min_margin": 0.0, "guards": {"clip_t": {"tolerance": 0.5}},
        "publish_path": str(published)}}}))
    training = {"method": "lora", "base_model": str(tiny_sd_dir), "resolution": 64, "bucket_reso_steps": 32,
                "min_bucket_reso": 32, "max_bucket_reso": 128, "max_train_steps": 2, "learning_rate": 1e-3,
                "rank": 4, "report_to": "none", "checkpointing_steps": 1000, "train_batch_size": 2}
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "subject", "sources": [str(incoming)],
        "dataset_settings": {"identifier": "sks", "class_word": "person"},
        "training": training, "evaluation": {**eval_preset, "seeds": [1]}, "min_new_images": 1,
        "slot": "subject", "slots_file": str(slots)}))
    return {"incoming": incoming, "config": str(config), "published": published}


def _night(setup):
    from flows.nightly import nightly_flow

    state = nightly_flow(setup["config"], return_state=True)
    return state, state.result(raise_on_failure=False)


def _cli(setup):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["nightly", "--config", setup["config"], "--json"])


def _count(store, model, **where):
    with store.session() as session:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return session.scalar(query)


def test_five_nights(nightly_setup, prefect_harness, photos, monkeypatch):
    from prefect.artifacts import Artifact

    from evaluation.promotion import champion_of
    from store.db import open_store

    store = open_store()
    incoming = nightly_setup["incoming"]
    for name in ("messi5.jpg", "HappyFish.jpg"):
        shutil.copy(photos / name, incoming / name)

    state, summary = _night(nightly_setup)  # night 1: no champion yet → trains and promotes
    assert state.is_completed(), summary
    assert summary["status"] == "promoted" and summary["new_images"] == 2 and summary["version"] == 1
    champion = champion_of(store, "subject")
    assert champion["run_id"] == summary["run_id"] and nightly_setup["published"].exists()
    first_weights = nightly_setup["published"].read_bytes()
    report = Artifact.get("nightly-subject")
    assert "**promoted**" in report.data and "| dino |" in report.data and "![grid](" in report.data

    result = _cli(nightly_setup)  # night 2, from the CLI: nothing new → nothing trained
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["status"] == "no new data" and summary["new_images"] == 0
    assert _count(store, TrainingRun) == 1

    shutil.copy(photos / "leuvenB.jpg", incoming / "leuvenB.jpg")
    state, summary = _night(nightly_setup)  # night 3: a new image → trains, evaluates, decides
    assert state.is_completed(), summary
    assert summary["new_images"] == 1 and summary["version"] == 2 and summary["decision"] in ("promoted", "kept")
    assert summary["champion_run_id"] == champion["run_id"]
    # the champion's samples were re-scored against version 2's images, like the challenger's
    assert summary["metrics"]["champion"]["dino"] != pytest.approx(champion["metrics"]["dino"])
    assert _count(store, PromotionDecision, slot="subject") == 2
    champion = champion_of(store, "subject")
    weights = nightly_setup["published"].read_bytes()
    assert (weights != first_weights) == (summary["decision"] == "promoted")

    shutil.copy(photos / "ellipses.jpg", incoming / "ellipses.jpg")
    crash = f"{sys.executable} -c \"import sys; print('training failed: CUDA out of memory'); sys.exit(1)\""
    monkeypatch.setenv("ATELIER_TRAIN_LAUNCHER", crash)
    state, summary = _night(nightly_setup)  # night 4: training crashes → champion untouched, run failed
    assert state.is_failed()
    assert "nightly failed at train: CUDA out of memory" in str(summary)
    assert summary.summary["stage"] == "train" and summary.summary["run_id"] is not None
    result = _cli(nightly_setup)  # the same night from the CLI: exit 1, the stage and reason in the JSON
    assert result.exit_code == 1 and json.loads(result.stdout)["stage"] == "train"
    assert "nightly failed at train: CUDA out of memory" in " ".join(result.output.split())
    assert champion_of(store, "subject")["run_id"] == champion["run_id"]
    assert nightly_setup["published"].read_bytes() == weights
    assert _count(store, TrainingRun, status="failed") == 2 and _count(store, PromotionDecision) == 2
    assert "at stage `train`" in Artifact.get("nightly-subject").data

    monkeypatch.delenv("ATELIER_TRAIN_LAUNCHER")
    state, summary = _night(nightly_setup)  # night 5: starts clean and retries the same image
    assert state.is_completed(), summary
    assert summary["new_images"] == 1 and summary["version"] == 3 and summary["decision"] in ("promoted", "kept")
