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


SERVERS = {
    # what a curator runs: httptools + uvloop (uvicorn[standard]), 2 request threads per worker,
    # connections closed after 8 requests and when a worker is busier than the others (dashboards.balance),
    # the collector frozen after start-up
    "atelier": (lambda port, workers: [sys.executable, "-c", "from flows.cli import app; app()", "serve",
                                       "--port", str(port), "--workers", str(workers)], {}),
    # the baseline, as the issue measured it: the same app under uvicorn's pure-Python h11 parser and
    # asyncio's loop, anyio's 40 threads, connections kept where they were accepted, no load table
    # among the workers, the collector not frozen
    "before": (lambda port, workers: [sys.executable, "-m", "uvicorn", "dashboards.app:app_from_environment",
                                      "--factory", "--port", str(port), "--workers", str(workers), "--http", "h11",
                                      "--loop", "asyncio", "--log-level", "warning"],
               {"ATELIER_DASHBOARD_THREADS": "40", "ATELIER_KEEPALIVE_REQUESTS": "0",
                "ATELIER_GC_FREEZE": "0"}),
}


def start_server(home: Path, url: str, workers: int, server: str = "atelier") -> tuple[subprocess.Popen, str]:
    """`atelier serve --workers W` (or the baseline) over the bench store; (process, base URL) once it answers."""
    port = free_port()
    argv, overrides = SERVERS[server]
    env = {**os.environ, "ATELIER_HOME": str(home), "ATELIER_DATABASE_URL": url,
           "ATELIER_BLOBS": str(home / "blobs"), "OMP_NUM_THREADS": "1", **overrides}
    process = subprocess.Popen(argv(port, workers), cwd=ROOT, env=env,
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


def measure(base: str, password: str, concurrency: int, requests: int, pages: int) -> dict[str, tuple]:
    """{endpoint: (p50, p95, mean) in ms} with `concurrency` clients each making `requests` requests at once,
    and "client cpu": this process's CPU ms per request (the clients share the server's cores)."""
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
        cpu = time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu = (time.process_time() - cpu) * 1000 / (concurrency * requests)
    finally:
        for c in clients:
            c.close()
    if errors:
        raise errors[0]
    return {**{name: (statistics.median(v), pct(v, 0.95), statistics.fmean(v)) for name, v in out.items()},
            "client cpu": (cpu, cpu, cpu)}


def run_concurrency(home: Path, url: str, label: str, password: str, concurrency: int, workers: list[int],
                    requests: int, pages: int, servers: list[str] = ("atelier",)) -> list[tuple]:
    rows = []
    for server in servers:
        for w in workers:
            process, base = start_server(home, url, w, server)
            try:
                alone = measure(base, password, 1, requests, pages)  # one client: the service time itself
                load = os.getloadavg()[0]
                found = measure(base, password, concurrency, requests, pages)
            finally:
                stop_server(process)
            client_cpu = found.pop("client cpu")[0]
            for name, (p50, p95, mean) in found.items():
                rows.append((label, server, w, name, p50, p95, mean, alone[name][0], client_cpu))
                print(f"[{label}] {server:7} workers {w}  {name:12} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
                      f"mean {mean:7.1f} ms  ({concurrency} clients × {requests} requests; one client alone p50 "
                      f"{alone[name][0]:.1f} ms; client CPU {client_cpu:.1f} ms/request; load average {load:.1f} "
                      f"on {os.cpu_count()} CPUs)", flush=True)
    return rows
