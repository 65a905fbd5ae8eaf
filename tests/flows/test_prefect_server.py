"""One local Prefect server per home: started on first use, reused, restarted when dead, stopped on demand;
PREFECT_API_URL used as-is, and a dead one fails the command at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.prefect_server import read_state, stop_server

ROOT = Path(__file__).resolve().parents[2]


def atelier(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def alive(pid: int) -> bool:
    """Running (a zombie left for an init that does not reap, as in some containers, is not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def home_env(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "ATELIER_"))}
    env.update(ATELIER_HOME=str(home), PREFECT_HOME=str(tmp_path / "no-profile"), ATELIER_PREFECT_PORT="0")
    yield home, env
    stop_server(home)  # never leave a server behind, whatever the test did


def test_a_dead_prefect_api_url_fails_at_once_naming_it(home_env, photos):
    home, env = home_env
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # the discard port: nothing answers
    started = time.monotonic()
    result = atelier(env, "ingest", str(photos), "--dataset", "d")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "http://127.0.0.1:9/api" in result.stderr and "PREFECT_API_URL" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60
    assert read_state(home) is None  # no local server was started instead


@pytest.mark.slow
def test_one_server_is_started_reused_restarted_when_dead_and_stopped(home_env, photos):
    home, env = home_env
    assert json.loads(atelier(env, "server", "status", "--json").stdout)["running"] is False
    first = atelier(env, "ingest", str(photos), "--dataset", "d", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    added = json.loads(first.stdout)["added"]
    assert added >= 7 and "started the Prefect server" in first.stderr
    assert "temporary server" not in first.stderr
    info = read_state(home)
    assert info and info.url.startswith("http://127.0.0.1:")

    again = atelier(env, "ingest", str(photos), "--dataset", "d", "--json")  # reuses it
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] == added
    assert "started the Prefect server" not in again.stderr and read_state(home).pid == info.pid
    assert f"View at {info.ui_url}/runs/flow-run/" in again.stderr  # the run is in this server's UI

    os.killpg(info.pid, signal.SIGKILL)  # the server dies
    restarted = atelier(env, "server", "start", "--json")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    status = json.loads(restarted.stdout)
    assert status["started"] is True and status["pid"] != info.pid

    stopped = json.loads(atelier(env, "server", "stop", "--json").stdout)
    assert stopped == {"stopped": True, "pid": status["pid"]}
    assert read_state(home) is None and not alive(status["pid"])
