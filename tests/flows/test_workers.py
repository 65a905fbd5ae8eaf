"""Two `prefect worker` processes on the `cpu` pool that share nothing but PostgreSQL and S3 (each its
own empty ATELIER_HOME): a prepare run with `task_runner: pool` spreads its batches over both and
ends with the tables of a one-worker run; a worker killed mid-run loses nothing (its batch goes to
the other), and a re-run finds everything done. A batch needs no database (its blob store is a
parameter), but a whole prepare run taken by a worker without ATELIER_DATABASE_URL fails at once."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import new_pg_database
from tests.deployments import PULL_FROM_CHECKOUT
from tests.flows.test_prepare_kill import _snapshot
from tests.s3_server import TEST_CREDENTIALS, list_keys, make_bucket

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
POOL, DEPLOYMENT = "cpu", "prepare-batch"


def _crops(folder: Path, photos: Path) -> None:
    """Eight small real-photo crops (two batches of four per step) (under 512 px, so every one is upscaled, then scored)."""
    folder.mkdir()
    image = Image.open(photos / "Elarun_2560x1600.png").convert("RGB")
    for i in range(8):
        x, y = (i % 4) * 640, (i // 4) * 800
        image.crop((x, y, x + 640, y + 800)).resize((160, 200)).save(folder / f"crop-{i}.png")


def _deploy_batch_flow() -> None:
    from prefect.client.orchestration import get_client

    from flows.deploy import _ensure_pools

    async def deploy():
        await _ensure_pools([{"name": POOL, "type": "process"}])
        async with get_client() as client:
            for flow_name, entrypoint in ((DEPLOYMENT, "flows/prepare_pool.py:prepare_batch_flow"),
                                          ("prepare", "flows/prepare.py:prepare_flow")):
                flow_id = await client.create_flow_from_name(flow_name)
                await client.create_deployment(flow_id=flow_id, name=flow_name, work_pool_name=POOL,
                                               entrypoint=entrypoint, pull_steps=PULL_FROM_CHECKOUT)

    asyncio.run(deploy())


class Worker:
    """`prefect worker start --pool cpu --limit 1` with a home of its own."""

    def __init__(self, name: str, home: Path, env: dict):
        self.name, self.home = name, home
        home.mkdir()
        self.log = open(home.parent / f"{name}.log", "w")  # noqa: SIM115  (open while the worker runs)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"],
            cwd=ROOT, env={**env, "ATELIER_HOME": str(home), "ATELIER_WORKER_NAME": name}, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
        found, frontier = [], [self.process.pid]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier]
            found += children
            frontier = children
        return found

    def output(self) -> str:
        self.log.flush()
        return (self.home.parent / f"{self.name}.log").read_text(errors="replace")

    def kill(self) -> None:
        """The machine is gone: the worker and the batch it runs (a process of its own session) at once."""
        for pid in [self.process.pid, *self._descendants()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()
        return (self.home.parent / f"{self.name}.log").read_text()[-3000:]


@pytest.fixture
def shared(tmp_path, photos, postgres_server, s3_endpoint, prefect_harness, monkeypatch):
    """What the machines share: the Prefect API, the PostgreSQL cluster and the S3 server."""
    from prefect.settings import PREFECT_API_URL

    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "coordinator"))
    _deploy_batch_flow()
    src = tmp_path / "src"
    _crops(src, photos)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("ATELIER_DATABASE_URL", "ATELIER_BLOBS"):  # a batch gets its blob store as a parameter
        env.pop(name, None)
    workers: list[Worker] = []
    yield {"src": src, "env": env, "workers": workers, "pg": postgres_server, "s3": s3_endpoint}
    logs = {w.name: w.stop() for w in workers}
    print("\n".join(f"--- {name}\n{log}" for name, log in logs.items()))


def _prepare_on_pool(shared: dict, monkeypatch, tmp_path: Path, **pipeline) -> tuple[dict, object, str]:
    """A fresh database and bucket, the crops ingested, a prepare run with task_runner pool."""
    from flows.ingest import ingest
    from flows.prepare import prepare
    from store.db import Store
    from store.settings import load_settings

    bucket = f"atelier-{uuid.uuid4().hex[:12]}"
    make_bucket(shared["s3"], bucket)
    monkeypatch.setenv("ATELIER_DATABASE_URL", new_pg_database(shared["pg"]))
    monkeypatch.setenv("ATELIER_BLOBS", f"s3://{bucket}/blobs")
    for worker in shared["workers"]:
        assert not any(worker.home.iterdir()), f"{worker.name} wrote into its own home"
    store = Store(load_settings())
    ingest(store, [shared["src"]], "crops")
    path = tmp_path / f"pool-{bucket}.yaml"
    path.write_text(yaml.safe_dump({"name": "pool", "task_runner": "pool", "batch_size": 4, **pipeline, "steps": [
        {"step": "upscale", "params": {"target": 512, "fallback": "lanczos"}, "when": "short_side < 512"},
        {"step": "quality"}]}))
    return prepare("crops", str(path)), store, path


def _blobs_match_rows(store, endpoint: str) -> None:
    """Every row has its blob in the bucket and every blob its row (a lost batch left nothing behind)."""
    from store.models import Artifact
    from store.models import Image as ImageRow

    bucket, prefix = store.settings.blobs_url.removeprefix("s3://").split("/", 1)
    keys = set(list_keys(endpoint, bucket, prefix + "/"))
    with store.session() as session:
        rows = {(sha, ext) for model in (ImageRow, Artifact) for sha, ext in session.query(model.sha256, model.ext)}
    assert keys == {f"{prefix}/{sha[:2]}/{sha[2:4]}/{sha}.{ext}" for sha, ext in rows}


def test_two_workers_share_the_batches_and_a_lost_worker_loses_nothing(shared, monkeypatch, tmp_path):
    homes = tmp_path / "machines"
    homes.mkdir()
    first = Worker("worker-a", homes / "a", shared["env"])
    shared["workers"].append(first)
    one, reference, _ = _prepare_on_pool(shared, monkeypatch, tmp_path)
    assert one["workers"] == {"worker-a": 4}  # 8 crops in batches of 4, two steps
    expected = _snapshot(reference)
    assert len(expected["results"]) == 16 and all(r[4] == "done" for r in expected["results"])
    reference.dispose()

    second = Worker("worker-b", homes / "b", shared["env"])
    shared["workers"].append(second)
    two, store, _ = _prepare_on_pool(shared, monkeypatch, tmp_path)
    assert set(two["workers"]) == {"worker-a", "worker-b"}, two["workers"]  # both took batches
    assert sum(two["workers"].values()) == 4
    assert _snapshot(store) == expected
    _blobs_match_rows(store, shared["s3"])
    store.dispose()

    # worker loss: kill worker-b in the middle of a batch; when its heartbeat stops, the batch goes to worker-a
    # (which may be busy and slow to start it: a batch whose run is still Pending has the start-up grace)
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = _prepare_on_pool(shared, monkeypatch, tmp_path, batch_timeout_s=30)
        except BaseException as error:  # noqa: BLE001
            outcome["error"] = error

    seen = len(second.output())
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))  # with the harness's settings
    thread.start()
    deadline = time.monotonic() + 120
    while "heartbeat started" not in second.output()[seen:]:  # worker-b is running a batch of this run
        assert time.monotonic() < deadline and thread.is_alive(), "worker-b never took a batch"
        time.sleep(0.05)
    second.kill()
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    lost, store, pipeline = outcome["summary"]
    assert sum(lost["workers"].values()) == 4
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        given_away = [run for run in client.read_flow_runs() if run.state and run.state.is_cancelled()
                      and run.state.message == "given to another worker"]
    assert len(given_away) == 1  # worker-b's batch, and only it
    assert _snapshot(store) == expected
    _blobs_match_rows(store, shared["s3"])

    from flows.prepare import prepare

    again = prepare("crops", str(pipeline))  # the re-run: everything is cached
    assert [(c["done"], c["cached"]) for c in again["steps"]] == [(0, 8), (0, 8)] and "workers" not in again
    assert _snapshot(store) == expected
    store.dispose()

    # a prepare run on a worker with no ATELIER_DATABASE_URL (and no store in its home) fails at once
    from prefect.deployments import run_deployment

    started = time.monotonic()
    refused = run_deployment("prepare/prepare", parameters={"dataset": "crops"}, timeout=120, as_subflow=False)
    assert refused.state.is_failed(), refused.state
    assert "worker on" in refused.state.message and "ATELIER_DATABASE_URL is not set" in refused.state.message
    assert time.monotonic() - started < 60 and not any(first.home.iterdir())


def test_a_batch_on_a_worker_that_cannot_reach_the_blob_store_fails_at_once_naming_it(monkeypatch):
    from flows.prepare_pool import prepare_batch_flow
    from store.blobs import BlobStoreUnavailable

    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing answers there
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable) as failure:
        prepare_batch_flow.fn("quality", {}, "s3://photos/blobs", [], "key")  # the flow's body, as a worker runs it
    assert "s3://photos/blobs" in str(failure.value) and "http://127.0.0.1:9" in str(failure.value)
    assert len(str(failure.value).splitlines()) == 1 and time.monotonic() - started < 60
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in str(failure.value)
