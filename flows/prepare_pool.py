"""Prepare batches as flow runs on a work pool: workers on many machines that share nothing but the
database and the blob store (PostgreSQL + S3) each take batches as they come.

The prepare flow (`task_runner: pool`) submits every batch of a step as a run of the
`prepare-batch` deployment (`run_deployment`, no waiting) and reads each result back. A batch flow
is pure: blobs in, result JSON out (written to the blob store under `results/`, read and removed
by the prepare flow, which records it in one transaction as for any task runner). A batch whose flow
run crashed, or whose heartbeat (beside its result, every few seconds while it runs) has not changed
for `batch_timeout_s` (its worker was lost), is cancelled and given to the pool once more; the step's
cache makes a re-run of a killed prepare do only what is missing. While its flow run is Pending a batch
is starting a Python process on a worker that may be busy: until it runs (or beats) it may be silent
for STARTUP_GRACE_S (or `batch_timeout_s`, if longer); each change of its flow run's state counts as
a sign of life, and the first beat comes before the step's own imports.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from prefect import flow

from store.blobs import BlobStore

HEARTBEAT_S = 5.0  # a running batch touches its heartbeat this often
STARTUP_GRACE_S = 120.0  # a batch taken by a worker may be silent this long before its first heartbeat


def result_path(blobs: BlobStore, key: str) -> str:
    return f"{blobs.root}/results/{key}.json"


def heartbeat_path(blobs: BlobStore, key: str) -> str:
    return f"{blobs.root}/results/{key}.alive"


def _beat(blobs: BlobStore, key: str, done: threading.Event) -> None:
    count = 0
    while not done.wait(HEARTBEAT_S if count else 0):
        count += 1
        try:
            blobs.fs.pipe_file(heartbeat_path(blobs, key), str(count).encode())
        except OSError:  # a missed beat only makes the run wait longer before it gives the batch away
            pass


@flow(name="prepare-batch", log_prints=True)
def prepare_batch_flow(step: str, params: dict, blobs_url: str, items: list[dict], result_key: str) -> str:
    """One step on one batch, on whichever worker of the pool takes it; the result goes to the blob store,
    and a heartbeat beside it while it runs (the prepare run tells a slow batch from a lost worker by it)."""
    blobs = BlobStore(blobs_url)
    blobs.check()  # a worker that cannot reach the store (endpoint, credentials) fails the batch now, in one line
    done = threading.Event()
    threading.Thread(target=_beat, args=(blobs, result_key, done), daemon=True).start()
    print(f"batch {result_key}: {step} on {len(items)} images, heartbeat started")
    try:
        # the step's imports come after the first heartbeat
        from flows.pipeline_run import run_batch

        output = run_batch(step, params, blobs_url, items)
    finally:
        done.set()
    output["worker"] = os.environ.get("ATELIER_WORKER_NAME") or f"{socket.gethostname()}:{os.environ.get('ATELIER_HOME', '.atelier')}"
    blobs.fs.pipe_file(result_path(blobs, result_key), json.dumps(output).encode())
    return result_key


class PoolFuture:
    def __init__(self, submitter: PoolSubmitter, args: tuple):
        self.submitter, self.args, self.attempts = submitter, args, 0
        self._start()

    def _start(self) -> None:
        from prefect.deployments import run_deployment

        self.key = uuid.uuid4().hex
        step, params, blobs_url, items = self.args
        self.flow_run = run_deployment(self.submitter.deployment, timeout=0, as_subflow=True,
                                       parameters={"step": step, "params": params, "blobs_url": blobs_url,
                                                   "items": items, "result_key": self.key})
        # local clock of the last sign of life: a worker took it (Pending), it started (Running), its
        # heartbeat changed; waiting in the queue for a free worker is not a sign of loss
        self.alive_at, self.beat, self.state_name = None, None, None
        self.attempts += 1

    def _lost(self, blobs: BlobStore, state_name: str) -> bool:
        """Silent for longer than allowed: batch_timeout_s once it runs, the start-up grace before."""
        try:
            beat = blobs.fs.cat_file(heartbeat_path(blobs, self.key))
        except FileNotFoundError:
            beat = None
        if beat != self.beat or state_name != self.state_name:
            self.beat, self.state_name, self.alive_at = beat, state_name, time.monotonic()
        starting = self.beat is None and state_name != "Running"  # its process is still importing
        allowed = max(STARTUP_GRACE_S, self.submitter.timeout_s) if starting else self.submitter.timeout_s
        return time.monotonic() - self.alive_at > allowed

    def _forget(self, blobs: BlobStore) -> None:
        for path in (result_path(blobs, self.key), heartbeat_path(blobs, self.key)):
            if blobs.fs.exists(path):
                blobs.fs.rm_file(path)

    def result(self) -> dict[str, Any]:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        blobs = self.submitter.blobs
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(self.flow_run.id).state
                if state is not None and state.is_completed():
                    output = json.loads(blobs.fs.cat_file(result_path(blobs, self.key)))
                    self._forget(blobs)
                    return output
                taken = state is not None and not state.is_scheduled()
                lost = taken and self._lost(blobs, state.name)
                if (state is not None and state.is_final()) or lost:
                    reason = (f"no heartbeat for {time.monotonic() - self.alive_at:.0f} s (its worker lost?)"
                              if lost else f"{state.name}: {state.message}")
                    if self.attempts >= 2:
                        raise RuntimeError(f"batch flow run {self.flow_run.id} {reason}; given twice, giving up")
                    if lost:
                        client.set_flow_run_state(self.flow_run.id, Cancelled(message="given to another worker"),
                                                  force=True)
                    self._forget(blobs)  # a lost worker's late result or heartbeat
                    self._start()
                time.sleep(self.submitter.poll_s)


class PoolSubmitter:
    """`submit(step, params, blobs_url, items)` for run_pipeline: a batch flow run on the pool."""

    def __init__(self, blobs: BlobStore, deployment: str, timeout_s: float, poll_s: float = 0.5):
        self.blobs, self.deployment, self.timeout_s, self.poll_s = blobs, deployment, timeout_s, poll_s

    def __call__(self, step: str, params: dict, blobs_url: str, items: list[dict]) -> PoolFuture:
        return PoolFuture(self, (step, params, blobs_url, items))
