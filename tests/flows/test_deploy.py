"""prefect.yaml's deployments register on a real `prefect server`, and a worker runs one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.ingest import ingest
from store.db import Store
from store.settings import load_settings

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefect_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("prefect server did not become healthy in 90 s")
    yield url, env
    server.terminate()
    server.wait(timeout=30)


def test_deploy_registers_pools_and_deployments_and_a_worker_runs_prepare(prefect_server, tmp_path, photos):
    url, env = prefect_server
    home = tmp_path / "home"
    store = Store(load_settings({"ATELIER_HOME": str(home)}))
    ingest(store, [photos], "demo")
    env = {**env, "PREFECT_API_URL": url, "ATELIER_HOME": str(home)}
    deployed = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    result = json.loads(deployed.stdout)
    pools = {p["name"]: p for p in result["pools"]}
    assert pools["gpu"]["concurrency_limit"] == 1 and pools["cpu"]["type"] == "process"
    deployments = {d["name"]: d for d in result["deployments"]}
    assert deployments["prepare"]["work_pool"] == "cpu" and deployments["prepare"]["cron"] is None
    assert deployments["nightly-prepare"]["cron"] == "0 1 * * *"
    assert deployments["train"]["work_pool"] == "gpu"
    assert deployments["nightly-retrain"]["cron"] == "0 2 * * *" and deployments["nightly-retrain"]["work_pool"] == "gpu"

    started = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "prepare/prepare",
                              "-p", "dataset=demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu", "--run-once"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "Finished in state Completed()" in worker.stdout + worker.stderr, (worker.stdout + worker.stderr)[-3000:]
    with store.session() as session:
        from sqlalchemy import func, select

        from store.models import Score

        assert session.scalar(select(func.count()).select_from(Score).where(Score.name == "sharpness")) == 10
