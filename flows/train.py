"""Train flow: export a dataset version, train in a subprocess, record a TrainingRun.

Reads like the pipeline's table of contents:
  validate config → resolve base model → record run (queued) → export version (kohya layout)
  → train in a subprocess (running; progress streamed) → record outputs + metrics (succeeded|failed)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow

from store.db import Store, open_store

REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingFailed(RuntimeError):
    def __init__(self, run_id: int, reason: str):
        super().__init__(f"training run {run_id} failed: {reason}")
        self.run_id, self.reason = run_id, reason


def launcher(num_processes: int = 1) -> list[str]:
    """The command that starts training: $ATELIER_TRAIN_LAUNCHER as given, else `python -m training.run`,
    or for num_processes > 1 an `accelerate launch` of that many (training/distributed.py)."""
    custom = os.environ.get("ATELIER_TRAIN_LAUNCHER")
    if custom:
        return shlex.split(custom)
    if num_processes > 1:
        from training.distributed import launch_command

        return launch_command(num_processes)
    return [sys.executable, "-m", "training.run"]


def stream_process(command: list[str], log: Callable[[str], None], env: dict | None = None,
                   should_stop: Callable[[], bool] | None = None) -> tuple[int, list[str]]:
    """Run `command`, passing each output line to `log` as it comes; returns (exit code, last lines).

    should_stop: polled every 2 s while it runs; True terminates the process (its checkpoints stay)."""
    tail: deque[str] = deque(maxlen=40)
    reasons: list[str] = []  # a data-parallel launcher's failure report can push a rank's reason out of the tail
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                               start_new_session=should_stop is not None)  # its own group: a stop ends all ranks
    if should_stop is not None:
        threading.Thread(target=_stop_when, args=(process, should_stop), daemon=True).start()
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        tail.append(line)
        if line.startswith("training failed:"):
            reasons.append(line)
        if line and not line.startswith((" ", "Traceback")) and "Warning" not in line:
            log(line)
    return process.wait(), [*reasons[:1], *tail]


def _stop_when(process: subprocess.Popen, should_stop: Callable[[], bool], poll_s: float = 2) -> None:
    while process.poll() is None:
        try:
            stop = should_stop()
        except Exception:  # the database blinked: ask again at the next poll
            stop = False
        if stop:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
            return
        time.sleep(poll_s)


def failure_reason(code: int, tail: list[str]) -> str:
    for line in reversed(tail):
        if line.startswith("training failed:"):
            return line.removeprefix("training failed: ")
    if code < 0 or code in (137, -9):
        return f"the training process was killed (signal {-code if code < 0 else 9}; out of memory?)"
    return f"the training process exited with code {code}: {tail[-1] if tail else 'no output'}"


def create_run(store: Store, dataset: str, version: int | None, config: dict | str | Path,
               overrides: dict[str, Any] | None = None, flow_run_id: str | None = None,
               log: Callable[[str], None] = print, stage: bool = True) -> int:
    """Validate the config, resolve the base model, record a queued TrainingRun and export its data
    (stage=False: only record it; the worker that takes it from the queue exports, see stage_run)."""
    from store.datasets import get_dataset
    from store.models import TrainingRun
    from store.versions import export_version, get_version
    from training.config import load_config
    from training.models import resolve_base_model
    from training.preflight import check_before_training

    cfg = load_config(config, overrides)  # a bad config fails before anything is recorded
    if cfg.num_processes > 1:  # (imports torch: only then)
        from training.distributed import check_num_processes

        check_num_processes(cfg.num_processes)
    base = resolve_base_model(cfg.base_model)  # ModelMissing names the file to put where
    check_before_training(cfg, base.path)  # tokens, VAE channels: fail before a run is recorded
    with store.session() as session:
        ds = get_dataset(session, dataset)
        ver = get_version(session, dataset, version)
        # the dataset's identifier and class word are the defaults for DreamBooth prompts
        cfg = cfg.model_copy(update={"identifier": cfg.identifier or ds.identifier,
                                     "class_word": cfg.class_word or ds.class_word})
        run = TrainingRun(dataset_id=ds.id, version_id=ver.id, method=cfg.method, config=cfg.model_dump(mode="json"),
                          base_model=cfg.base_model, base_model_hash=base.sha256, status="queued",
                          flow_run_id=flow_run_id)
        session.add(run)
        session.flush()
        run_id, number = run.id, ver.number
    log(f"training run {run_id}: {cfg.method} on {dataset}@{number}, base {cfg.base_model} ({base.short_hash})")
    if stage:
        stage_run(store, run_id)
    return run_id


def stage_run(store: Store, run_id: int) -> Path:
    """Export the run's dataset version (kohya layout) and write its job file, on the machine that trains it."""
    from store.models import Dataset, DatasetVersion, TrainingRun
    from store.versions import export_version
    from training.models import resolve_base_model

    with store.session() as session:
        run = session.get(TrainingRun, run_id)
        dataset = session.get(Dataset, run.dataset_id).name
        number = session.get(DatasetVersion, run.version_id).number
        cfg = dict(run.config)
        if not run.output_dir:  # a queued run gets its folder on the worker that takes it
            run.output_dir = str(store.settings.home / "runs" / f"{run_id:05d}-{dataset}-v{number}-{run.method}")
        output_dir = Path(run.output_dir)
    base = resolve_base_model(cfg["base_model"])
    try:
        export = export_version(store, dataset, number, "kohya", output_dir / "data", force=True)
    except Exception as error:
        _finish(store, run_id, status="failed", error=f"export of {dataset}@{number} failed: {error}")
        raise
    job = {"config": cfg, "data_dir": str(output_dir / "data"), "output_dir": str(output_dir),
           "dataset": {"name": dataset, "version": number, "manifest_sha256": export["manifest_sha256"], "run_id": run_id},
           "cache_dir": str(store.settings.cache_dir), "base_model_path": str(base.path), "base_model_hash": base.sha256}
    (output_dir / "job.json").write_text(json.dumps(job, indent=2))
    return output_dir


