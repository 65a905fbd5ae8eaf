"""Shared fixtures: a fresh ATELIER_HOME, a store on SQLite or PostgreSQL, real photos, Prefect.

PostgreSQL: a throwaway cluster on loopback is started once per test session from Debian's
binaries (make test installs them), and every test gets its own database in it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
PHOTOS = FIXTURES / "photos"


@pytest.fixture(scope="session")
def photos() -> Path:
    """The real photos (see tests/fixtures/LICENSES.md)."""
    return PHOTOS


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the whole session (starting one costs seconds)."""
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    # set Prefect's log handlers up on the real stderr now, not on a CliRunner stream closed later
    setup_logging()
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres_server():
    """URL prefix of a throwaway PostgreSQL cluster (or ATELIER_TEST_PG_URL if set)."""
    if url := os.environ.get("ATELIER_TEST_PG_URL"):
        yield url.rstrip("/")
        return
    from tests.postgres_cluster import PG_BIN, throwaway_postgres

    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN}: run `make test`, which installs them")
    with throwaway_postgres() as url:
        yield url


def new_pg_database(server_url: str) -> str:
    """Create an empty database in the throwaway cluster and return its URL."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{server_url}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh database URL: SQLite in tmp_path, or a new database in the PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'atelier.db'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def atelier_env(tmp_path, monkeypatch):
    """A fresh ATELIER_HOME (SQLite) set in the environment; returns the home folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("ATELIER_HOME", str(home))
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    monkeypatch.delenv("ATELIER_BLOBS", raising=False)
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    yield home
    stop_local_prefect(home)


def stop_local_prefect(home: Path) -> None:
    """A command run without the harness may have started this home's Prefect server: never leave it."""
    if (home / "prefect-server.json").exists():
        from flows.prefect_server import stop_server

        stop_server(home)


@pytest.fixture
def store(db_url, tmp_path, monkeypatch):
    """A migrated Store on SQLite and on PostgreSQL, with its home in tmp_path."""
    from store.db import Store
    from store.settings import load_settings

    home = tmp_path / "home"
    monkeypatch.setenv("ATELIER_HOME", str(home))
    monkeypatch.setenv("ATELIER_DATABASE_URL", db_url)
    monkeypatch.delenv("ATELIER_BLOBS", raising=False)
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    instance = Store(load_settings())
    yield instance
    instance.dispose()
    stop_local_prefect(home)


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3-protocol server (moto's standalone server) on 127.0.0.1 for the whole session."""
    from tests.s3_server import moto_s3

    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_blobs(atelier_env, s3_endpoint, monkeypatch) -> str:
    """ATELIER_BLOBS=s3://<fresh bucket>/blobs on the test S3 server, credentials in the AWS variables."""
    from tests.s3_server import TEST_CREDENTIALS, make_bucket

    bucket = f"atelier-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, bucket)
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("ATELIER_BLOBS", f"s3://{bucket}/blobs")
    return f"s3://{bucket}/blobs"
