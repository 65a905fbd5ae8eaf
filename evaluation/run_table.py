"""Training runs side by side (`atelier runs NAME`) and what differs between two (`atelier runs diff A B`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from store.datasets import get_dataset
from store.db import Store
from store.models import Champion, Dataset, DatasetVersion, Evaluation, TrainingRun

KEY_HYPERPARAMETERS = ["method", "rank", "lora_alpha", "learning_rate", "max_train_steps", "train_batch_size", "vae",
                       "resolution", "train_text_encoder", "seed"]
KEY_METRICS = ["dino", "clip_i", "clip_t", "aesthetic", "face_identity", "diversity", "faces_missing"]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _row(session, run: TrainingRun) -> dict[str, Any]:
    version = session.get(DatasetVersion, run.version_id)
    dataset = session.get(Dataset, run.dataset_id)
    evaluation = session.scalar(select(Evaluation).where(Evaluation.run_id == run.id, Evaluation.status == "succeeded")
                                .order_by(Evaluation.id.desc()).limit(1))
    trained = (evaluation.metrics.get("trained") if evaluation else None) or {}
    slots = session.scalars(select(Champion.slot).where(Champion.run_id == run.id)).all()
    return {"run_id": run.id, "dataset": dataset.name, "version": version.number, "status": run.status,
            "state": run_state(run.status),
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "hyperparameters": {k: run.config.get(k) for k in KEY_HYPERPARAMETERS if k in run.config},
            "base_model": run.base_model, "final_loss": (run.metrics or {}).get("final_loss"),
            "evaluation_id": evaluation.id if evaluation else None,
            "metrics": {k: trained[k] for k in KEY_METRICS if k in trained}, "champion_of": list(slots),
            "error": run.error, "created_at": run.created_at.isoformat()}


def run_state(status: str) -> str:
    """queued | running | finished: where a run is in the queue, whatever its outcome."""
    return {"queued": "queued", "running": "running", "cancelling": "running"}.get(status, "finished")


def list_runs(store: Store, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every training run of `dataset` (None: of every dataset), newest first, with its version,
    queue state, hyperparameters and metrics."""
    with store.session() as session:
        query = select(TrainingRun).order_by(TrainingRun.id.desc())
        if dataset is not None:
            query = query.where(TrainingRun.dataset_id == get_dataset(session, dataset).id)
        runs = session.scalars(query).all()
        return [_row(session, run) for run in runs]


def diff_runs(store: Store, a: int, b: int) -> dict[str, Any]:
    """Config keys that differ, the data each trained on (and the version diff), metric deltas."""
    from store.versions import diff_versions

    with store.session() as session:
        runs = [session.get(TrainingRun, i) for i in (a, b)]
        for run_id, run in zip((a, b), runs):
            if run is None:
                raise LookupError(f"no training run {run_id}")
        rows = [_row(session, run) for run in runs]
        configs = [_flatten(run.config or {}) for run in runs]
    config = {key: [configs[0].get(key), configs[1].get(key)] for key in sorted(configs[0].keys() | configs[1].keys())
              if configs[0].get(key) != configs[1].get(key)}
    data: dict[str, Any] = {"a": f"{rows[0]['dataset']}@{rows[0]['version']}", "b": f"{rows[1]['dataset']}@{rows[1]['version']}"}
    if rows[0]["dataset"] == rows[1]["dataset"] and rows[0]["version"] != rows[1]["version"]:
        changes = diff_versions(store, rows[0]["dataset"], rows[0]["version"], rows[1]["version"])
        data.update(added=len(changes["added"]), removed=len(changes["removed"]), changed=len(changes["changed"]))
    metrics = {}
    for key in KEY_METRICS:
        va, vb = rows[0]["metrics"].get(key), rows[1]["metrics"].get(key)
        if va is not None or vb is not None:
            metrics[key] = {"a": va, "b": vb, "delta": (vb - va) if va is not None and vb is not None else None}
    return {"a": a, "b": b, "config": config, "data": data, "metrics": metrics,
            "status": [rows[0]["status"], rows[1]["status"]]}