def run_status(store: Store, run_id: int) -> str | None:
    from sqlalchemy import select

    from store.models import TrainingRun

    with store.session() as session:
        return session.scalar(select(TrainingRun.status).where(TrainingRun.id == run_id))


def _finish(store: Store, run_id: int, **fields) -> None:
    from store.models import TrainingRun

    with store.session() as session:
        row = session.get(TrainingRun, run_id)
        for key, value in fields.items():
            setattr(row, key, value)
        row.finished_at = datetime.now(UTC)


def execute_run(store: Store, run_id: int, *, log: Callable[[str], None] = print, stop_at_step: int | None = None,
                raise_on_failure: bool = True, resume: bool = False) -> int:
    """Train a recorded run in a subprocess; a run that stopped, failed or was cancelled resumes from its
    last checkpoint (a queued run cancelled before it started is skipped unless `resume`).
    `atelier runs cancel` marks a running run "cancelling": the process is stopped, the run "cancelled"."""
    from store.models import TrainingRun

    with store.session() as session:
        row = session.get(TrainingRun, run_id)
        if row is None:
            raise LookupError(f"no training run {run_id}")
        if row.status == "succeeded":
            raise ValueError(f"training run {run_id} already succeeded; start a new run instead")
        if row.status == "cancelled" and stop_at_step is None and not resume:
            log(f"training run {run_id} was cancelled before it started; nothing to do")
            return run_id
        staged = bool(row.output_dir) and (Path(row.output_dir) / "job.json").exists()
        row.status, row.error, row.finished_at, row.started_at = "running", None, None, datetime.now(UTC)
    output_dir = Path(row.output_dir) if staged else stage_run(store, run_id)
    job_file = output_dir / "job.json"
    job = json.loads(job_file.read_text())
    job["stop_at_step"] = stop_at_step
    job_file.write_text(json.dumps(job, indent=2))
    processes = job["config"].get("num_processes", 1)
    try:
        if processes > 1:  # this machine (the one that trains) must have the devices
            from training.distributed import check_num_processes

            check_num_processes(processes, f"training run {run_id}")
        code, tail = stream_process([*launcher(processes), str(job_file)], log,
                                    should_stop=lambda: run_status(store, run_id) == "cancelling")
    except ValueError as error:
        code, tail = 1, [f"training failed: {error}"]
    except OSError as error:  # the launcher itself is missing
        code, tail = 1, [f"training failed: cannot start {launcher()[0]}: {error}"]
    result_file = output_dir / "result.json"
    if run_status(store, run_id) == "cancelling":
        _finish(store, run_id, status="cancelled",
                error=f"cancelled; its checkpoints are kept: resume with `atelier train --resume {run_id}`")
        log(f"training run {run_id} cancelled (resume with `atelier train --resume {run_id}`)")
        return run_id
    if code == 0 and result_file.exists():
        result = json.loads(result_file.read_text())
        from store.run_outputs import upload_outputs

        # the weights in the blob store too: evaluation and publishing may run on another machine
        outputs = upload_outputs(store, result["outputs"])
        _finish(store, run_id, status="succeeded", metrics=result["metrics"], outputs=outputs, error=None)
        log(f"training run {run_id} succeeded: final loss {result['metrics']['final_loss']:.4f}, "
            f"{result['metrics']['seconds_per_step']:.3f} s/step")
        return run_id
    if code == 0 and stop_at_step:
        _finish(store, run_id, status="failed",
                error=f"stopped at step {stop_at_step} as asked; resume with `atelier train --resume {run_id}`")
        return run_id
    reason = failure_reason(code, tail)
    _finish(store, run_id, status="failed", error=reason)
    log(f"training run {run_id} failed: {reason} (resume with `atelier train --resume {run_id}`)")
    if raise_on_failure:
        raise TrainingFailed(run_id, reason)
    return run_id


