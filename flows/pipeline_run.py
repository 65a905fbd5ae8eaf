"""The prepare pipeline without Prefect: plan each step from the cache, run what is missing in
batches (through whatever `submit` gives: Prefect tasks, pool flow runs, a plain thread pool), record
each batch in one transaction, then apply the outcome to the members.

flows/prepare.py wraps this in the Prefect flow; flows/prepare_noop.py runs it with nothing to submit
(a no-op re-run answers without importing Prefect).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

from PIL import Image

from flows.pipeline import PipelineConfig, StepConfig, steps_without_weights
from preprocess.load import open_image
from preprocess.masks import carry_masks
from preprocess.steps import (
    Item,
    LoadedStep,
    cache_params_hash,
    check_params,
    dataset_pass,
    load_step,
    model_fingerprint,
    params_hash,
    step_version,
)
from store.blobs import BlobStore
from store.datasets import get_dataset
from store.db import Store
from store.registry import load_registry
from store.step_results import (
    MemberState,
    advance,
    apply_to_member,
    find_results,
    load_member_states,
    record_result,
)

# Loaded steps, per worker thread: model objects (OpenCV cascades among them) are not all safe to
# call from two threads at once, so each worker thread loads its own copy once and reuses it.
_LOADED = threading.local()
# The terminal's progress callback. Not a flow parameter nor read in the flow's body: Prefect
# serialises both (the flow function by value) and ships them to process or Dask workers.
PROGRESS: list[Callable[[str, int, int], None] | None] = [None]
_LOAD_LOCK = threading.Lock()


def loaded_step(step: str, params: dict) -> LoadedStep:
    """The step with its models, loaded once per worker (thread or process) and reused for every batch."""
    key = (step, params_hash(params))
    cache = _LOADED.__dict__.setdefault("steps", {})
    if key not in cache:
        with _LOAD_LOCK:  # loads one at a time: two copies of a large model never load at once
            cache[key] = load_step(step, params, load_registry())
    return cache[key]


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def run_batch(step: str, params: dict, blobs_url: str, items: list[dict]) -> dict:
    """Run one step on a batch (pure: blobs in, blobs + plain results out). One bad image fails alone."""
    loaded = loaded_step(step, params)
    blobs = BlobStore(blobs_url)
    started = time.perf_counter()
    prepared: list[Item | str] = []
    for item in items:
        try:
            image = open_image(blobs.get(item["sha"], item["ext"]), max_pixels=1 << 40, min_side=1).image
            masks = {name: Image.open(io.BytesIO(blobs.get(m["sha256"], m["ext"]))).convert("L")
                     for name, m in (item.get("masks") or {}).items()}
            prepared.append(Item(image=image, name=item["name"], caption=item["caption"], tags=item["tags"],
                                 meta=item["meta"], masks=masks))
        except Exception as error:  # a blob that no longer decodes fails this image only
            prepared.append(f"cannot read input: {error}")
    good = [p for p in prepared if isinstance(p, Item)]
    try:
        outputs = iter(loaded.run(good) if good else [])
    except Exception:
        outputs = iter(_one_by_one(loaded, good))
    per_item = (time.perf_counter() - started) / max(len(items), 1)
    results = []
    for entry in prepared:
        if isinstance(entry, str):
            results.append({"status": "failed", "error": entry})
            continue
        output = next(outputs)
        if isinstance(output, Exception):
            results.append({"status": "failed", "error": f"{type(output).__name__}: {output}"})
            continue
        result: dict[str, Any] = {"status": "done", "meta": output.meta, "caption": output.caption,
                                  "scores": dict(output.scores), "seconds": per_item,
                                  "tags": [asdict(t) for t in output.tags] if output.tags is not None else None,
                                  "step_version": step_version(step)}
        if output.image is not None:
            data = _encode_png(output.image)
            result["artifact"] = {"sha256": blobs.put(data, "png"), "ext": "png",
                                  "width": output.image.width, "height": output.image.height}
        if output.intermediates:  # images made along the way (loopback's loops): artifacts beside the result
            result["intermediates"] = {name: {"sha256": blobs.put(_encode_png(image), "png"), "ext": "png",
                                              "width": image.width, "height": image.height}
                                       for name, image in output.intermediates.items()}
        if output.image is not None or output.masks:
            try:
                masks, dropped = carry_masks(entry.masks, entry.image.size, output.image, output.masks, step)
            except ValueError as error:
                results.append({"status": "failed", "error": str(error)})
                continue
            result["masks"] = {name: {"sha256": blobs.put(_encode_png(mask), "png"), "ext": "png",
                                      "width": mask.width, "height": mask.height} for name, mask in sorted(masks.items())}
            if dropped:
                result["meta"] = {**result["meta"], "masks_dropped": dropped}
        results.append(result)
    return {"backend": loaded.backend, "model_id": loaded.model_id, "model_hash": loaded.model_hash,
            "params": loaded.params, "results": results}


def _one_by_one(loaded: LoadedStep, items: list[Item]) -> list:
    outputs = []
    for item in items:
        try:
            outputs.append(loaded.run([item])[0])
        except Exception as error:
            outputs.append(error)
    return outputs


def plan_step(session, step: StepConfig, p_hash: str, fingerprint: str,
              states: list[MemberState]) -> tuple[list, list, list]:
    """Split members into (cached (state, result) pairs, todo, not applicable) for this step."""
    applicable, skipped = [], []
    for state in states:
        if not state.failed:
            (applicable if all(c.holds(state.facts()) for c in step.when) else skipped).append(state)
    found = find_results(session, step.step, p_hash, sorted({s.sha for s in applicable}))
    cached, todo = [], []
    for state in applicable:
        hit = next((row for row in found.get(state.sha, []) if row.status == "done"
                    and row.model_hash == fingerprint), None)
        if hit:
            cached.append((state, hit))
        else:
            todo.append(state)
    return cached, todo, skipped


def run_pipeline(store: Store, dataset: str, config: PipelineConfig, submit: Callable | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run every step over the dataset; returns per-step counts and times (what --json prints)."""
    on_progress = on_progress or PROGRESS[0]
    started = time.perf_counter()
    with store.session() as session:
        ds = get_dataset(session, dataset)
        states = load_member_states(session, ds.id)
    summary: dict[str, Any] = {"dataset": dataset, "pipeline": config.name, "members": len(states), "steps": []}
    registry = load_registry()
    unavailable = steps_without_weights(config, registry)
    summary["skipped"] = [{"step": step_id, "reason": reason} for step_id, reason in unavailable.items()]
    for step in config.steps:
        t0 = time.perf_counter()
        if step.id in unavailable:  # its weights are missing and it has no fallback: the rest still runs
            summary["steps"].append({"step": step.id, "done": 0, "cached": 0, "not_applicable": len(states),
                                     "failed": [], "excluded": 0, "backend": None, "seconds": 0.0,
                                     "skipped": unavailable[step.id]})
            continue
        p_hash = cache_params_hash(step.step, step.params)
        fingerprint = model_fingerprint(step.step, step.params, registry)
        with store.session() as session:
            cached, todo, skipped = plan_step(session, step, p_hash, fingerprint, states)
            for state, row in cached:
                advance(state, row, step.id, session)
        counts = {"step": step.id, "done": 0, "cached": len(cached), "not_applicable": len(skipped),
                  "failed": [], "excluded": 0, "backend": None}
        batches = [todo[i:i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
        payloads = [[{"sha": s.sha, "ext": s.ext, "name": s.source_path, "caption": s.caption, "tags": s.tags,
                      "meta": s.meta, "masks": s.masks} for s in batch] for batch in batches]
        if submit is not None:
            futures = [submit(step.step, step.params, store.settings.blobs_url, p) for p in payloads]
            outputs = (f.result() for f in futures)
        else:
            outputs = (run_batch(step.step, step.params, store.settings.blobs_url, p) for p in payloads)
        finished = 0
        for batch, output in zip(batches, outputs):
            counts["backend"] = output["backend"]
            if output.get("worker"):  # pool batches: which worker ran how many
                workers = summary.setdefault("workers", {})
                workers[output["worker"]] = workers.get(output["worker"], 0) + 1
            with store.session() as session:  # one batch, one transaction: a kill loses at most this batch
                for state, result in zip(batch, output["results"]):
                    row = record_result(session, state, step.step, output["params"], p_hash, output["backend"],
                                        output["model_id"], output["model_hash"], fingerprint, result)
                    advance(state, row, step.id, session)
                    if result["status"] == "done":
                        counts["done"] += 1
                    else:
                        counts["failed"].append({"path": state.source_path, "reason": result["error"]})
            finished += len(batch)
            if on_progress:
                on_progress(step.id, finished, len(todo))
        if on_progress and not todo:
            on_progress(step.id, 0, 0)
        if (scorer := dataset_pass(step.step)) is not None:  # e.g. identity against the dataset's medoid face
            ran = [s for s in states if step.id in s.results and not s.failed]
            for state, scores in zip(ran, scorer(step.params, [s.meta for s in ran])):
                state.scores.update(scores)
                state.pass_scores[step.id] = scores
        counts["seconds"] = round(time.perf_counter() - t0, 3)
        summary["steps"].append(counts)
    summary["applied"] = _apply(store, config, states, summary)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _apply(store: Store, config: PipelineConfig, states: list[MemberState], summary: dict) -> dict:
    excluded = 0
    by_step = {c["step"]: c for c in summary["steps"]}
    accept = {s.id: s.accept_above for s in config.steps if s.accept_above is not None}
    with store.session() as session:
        for state in states:
            reason = None
            for step in config.steps:
                for rule in step.exclude_when:
                    if reason is None and (reason := rule.excludes(state.scores)):
                        by_step[step.id]["excluded"] += 1
            excluded += reason is not None
            apply_to_member(session, state, reason, accept)
    return {"excluded": excluded, "failed_members": sum(1 for s in states if s.failed)}


def check_pipeline(store: Store, dataset: str, config: PipelineConfig, pipeline: str | None) -> None:
    """Before a run: every step's params valid (ValueError naming the file, step and field), the dataset
    there (DatasetNotFound); a step that will be skipped for missing weights is said on stderr."""
    for step in config.steps:
        try:
            check_params(step.step, step.params)
        except ValueError as error:
            raise ValueError(f"{pipeline or 'configs/pipeline/default.yaml'}: step {step.id!r}: {error}") from None
    with store.session() as session:
        get_dataset(session, dataset)
    for step_id, reason in steps_without_weights(config, load_registry()).items():  # said before the run starts
        print(f"skipping step {step_id!r}: {reason}", file=sys.stderr, flush=True)


def commit_after_run(store: Store, dataset: str, message: str) -> dict | None:
    """`--commit`: a version of what the run left (None, said, when nothing changed since the last one)."""
    from store.versions import NothingToCommit, commit_version

    try:
        return asdict(commit_version(store, dataset, message))
    except NothingToCommit as error:
        print(str(error))
        return None
