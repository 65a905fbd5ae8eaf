"""Many curators at once: p50/p95 of the grid page and the members API with N concurrent clients,
against `atelier serve --workers W` as a curator runs it (real uvicorn processes, real HTTP).

Called by `bench/dashboard.py --concurrency 20 [--workers 1,2,4] [--images 1500] [--db both]`.
Latency is measured by the clients (wall time of each request, queueing included), which is what a
curator waits for; the seeded store is the same as bench/dashboard.py's.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = {"grid page": "/d/bench?page={page}", "members API": "/api/datasets/bench/members?page={page}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, url: str, workers: int) -> tuple[subprocess.Popen, str]:
    """`atelier serve --workers W` over the bench store; returns (process, base URL) once it answers."""
    port = free_port()
    env = {**os.environ, "ATELIER_HOME": str(home), "ATELIER_DATABASE_URL": url,
           "ATELIER_BLOBS": str(home / "blobs"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", "from flows.cli import app; app()", "serve", "--port", str(port),
                                "--workers", str(workers)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/login", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"atelier serve exited with {process.returncode}")
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("atelier serve did not answer within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def logged_in(base: str, password: str) -> httpx.Client:
    # one at a time: the login throttle counts parallel tries of one account before checking them
    client = httpx.Client(base_url=base, timeout=60)
    client.post("/api/login", json={"name": "curator", "password": password}).raise_for_status()
    return client


def client_run(client: httpx.Client, requests: int, pages: int, seed: int, out: dict[str, list[float]]) -> None:
    names = list(ENDPOINTS)
    for n in range(requests):
        name = names[(n + seed) % len(names)]
        url = ENDPOINTS[name].format(page=1 + (n * 7 + seed) % pages)
        began = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, (url, response.status_code, response.text[:200])
        out[name].append(elapsed)


def measure(base: str, password: str, concurrency: int, requests: int, pages: int) -> dict[str, tuple[float, float]]:
    """{endpoint: (p50, p95) in ms} with `concurrency` clients each making `requests` requests at once."""
    out: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    clients = [logged_in(base, password) for _ in range(concurrency)]
    errors: list[BaseException] = []
    try:
        for c in clients:  # warm-up (templates, caches, every worker's pool) before the clock runs
            client_run(c, len(ENDPOINTS), pages, 0, {n: [] for n in ENDPOINTS})

        def one(i: int) -> None:
            try:
                client_run(clients[i], requests, pages, i, out)
            except BaseException as error:  # noqa: BLE001 - reported after the join
                errors.append(error)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in clients:
            c.close()
    if errors:
        raise errors[0]
    return {name: (statistics.median(v), pct(v, 0.95)) for name, v in out.items()}


def run_concurrency(home: Path, url: str, label: str, password: str, concurrency: int, workers: list[int],
                    requests: int, pages: int) -> list[tuple]:
    rows = []
    for w in workers:
        process, base = start_server(home, url, w)
        try:
            alone = measure(base, password, 1, requests, pages)  # one client: the service time itself
            load = os.getloadavg()[0]
            found = measure(base, password, concurrency, requests, pages)
        finally:
            stop_server(process)
        for name, (p50, p95) in found.items():
            rows.append((label, w, name, p50, p95, alone[name][0], load))
            print(f"[{label}] workers {w}  {name:12} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                  f"({concurrency} clients × {requests} requests; one client alone p50 {alone[name][0]:.1f} ms; "
                  f"load average {load:.1f} on {os.cpu_count()} CPUs)", flush=True)
    return rows
