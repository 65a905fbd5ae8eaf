"""Datasets: lookup, creation, and the per-dataset write lock."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Dataset


class DatasetNotFound(LookupError):
    pass


def insert_ignoring_conflicts(session: Session, model, values: dict, keys: list[str]) -> None:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL (safe under concurrent writers)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=keys))


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        known = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        raise DatasetNotFound(f"no dataset named {name!r} (datasets: {', '.join(known) or 'none yet'})")
    return dataset


def get_or_create_dataset(session: Session, name: str, **settings) -> Dataset:
    """The dataset called `name`, created with `settings` (identifier, class_word, repeats) if new."""
    if not name or "/" in name or "@" in name or name != name.strip():
        raise ValueError(f"bad dataset name {name!r}: no '/', '@' or surrounding spaces")
    insert_ignoring_conflicts(session, Dataset, {"name": name, "repeats": 1}, ["name"])
    dataset = get_dataset(session, name)
    for key, value in settings.items():
        if value is not None:
            setattr(dataset, key, value)
    return dataset


def lock_dataset(session: Session, dataset_id: int) -> None:
    """Serialise writers of one dataset until the transaction ends (row lock on PostgreSQL,
    the database write lock on SQLite): two ingests at once cannot both add a near duplicate."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(repeats=Dataset.repeats))


def parse_version_ref(ref: str) -> tuple[str, int | None]:
    """"name@3" → ("name", 3); "name" or "name@latest" → ("name", None)."""
    name, _, number = ref.partition("@")
    if not number or number == "latest":
        return name, None
    if not number.isdigit():
        raise ValueError(f"bad version reference {ref!r}: expected NAME@N")
    return name, int(number)
