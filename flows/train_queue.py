"""The training queue: `atelier train --queue` records a run and hands it to the `gpu` work pool
(deployment `train/train`; the pool's concurrency limit — one per GPU — makes runs wait their turn);
`atelier runs cancel RUN` cancels a queued run (it never starts) or a running one (its process is
stopped at once, its checkpoints stay for `--resume`).

The database is what every machine shares, so the run's row decides: a worker's train flow skips a
run marked cancelled, and the process training a run marked "cancelling" stops it (flows/train.py).
The Prefect flow run is cancelled too, when its API answers, so the UI says the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from store.db import Store

DEPLOYMENT = "train/train"  # flow/deployment of prefect.yaml; ATELIER_TRAIN_DEPLOYMENT names another


class QueueUnavailable(RuntimeError):
    pass


def queue_run(store: Store, dataset: str, version: int | None, config: dict | str | Path,
              overrides: dict[str, Any] | None = None, deployment: str | None = None) -> tuple[int, str]:
    """Record a queued run and submit it to the deployment's pool; returns (run id, flow run id)."""
    deployment = deployment or os.environ.get("ATELIER_TRAIN_DEPLOYMENT") or DEPLOYMENT
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.train import create_run
    from store.models import TrainingRun

    run_id = create_run(store, dataset, version, config, overrides, stage=False, log=lambda line: None)
    try:
        flow_run = run_deployment(deployment, parameters={"queued_run": run_id}, timeout=0, as_subflow=False,
                                  tags=[f"training-run-{run_id}"])
    except BaseException as error:
        with store.session() as session:  # no row for a run that is in no queue
            session.delete(session.get(TrainingRun, run_id))
        if isinstance(error, ObjectNotFound):
            raise QueueUnavailable(f"no deployment {deployment!r} on the Prefect server: run `atelier deploy` "
                                   "first (it creates the gpu pool and the train deployment)") from None
        raise
    with store.session() as session:
        session.get(TrainingRun, run_id).flow_run_id = str(flow_run.id)
    return run_id, str(flow_run.id)


def cancel_run(store: Store, run_id: int) -> dict[str, Any]:
    """Cancel a queued or running run; returns {run_id, was, status}."""
    from datetime import UTC, datetime

    from store.models import TrainingRun

    with store.session() as session:
        row = session.get(TrainingRun, run_id)
        if row is None:
            raise LookupError(f"no training run {run_id}")
        was = row.status
        if was == "queued":
            row.status, row.finished_at = "cancelled", datetime.now(UTC)
            row.error = "cancelled before it started"
        elif was in ("running", "cancelling"):
            row.status = "cancelling"  # the process training it stops it and marks it cancelled
        else:
            raise ValueError(f"training run {run_id} is {was}: only a queued or running run can be cancelled")
        flow_run_id = row.flow_run_id
    if was == "queued" and flow_run_id:
        _cancel_flow_run(flow_run_id)
    return {"run_id": run_id, "was": was, "status": "cancelled" if was == "queued" else "cancelling"}


def _cancel_flow_run(flow_run_id: str) -> None:
    """Best effort: the row already says cancelled, and the worker's flow checks the row."""
    from uuid import UUID

    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(flow_run_id), Cancelled(message="cancelled with atelier runs cancel"),
                                      force=True)
    except Exception:  # noqa: BLE001  (no API here: the row decides)
        pass
