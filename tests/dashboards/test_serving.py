"""How the dashboard serves many curators: requests at once per worker, connections closed after a
number of requests so that browsers spread over the workers (bench/dashboard.py --concurrency
measures the effect; these tests pin the behaviour)."""

from __future__ import annotations

import http.client

import anyio.to_thread
from fastapi.testclient import TestClient

from dashboards.app import app_from_environment, create_app
from tests.dashboards.conftest import served


def test_a_connection_is_closed_after_keepalive_requests_and_the_browser_reconnects(seeded):
    with served(create_app(seeded[0], keepalive_requests=3)) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        closes, sockets = [], []
        for _ in range(7):
            connection.request("GET", "/login")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            closes.append(response.getheader("connection"))
            sockets.append(connection.sock.getsockname() if connection.sock else None)
        connection.close()
    assert closes == [None, None, "close", None, None, "close", None]
    assert sockets[2] is None and sockets[5] is None  # the server ended those connections
    assert sockets[0] == sockets[1] and sockets[3] == sockets[4] and sockets[0] != sockets[3]


def test_connections_stay_open_with_one_worker(seeded):
    with TestClient(create_app(seeded[0])) as client:
        assert all(client.get("/login").headers.get("connection") is None for _ in range(20))


def test_several_workers_close_connections_after_8_requests_unless_told_otherwise(seeded, monkeypatch):
    monkeypatch.setenv("ATELIER_DATABASE_URL", seeded[0].settings.database_url)
    with TestClient(app_from_environment()) as client:
        assert [client.get("/login").headers.get("connection") for _ in range(8)][-2:] == [None, "close"]
    monkeypatch.setenv("ATELIER_KEEPALIVE_REQUESTS", "0")
    with TestClient(app_from_environment()) as client:
        assert all(client.get("/login").headers.get("connection") is None for _ in range(20))


def _tokens(client: TestClient) -> float:
    return client.portal.call(lambda: _limiter_tokens())


async def _limiter_tokens() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def test_requests_served_at_once_per_worker(seeded, monkeypatch):
    monkeypatch.delenv("ATELIER_DASHBOARD_THREADS", raising=False)
    with TestClient(create_app(seeded[0])) as client:
        assert _tokens(client) == 2  # not anyio's 40
    with TestClient(create_app(seeded[0], threads=5)) as client:
        assert _tokens(client) == 5
    monkeypatch.setenv("ATELIER_DASHBOARD_THREADS", "3")  # what `atelier serve --threads 3` sets for its workers
    with TestClient(create_app(seeded[0])) as client:
        assert _tokens(client) == 3
        assert client.get("/login").status_code == 200
