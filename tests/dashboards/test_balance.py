"""The workers of `atelier serve --workers N` share a table of their requests in flight, and a worker
clearly busier than the others' average ends the connection it answers on (dashboards.balance);
served processes freeze what start-up built out of the collector's reach."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dashboards.app import app_from_environment, create_app
from dashboards.balance import ENV, FREE, MARGIN, WorkerLoads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def table():
    memory = WorkerLoads.create()
    attached: list[WorkerLoads] = []

    def attach() -> WorkerLoads:
        attached.append(WorkerLoads.attach(memory.name))
        return attached[-1]

    yield memory, attach
    for loads in attached:
        loads.close()
    memory.close()
    memory.unlink()


def _slots(memory) -> list[tuple[int, int]]:
    view = memory.buf.cast("q")
    try:
        return [(view[2 * i], view[2 * i + 1]) for i in range(4)]
    finally:
        view.release()


def test_each_worker_claims_its_own_slot_and_a_dead_workers_slot_is_reused(table):
    memory, attach = table
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    view = memory.buf.cast("q")
    view[0], view[1] = dead.pid, 7  # a worker that died with 7 requests in flight
    view.release()
    first, second = attach(), attach()
    assert (first.slot, second.slot) == (0, 1)  # the dead one's slot first, then the next never used
    assert _slots(memory)[:3] == [(os.getpid(), 0), (os.getpid(), 0), (0, 0)]
    first.close()
    assert _slots(memory)[0] == (FREE, 0)
    assert attach().slot == 0  # a slot given up is claimed again
    assert WorkerLoads.attach(None) is None and WorkerLoads.attach("") is None  # a single worker: no table


def test_a_worker_is_busier_only_clearly_above_the_average(table):
    _, attach = table
    a, b = attach(), attach()
    assert not a.busier() and not b.busier()
    for _ in range(2 * MARGIN):  # a: 4, b: 0, average 2: not above 2 + MARGIN
        a.begin()
    assert not a.busier()
    a.begin()  # 5 against 2.5 + 2
    assert a.busier() and not b.busier()
    c = attach()  # a third, idle worker lowers the average
    assert c.slot == 2 and a.busier()
    for _ in range(5):
        b.begin()
        c.begin()
    assert not a.busier()  # all equally busy
    c.close()  # a slot given up does not count
    for _ in range(5):
        b.end()
    assert a.busier() and not b.busier()
    assert attach().slot == 2  # the slot c gave up


def test_a_busier_worker_closes_the_connection_and_counts_its_requests(seeded, table):
    _, attach = table
    mine, other = attach(), attach()
    with TestClient(create_app(seeded[0], loads=mine)) as client:
        assert client.get("/login").headers.get("connection") is None
        assert _in_flight(mine) == 0  # the request was counted and uncounted
        for _ in range(MARGIN + 2):  # requests in flight in this worker, none in the other
            mine.begin()
        response = client.get("/login")
        assert response.status_code == 200 and response.headers.get("connection") == "close"
        for _ in range(MARGIN + 2):
            other.begin()  # now the other worker is as busy
        assert client.get("/login").headers.get("connection") is None
        assert client.get("/no-such-page").status_code == 404
        assert _in_flight(mine) == MARGIN + 2  # failures are uncounted too


def _in_flight(loads: WorkerLoads) -> int:
    return loads.table[2 * loads.slot + 1]


def test_served_workers_freeze_what_start_up_built_and_tests_do_not(seeded, monkeypatch):
    monkeypatch.setenv("ATELIER_DATABASE_URL", seeded[0].settings.database_url)
    monkeypatch.setenv("ATELIER_HOME", str(seeded[0].settings.home))
    monkeypatch.delenv(ENV, raising=False)
    before = gc.get_freeze_count()
    with TestClient(create_app(seeded[0])):
        assert gc.get_freeze_count() == before  # a test process builds many apps: nothing frozen
    try:
        with TestClient(app_from_environment()) as client:  # what each served worker runs
            assert gc.get_freeze_count() > before + 10_000
            assert client.get("/login").status_code == 200
    finally:
        gc.unfreeze()
    monkeypatch.setenv("ATELIER_GC_FREEZE", "0")
    with TestClient(app_from_environment()):
        assert gc.get_freeze_count() == 0


def _shm() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


@pytest.mark.slow
def test_atelier_serve_with_two_workers_shares_a_load_table_and_removes_it(seeded):
    store = seeded[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ATELIER_HOME": str(store.settings.home), "ATELIER_DATABASE_URL": store.settings.database_url}
    env.pop(ENV, None)
    before = _shm()
    server = subprocess.Popen([sys.executable, "-c", "from flows.cli import app; app()", "serve", "--port", str(port),
                               "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(pids) < 2:
            new = _shm() - before
            if len(new) == 1:
                with open(f"/dev/shm/{next(iter(new))}", "rb") as f:
                    raw = memoryview(f.read()).cast("q")
                pids = [raw[2 * i] for i in range(4) if raw[2 * i] > 0]
            time.sleep(0.3)
        assert len(pids) == 2, server.stderr.read1().decode() if server.poll() is not None else "no table"
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.pid)], capture_output=True,
                                  text=True, check=True).stdout.split()
        assert len(set(pids)) == 2 and set(pids) <= {int(p) for p in children}  # the two worker processes
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert _shm() - before == set()  # the serving command removed its table
