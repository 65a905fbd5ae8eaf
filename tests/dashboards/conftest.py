"""Dashboard fixtures: a seeded store (SQLite and PostgreSQL), the app, and logged-in clients."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from dashboards.app import create_app
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
