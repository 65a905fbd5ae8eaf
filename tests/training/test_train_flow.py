"""Given a committed dataset version, `atelier train` and the train flow record a training run."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.training.conftest import tiny_config


@pytest.fixture
def committed(atelier_env, photos, tmp_path, tiny_sd_dir, monkeypatch):
    """dogs@1: three real photos ingested and committed; the tiny SD installed as registry name `sd15`."""
    from flows.ingest import ingest
    from store.datasets import get_or_create_dataset
    from store.db import Store
    from store.versions import commit_version

    models = tmp_path / "models"
    shutil.copytree(tiny_sd_dir, models / "stable-diffusion-v1-5")
    monkeypatch.setenv("ATELIER_MODELS", str(models))
    sources = tmp_path / "src"
    sources.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg", "MilkyWay_1080x1920.png"):
        shutil.copy(photos / name, sources / name)
    store = Store()
    with store.session() as session:
        get_or_create_dataset(session, "dogs", identifier="sks", class_word="dog", repeats=2)
    ingest(store, [sources], "dogs")
    assert commit_version(store, "dogs", "first").number == 1
    yield store
    store.dispose()


def test_cli_train_stops_resumes_and_records_a_succeeded_run(committed, tmp_path):
    from store.models import TrainingRun
    from store.registry import file_hash
    from training.export import sha256_file

    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(tiny_config("sd15", max_train_steps=5)))
    runner = CliRunner()
    stopped = runner.invoke(app, ["train", "dogs@1", "--config", str(preset), "--set", "rank=2", "--stop-at-step", "2",
                                  "--json"])
    assert stopped.exit_code == 0, stopped.output
    first = json.loads(stopped.stdout)
    assert first["status"] == "failed" and "stopped at step 2" in first["error"]
    result = runner.invoke(app, ["train", "--resume", str(first["run_id"]), "--no-flow", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_id"] == first["run_id"] and summary["status"] == "succeeded"
    assert "resumed from checkpoint-000002 at step 2" in result.stderr and "step 5/5" in result.stderr  # streamed
    assert summary["metrics"]["steps"] == 5 and len(summary["metrics"]["loss_history"]) == 5
    lora = summary["outputs"]["lora"]
    assert sha256_file(lora["path"]) == lora["sha256"]
    # one name per run (A1111 aliases LoRAs by ss_output_name), and the subprocess ran with the determinism pins
    assert Path(lora["path"]).name == f"dogs-v1-run{summary['run_id']}.safetensors"
    assert summary["metrics"]["determinism"]["MKL_CBWR"] and summary["metrics"]["determinism"]["deterministic_algorithms"]
    with committed.session() as session:
        run = session.get(TrainingRun, summary["run_id"])
        assert run.method == "lora" and run.base_model == "sd15" and run.finished_at is not None and run.error is None
        assert run.config["rank"] == 2 and run.config["identifier"] == "sks" and run.config["seed"] == 0
        assert run.base_model_hash == file_hash(committed.settings.models_dir / "stable-diffusion-v1-5")
    exported = Path(run.output_dir) / "data"  # the version, exported in the kohya layout
    assert [p.name for p in exported.iterdir() if p.is_dir()] == ["2_sks dog"]
    again = runner.invoke(app, ["train", "--resume", str(first["run_id"]), "--no-flow"])
    assert again.exit_code == 1 and "already succeeded" in again.output


@pytest.mark.slow
def test_train_flow_records_a_failure_without_crashing(committed, tiny_sd_dir, tmp_path, prefect_harness):
    from flows.train import train_flow
    from store.models import TrainingRun

    broken = tmp_path / "broken-sd"
    shutil.copytree(tiny_sd_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    run_id = train_flow("dogs", 1, tiny_config(broken, max_train_steps=2), raise_on_failure=False)
    with committed.session() as session:
        run = session.get(TrainingRun, run_id)
        assert run.status == "failed" and run.error and "training failed" not in run.error
        assert run.flow_run_id and run.outputs == {}


def test_cli_train_names_the_bad_field_before_recording_anything(atelier_env, tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("base_model: sd15\nmax_train_step: 10\n")
    result = CliRunner().invoke(app, ["train", "dogs@1", "--config", str(preset), "--json"])
    message = "".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 1 and result.stdout == ""
    assert "bad.yaml:max_train_step:unknownfield" in message
    result = CliRunner().invoke(app, ["train", "dogs@1", "--config", str(preset), "--resume", "3"])
    assert result.exit_code == 1 and "--resumecontinuesarunwithitsrecordedconfig" in "".join(result.output.split())
