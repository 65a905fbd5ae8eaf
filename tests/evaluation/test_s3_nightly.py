"""The nightly retrain with its blobs in S3 (moto on 127.0.0.1): training reads the export made from
S3, the samples and the trained weights land in the bucket, and a machine without the run's output
folder still publishes the champion, from the bucket."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.s3_server import list_keys

pytestmark = pytest.mark.slow


def test_a_night_on_s3_then_publish_without_the_output_folder(atelier_env, s3_blobs, s3_endpoint, prefect_harness,
                                                              tmp_path, tiny_sd_dir, eval_preset, photos):
    from flows.nightly import nightly_flow
    from store.db import open_store
    from store.models import Sample, TrainingRun

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg"):
        shutil.copy(photos / name, incoming / name)
    published = tmp_path / "loras" / "subject.safetensors"
    slots = tmp_path / "slots.yaml"
    slots.write_text(yaml.safe_dump({"slots": {"subject": {"primary_metric": "dino", "min_margin": 0.0,
                                                           "publish_path": str(published)}}}))
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "subject", "sources": [str(incoming)], "dataset_settings": {"identifier": "sks", "class_word": "person"},
        "training": {"method": "lora", "base_model": str(tiny_sd_dir), "resolution": 64, "bucket_reso_steps": 32,
                     "min_bucket_reso": 32, "max_bucket_reso": 128, "max_train_steps": 2, "learning_rate": 1e-3,
                     "rank": 4, "report_to": "none", "checkpointing_steps": 1000, "train_batch_size": 2},
        "evaluation": {**eval_preset, "seeds": [1]}, "slot": "subject", "slots_file": str(slots)}))

    summary = nightly_flow(str(config))
    assert summary["status"] == "promoted" and published.exists()
    store = open_store()
    bucket, prefix = s3_blobs.removeprefix("s3://").split("/", 1)
    keys = set(list_keys(s3_endpoint, bucket, prefix + "/"))
    with store.session() as session:
        run = session.get(TrainingRun, summary["run_id"])
        lora, output_dir = run.outputs["lora"], Path(run.output_dir)
        samples = session.query(Sample).count()
    assert lora["blob"]["sha256"] == lora["sha256"]
    assert f"{prefix}/{lora['sha256'][:2]}/{lora['sha256'][2:4]}/{lora['sha256']}.safetensors" in keys
    assert samples and summary["grid"].startswith(f"s3://{bucket}/{prefix}/")
    assert not (atelier_env / "blobs").exists()

    # another machine: the run's folder is not there; publishing fetches the weights from the bucket
    weights = Path(lora["path"]).read_bytes()
    shutil.rmtree(output_dir)
    published.unlink()
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["promote", str(summary["run_id"]), "--slot", "subject", "--slots", str(slots)])
    assert result.exit_code == 0, result.output
    assert published.read_bytes() == weights
