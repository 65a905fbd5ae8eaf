"""The prepare flow: a dataset's members through the configured steps into artifacts, tags, captions
and scores — incremental (cached by input, step, params, model), resumable, batched, observable.

The pipeline itself (plan from the cache, run the missing batches, record, apply) is
flows/pipeline_run.py; here it runs as a Prefect flow whose batches are `run-step` tasks on the
configured task runner (or flow runs on a work pool), with its report published to the UI.
"""

from __future__ import annotations

from typing import Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import PipelineConfig, load_pipeline
from flows.pipeline_run import (
    PROGRESS,
    check_pipeline,
    commit_after_run,
    loaded_step,
    plan_step,
    run_batch,
    run_pipeline,
)
from store.db import open_store

__all__ = ["loaded_step", "plan_step", "prepare", "prepare_flow", "run_batch", "run_pipeline"]


def _transient(task, task_run, state) -> bool:
    """Retry what may pass on a second try (I/O, a lost worker); a bad parameter fails at once."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError, MemoryError):
        return True
    except Exception:
        return False
    return False


run_batch_task = task(run_batch, name="run-step", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE,
                      retry_condition_fn=_transient)


def _task_runner(config: PipelineConfig):
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if config.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=config.workers)
    if config.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "processes": True})
    return ThreadPoolTaskRunner(max_workers=config.workers)


@flow(name="prepare", log_prints=True)
def prepare_flow(dataset: str, pipeline: str | None = None, overrides: dict | None = None,
                 commit_message: str | None = None) -> dict:
    """Prefect flow: the configured steps over a dataset; summary artifact + contact sheet; optional commit.

    Batches run as `run-step` tasks on the flow's task runner (see `prepare`, which picks it from the config).
    """
    from flows.prepare_report import publish_report
    from flows.worker_check import check_worker_store

    check_worker_store()
    config = load_pipeline(pipeline, overrides)
    store = open_store()
    if config.task_runner == "pool":  # batches as flow runs on the work pool: spread over its workers
        from flows.prepare_pool import PoolSubmitter

        submit = PoolSubmitter(store.blobs, config.pool_deployment, config.batch_timeout_s)
    else:
        submit = lambda step, params, blobs_url, items: run_batch_task.submit(step, params, blobs_url, items)
    summary = run_pipeline(store, dataset, config, submit=submit)
    summary["report"] = publish_report(store, dataset, config, summary)
    print(f"prepare {dataset}: " + ", ".join(f"{c['step']} done {c['done']} cached {c['cached']} failed {len(c['failed'])}"
                                            for c in summary["steps"]))
    if commit_message:
        summary["version"] = commit_after_run(store, dataset, commit_message)
    return summary


def prepare(dataset: str, pipeline: str | None = None, overrides: dict | None = None,
            commit_message: str | None = None, on_progress: Callable | None = None, checked: bool = False) -> dict:
    """Validate the pipeline (fail fast, naming the field; `checked`: the caller did), then run the flow
    on its task runner."""
    config = load_pipeline(pipeline, overrides)
    if not checked:
        check_pipeline(open_store(), dataset, config, pipeline)
    PROGRESS[0] = on_progress
    try:
        return prepare_flow.with_options(task_runner=_task_runner(config))(dataset, pipeline, overrides, commit_message)
    finally:
        PROGRESS[0] = None
