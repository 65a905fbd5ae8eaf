"""The training queue on the gpu pool (concurrency 1): queued runs train one after the other on a
worker, `atelier runs` shows queued / running / finished, `atelier runs cancel` cancels a queued run
(never starts) or a running one (stopped, checkpoint kept, resumable); a model slot's lock in the
database keeps a second night off the slot."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from store.slot_locks import SlotBusy, slot_lock
from tests.deployments import PULL_FROM_CHECKOUT
from tests.training.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_a_slot_lock_refuses_a_second_holder_waits_for_a_release_and_takes_over_a_dead_one(store):
    with slot_lock(store, "subject", "elsewhere:1 (flow run a)"):
        with pytest.raises(SlotBusy, match=r"slot 'subject' is held by elsewhere:1 \(flow run a\)"):
            with slot_lock(store, "subject", "elsewhere:2"):
                pass
    holding = threading.Event()

    def hold_briefly():
        with slot_lock(store, "subject", "elsewhere:3"):
            holding.set()
            time.sleep(1.5)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    holding.wait(10)
    started = time.monotonic()
    with slot_lock(store, "subject", "elsewhere:4", wait_s=60, poll_s=0.2):
        assert time.monotonic() - started >= 1.0  # waited for the first to let go
    thread.join()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with slot_lock(store, "subject", f"{socket.gethostname()}:{dead.pid}"):
        pass  # (released normally; now leave one behind as a killed process would)
    from store.models import SlotLock

    with store.session() as session:
        session.add(SlotLock(slot="subject", holder=f"{socket.gethostname()}:{dead.pid}"))
    with slot_lock(store, "subject", "elsewhere:5"):  # its holder is gone from this host: taken over
        pass


def test_a_night_refuses_while_another_holds_the_slot(atelier_env, tmp_path):
    from flows.nightly import NightlyConfig, NightlyFailed, run_nightly
    from store.db import open_store

    store = open_store()
    config = NightlyConfig(dataset="subject", sources=[str(tmp_path)], slot="subject")
    with slot_lock(store, "subject", "elsewhere:7 (flow run first-night)"):
        with pytest.raises(NightlyFailed) as failure:
            run_nightly(config)
    assert failure.value.stage == "lock" and "held by elsewhere:7" in failure.value.reason
    with store.session() as session:
        from store.models import Dataset

        assert session.query(Dataset).count() == 0  # refused before it ingested anything


@pytest.fixture
def committed(atelier_env, photos, tmp_path, tiny_sd_dir, monkeypatch):
    from flows.ingest import ingest
    from store.datasets import get_or_create_dataset
    from store.db import Store
    from store.versions import commit_version

    models = tmp_path / "models"
    shutil.copytree(tiny_sd_dir, models / "stable-diffusion-v1-5")
    monkeypatch.setenv("ATELIER_MODELS", str(models))
    sources = tmp_path / "src"
    sources.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg"):
        shutil.copy(photos / name, sources / name)
    store = Store()
    with store.session() as session:
        get_or_create_dataset(session, "dogs", identifier="sks", class_word="dog")
    ingest(store, [sources], "dogs")
    commit_version(store, "dogs", "first")
    yield store
    store.dispose()


def _runs(*args) -> dict:
    result = runner.invoke(app, ["runs", *args, "--json"])
    assert result.exit_code == 0, result.output
    return {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}


@pytest.mark.slow
def test_queued_runs_train_one_after_the_other_and_a_cancelled_one_never_starts(committed, prefect_harness, tmp_path,
                                                                                monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.deploy import _ensure_pools

    pool, name = "gpu-queue-test", "train-queue-test"

    async def deployment():
        await _ensure_pools([{"name": pool, "type": "process", "concurrency_limit": 1}])
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("train")
            await client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool,
                                           entrypoint="flows/train.py:train_flow", pull_steps=PULL_FROM_CHECKOUT)

    asyncio.run(deployment())
    monkeypatch.setenv("ATELIER_TRAIN_DEPLOYMENT", f"train/{name}")
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump(tiny_config("sd15", max_train_steps=2, rank=2)))
    queued = []
    for _ in range(3):
        result = runner.invoke(app, ["train", "dogs@1", "--config", str(preset), "--queue", "--json"])
        assert result.exit_code == 0, result.output
        queued.append(json.loads(result.stdout)["run_id"])
    cancelled = runner.invoke(app, ["runs", "cancel", str(queued[2]), "--json"])
    assert json.loads(cancelled.stdout) == {"run_id": queued[2], "was": "queued", "status": "cancelled"}
    states = _runs("dogs")
    assert [states[r]["state"] for r in queued] == ["queued", "queued", "finished"]

    store = committed
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ATELIER_HOME": str(tmp_path / "gpu-worker"),
           "ATELIER_DATABASE_URL": store.settings.database_url, "ATELIER_BLOBS": store.settings.blobs_url,
           "PREFECT_WORKER_QUERY_SECONDS": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    seen_running = set()
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            states = _runs()
            running = [r for r in queued[:2] if states[r]["state"] == "running"]
            assert len(running) <= 1, states  # the pool's limit: one at a time
            seen_running.update(running)
            if all(states[r]["state"] == "finished" for r in queued[:2]):
                break
            time.sleep(1)
        else:
            pytest.fail("the queued runs did not finish in 15 minutes")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        output = worker.communicate(timeout=60)[0]
    assert all(states[r]["status"] == "succeeded" for r in queued[:2]), (states, output[-3000:])
    first, second = sorted((states[r] for r in queued[:2]), key=lambda r: r["started_at"])
    assert first["finished_at"] <= second["started_at"]  # one after the other
    assert states[queued[2]]["status"] == "cancelled" and states[queued[2]]["started_at"] is None
    from store.models import TrainingRun

    with store.session() as session:  # exported and trained in the worker's own home
        assert session.get(TrainingRun, queued[0]).output_dir.startswith(str(tmp_path / "gpu-worker"))