def run_train(store: Store, dataset: str, version: int | None, config: dict | str | Path,
              overrides: dict[str, Any] | None = None, *, log: Callable[[str], None] = print,
              stop_at_step: int | None = None, flow_run_id: str | None = None, raise_on_failure: bool = True) -> int:
    """Plain-Python train (no Prefect): returns the TrainingRun id; its status says how it went."""
    run_id = create_run(store, dataset, version, config, overrides, flow_run_id, log)
    return execute_run(store, run_id, log=log, stop_at_step=stop_at_step, raise_on_failure=raise_on_failure)


@flow(name="train", log_prints=False)
def train_flow(dataset: str | None = None, version: int | None = None, config: dict | str | None = None,
               overrides: dict | None = None, raise_on_failure: bool = True, resume_run: int | None = None,
               queued_run: int | None = None) -> int:
    """Prefect flow: train on DATASET@VERSION with a preset (path or dict); returns the TrainingRun id.

    Failures are recorded on the run (status failed, error text); with raise_on_failure the flow
    run fails too (TrainingFailed carries run_id). resume_run: continue that run from its last checkpoint.
    """
    from prefect import get_run_logger
    from prefect.runtime import flow_run

    from flows.worker_check import check_worker_store

    check_worker_store()
    logger = get_run_logger()
    store = open_store()
    if resume_run is not None:  # dataset/version/config are the run's own
        return execute_run(store, resume_run, log=logger.info, raise_on_failure=raise_on_failure, resume=True)
    if queued_run is not None:  # recorded by `atelier train --queue`; exported and trained here, on the gpu worker
        return execute_run(store, queued_run, log=logger.info, raise_on_failure=raise_on_failure)
    return run_train(store, dataset, version, config, overrides, log=logger.info,
                     flow_run_id=str(flow_run.id) if flow_run.id else None, raise_on_failure=raise_on_failure)
