"""A flow run that a worker took from a deployment must use the shared database: a worker started
without `ATELIER_DATABASE_URL` on a machine with no store of its own would otherwise create an
empty SQLite store and fail later, confusingly, or write where no one looks."""

from __future__ import annotations

import os
import socket


class WorkerStoreMissing(RuntimeError):
    pass


def check_worker_store() -> None:
    """Fail at once, in one line, when this deployment run has no database URL and no store of its own."""
    from prefect.runtime import deployment

    from store.settings import load_settings

    if deployment.id is None or os.environ.get("ATELIER_DATABASE_URL"):
        return
    settings = load_settings()
    sqlite = settings.home / "atelier.db"
    if not sqlite.exists():
        raise WorkerStoreMissing(
            f"worker on {socket.gethostname()}: ATELIER_DATABASE_URL is not set and {sqlite} does not exist: "
            "start the worker with ATELIER_DATABASE_URL (and ATELIER_BLOBS) of the shared store")
