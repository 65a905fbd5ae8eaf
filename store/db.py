"""Engine, sessions and schema upgrades (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from store.settings import Settings, load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL mode, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


_UPGRADE_LOCK = threading.Lock()  # Alembic keeps global state: one upgrade at a time per process


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest migration's revision, read from the files (Alembic itself costs a second to import)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text()
        if found := re.search(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE):
            revisions.add(found.group(1))
        if found := re.search(r"^down_revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE):
            parents.add(found.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def at_head(engine: Engine) -> bool:
    """The database's schema is the newest (one query): nothing for Alembic to do."""
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:  # a new database: no version table yet
        return False
    return head_revision() is not None and current == [head_revision()]


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision in place (never drops data)."""
    if at_head(engine):  # every command opens the store: the usual case costs a query, not Alembic
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _UPGRADE_LOCK, engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """One database + blob store pair; what the CLI, flows and dashboard share."""

    def __init__(self, settings: Settings | None = None, *, migrate: bool = True):
        from store.blobs import BlobStore

        self.settings = settings or load_settings()
        self.blobs = BlobStore(self.settings.blobs_url)
        self.blobs.check()  # an unreachable or refused blob store fails here, before anything is written
        self.engine = make_engine(self.settings.database_url)
        if migrate:
            upgrade(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads on PostgreSQL in autocommit: no BEGIN and COMMIT round trips around a request that only
        # reads. Under READ COMMITTED (the default) each statement sees its own snapshot in a transaction
        # too, so nothing is lost. pysqlite never opens a transaction for a SELECT: the same as session().
        readers = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                   if self.engine.dialect.name == "postgresql" else self.engine)
        self.readers = sessionmaker(readers, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for requests that only read (the dashboard's hot paths): never commits."""
        with self.readers() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


@lru_cache(maxsize=4)
def _cached_store(settings: Settings) -> Store:
    return Store(settings)


def open_store(settings: Settings | None = None) -> Store:
    """The store for these settings (default: from the environment), migrated, cached per process."""
    return _cached_store(settings or load_settings())
