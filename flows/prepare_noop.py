"""A prepare run with nothing to compute: every applicable member of every step has its cached result.

Found by running the pipeline itself (flows/pipeline_run.py) with a `submit` that refuses the first
batch: the plan is the flow's own, and nothing is written until every step turned out cached. Then
the outcome is applied (rules may have changed) and `--commit` commits, all without importing
Prefect; `atelier prepare` records the run as Completed over the REST API (flows/quick_run.py).
"""

from __future__ import annotations

from flows.pipeline import PipelineConfig
from flows.pipeline_run import commit_after_run, run_pipeline
from store.db import Store


class HasWork(Exception):
    """A step has members to compute: the run needs the flow and its task runner."""


def _refuse(step: str, params: dict, blobs_url: str, items: list[dict]):
    raise HasWork(step)


def cached_run(store: Store, dataset: str, config: PipelineConfig, commit_message: str | None = None) -> dict | None:
    """The summary the prepare flow would return when every step is cached, else None (nothing written)."""
    try:
        summary = run_pipeline(store, dataset, config, submit=_refuse)
    except HasWork:
        return None
    if commit_message:
        summary["version"] = commit_after_run(store, dataset, commit_message)
    return summary
