"""Dashboard fixtures: a seeded store (SQLite and PostgreSQL), the app, and logged-in clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi.testclient import TestClient

from dashboards.app import create_app
from dashboards.cli import proxy_options
from store.db import Store
from store.settings import load_settings
from tests.dashboards.seed import PASSWORD, seed


@pytest.fixture
def seeded(store, photos):
    """(store, {photo name: member id}) with users viewer, cur1, cur2 (curators) and boss (admin)."""
    return store, seed(store, photos)


@pytest.fixture
def app(seeded):
    return create_app(seeded[0])


@pytest.fixture
def client(app):
    """client(name) → a TestClient logged in as `name` (None: anonymous), sending its CSRF token."""
    made = []

    def login(name: str | None = None) -> TestClient:
        c = TestClient(app)
        made.append(c)
        if name:
            r = c.post("/api/login", json={"name": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        return c

    yield login
    for c in made:
        c.close()


# ---- browser tests: one Chromium per test module (the machine is shared) ----
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@contextmanager
def served(app) -> Iterator[int]:
    """`app` under uvicorn, as `atelier serve` runs it, on a free localhost port (yields the port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **proxy_options("")))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        web.should_exit = True
        thread.join(10)


@pytest.fixture
def server(tmp_path, monkeypatch, photos):
    """(base URL, store, member ids): the seeded app served by uvicorn on a free localhost port."""
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    monkeypatch.delenv("ATELIER_BLOBS", raising=False)
    store = Store(load_settings())
    ids = seed(store, photos)
    with served(create_app(store)) as port:
        yield f"http://127.0.0.1:{port}", store, ids
    store.dispose()
