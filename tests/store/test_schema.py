"""The schema is created and upgraded by Alembic, in place, on both databases."""

from sqlalchemy import inspect, text

from store.db import Store, upgrade
from store.models import Base


def test_migrations_create_every_table(store):
    tables = set(inspect(store.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_upgrade_keeps_existing_rows(store):
    with store.session() as session:
        session.execute(text("INSERT INTO datasets (name, repeats, created_at) VALUES ('kept', 1, CURRENT_TIMESTAMP)"))
    upgrade(store.engine)  # a second upgrade is a no-op, never a re-create
    again = Store(store.settings)
    with again.session() as session:
        assert session.execute(text("SELECT name FROM datasets")).scalar_one() == "kept"
    again.dispose()


def test_sqlite_runs_in_wal_mode(atelier_env):
    instance = Store()
    with instance.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    assert (atelier_env / "atelier.db").exists()
    instance.dispose()
