"""Where Atelier keeps its state, read from the environment.

ATELIER_HOME          state folder (default ./.atelier): atelier.db, blobs/, models/, cache/
ATELIER_DATABASE_URL  SQLAlchemy URL; default sqlite:///$ATELIER_HOME/atelier.db
ATELIER_BLOBS         fsspec URL or folder of the blob store; default $ATELIER_HOME/blobs
ATELIER_MODELS        model folder; default $ATELIER_HOME/models
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    blobs_url: str
    models_dir: Path

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Settings from the environment (or the given mapping); paths are made absolute."""
    env = os.environ if env is None else env
    home = Path(env.get("ATELIER_HOME", ".atelier")).expanduser().resolve()
    database_url = env.get("ATELIER_DATABASE_URL") or f"sqlite:///{home / 'atelier.db'}"
    blobs_url = env.get("ATELIER_BLOBS") or str(home / "blobs")
    models_dir = Path(env.get("ATELIER_MODELS") or home / "models").expanduser().resolve()
    return Settings(home=home, database_url=database_url, blobs_url=blobs_url, models_dir=models_dir)
