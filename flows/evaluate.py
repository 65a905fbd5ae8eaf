"""Evaluate flow: sample a training run and its base, score the samples, record an Evaluation.

Reads like the pipeline's table of contents:
  check the run → reuse an evaluation with the same preset → sample trained + base (fixed prompts
  × seeds) → store samples as artifacts + a labelled grid → embed the version's images (cached)
  → score → record metrics overall and per prompt (succeeded | failed with the reason)
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from prefect import flow
from sqlalchemy import select

from evaluation.config import EvalPreset, load_preset
from preprocess.steps import params_hash
from store.db import Store, open_store
from store.models import Artifact, Dataset, Evaluation, Sample, TrainingRun, VersionEntry
from store.run_outputs import local_outputs

PNG = "png"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _run_facts(store: Store, run_id: int) -> dict[str, Any]:
    with store.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"no training run {run_id}")
        if run.status != "succeeded":
            raise ValueError(f"training run {run_id} is {run.status}" + (f" ({run.error})" if run.error else "")
                             + "; only a succeeded run can be evaluated")
        dataset = session.get(Dataset, run.dataset_id)
        entries = session.execute(select(VersionEntry.blob_sha256, VersionEntry.blob_ext)
                                  .where(VersionEntry.version_id == run.version_id)
                                  .order_by(VersionEntry.position)).all()
        config = run.config or {}
        return {"method": run.method, "outputs": local_outputs(store, dict(run.outputs or {})), "base_model": run.base_model,
                "base_model_hash": run.base_model_hash, "base_model_config": config.get("base_model_config"),
                "identifier": config.get("identifier") or dataset.identifier,
                "class_word": config.get("class_word") or dataset.class_word,
                "version_id": run.version_id, "entries": [tuple(e) for e in entries]}


def _existing(store: Store, run_id: int, digest: str) -> int | None:
    with store.session() as session:
        rows = session.scalars(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.status == "succeeded")
                               .order_by(Evaluation.id.desc())).all()
        return next((row.id for row in rows if row.preset.get("digest") == digest), None)


def _store_samples(store: Store, evaluation_id: int, run_id: int, facts: dict, preset: EvalPreset,
                   samples: list, scored: list) -> None:
    settings = preset.sampler_settings
    outputs = facts["outputs"]
    lora = next((outputs[k] for k in ("lora", "pipeline", "embedding", "hypernetwork") if k in outputs), {})
    with store.session() as session:
        for sample, score in zip(samples, scored):
            sha = store.blobs.put(_png(sample.image), PNG)
            params = {"run": run_id, "model": sample.model, "prompt": sample.prompt, "template": sample.template,
                      "seed": sample.seed, "settings": settings}
            trained = sample.model == "trained"
            artifact = Artifact(sha256=sha, ext=PNG, width=sample.image.width, height=sample.image.height, image_id=None,
                                step="sample", params=params, params_hash=params_hash(params), backend="diffusers",
                                model_id=(lora.get("path") if trained else facts["base_model"]),
                                model_hash=(lora.get("sha256") if trained else facts["base_model_hash"]),
                                meta={"evaluation_id": evaluation_id})
            session.add(artifact)
            session.flush()
            session.add(Sample(evaluation_id=evaluation_id, artifact_id=artifact.id, model=sample.model,
                               prompt=sample.prompt, seed=sample.seed, settings=settings, scores=score.scores))


def run_evaluation(store: Store, run_id: int, preset: EvalPreset | None = None, *, registry=None,
                   log: Callable[[str], None] = print, force: bool = False) -> int:
    """Plain-Python evaluation (no Prefect): returns the Evaluation id (an existing one for the same preset)."""
    from evaluation.grid import sample_grid
    from evaluation.metrics import Encoders, score_samples
    from evaluation.references import reference_embeddings
    from evaluation.sampling import sample_run
    from store.registry import load_registry

    preset = preset or load_preset()
    facts = _run_facts(store, run_id)
    if not facts["entries"]:
        raise ValueError(f"training run {run_id}: its dataset version has no images to compare samples with")
    digest = preset.digest()
    if not force and (existing := _existing(store, run_id, digest)) is not None:
        log(f"run {run_id}: evaluation {existing} already has these prompts, seeds and settings")
        return existing
    registry = registry or load_registry()
    with store.session() as session:
        row = Evaluation(run_id=run_id, preset={**preset.model_dump(mode="json"), "digest": digest}, status="running")
        session.add(row)
        session.flush()
        evaluation_id = row.id
    try:
        started = time.perf_counter()
        encoders = Encoders.load(preset, registry)  # a missing encoder fails before any sampling
        samples = sample_run(facts["method"], facts["outputs"], facts["base_model"], facts["base_model_config"],
                             preset.prompts, preset, facts["identifier"], facts["class_word"])
        sampled = time.perf_counter()
        log(f"run {run_id}: {len(samples)} samples in {sampled - started:.1f} s")
        refs = reference_embeddings(store, facts["entries"], encoders)
        scored, overall, per_prompt = score_samples(samples, refs, encoders)
        _store_samples(store, evaluation_id, run_id, facts, preset, samples, scored)
        prompts = list(dict.fromkeys(s.prompt for s in samples))
        grid_sha = store.blobs.put(_png(sample_grid(samples, prompts, preset.seeds)), PNG)
        overall["timing"] = {"sampling_s": sampled - started, "scoring_s": time.perf_counter() - sampled,
                             "samples": len(samples)}
        overall["references"] = {"version_id": facts["version_id"], "images": len(facts["entries"]),
                                 "faces": 0 if refs.faces is None else len(refs.faces)}
        overall["models"] = encoders.model_hashes()
        with store.session() as session:
            row = session.get(Evaluation, evaluation_id)
            row.metrics, row.per_prompt, row.grid_sha256, row.status = overall, per_prompt, grid_sha, "succeeded"
    except Exception as error:
        with store.session() as session:
            row = session.get(Evaluation, evaluation_id)
            row.status, row.metrics = "failed", {"error": f"{type(error).__name__}: {error}"}
        raise
    trained = overall.get("trained", {})
    log(f"run {run_id}: evaluation {evaluation_id}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in trained.items() if isinstance(v, float)))
    return evaluation_id


def evaluation_summary(store: Store, evaluation_id: int) -> dict[str, Any]:
    """What `atelier eval --json` prints."""
    with store.session() as session:
        row = session.get(Evaluation, evaluation_id)
        count = len(session.scalars(select(Sample.id).where(Sample.evaluation_id == evaluation_id)).all())
        grid = store.blobs.url_of(row.grid_sha256, PNG) if row.grid_sha256 else None
        return {"evaluation_id": row.id, "run_id": row.run_id, "status": row.status, "metrics": row.metrics,
                "per_prompt": row.per_prompt, "samples": count, "grid": grid, "grid_sha256": row.grid_sha256,
                "preset_digest": row.preset.get("digest")}


def rescore_evaluation(store: Store, evaluation_id: int, version_id: int, *, registry=None) -> dict[str, Any]:
    """An evaluation's stored samples scored again against another dataset version's images (no sampling).

    Returns metrics like Evaluation.metrics ({trained, base, lift, references}); nothing is written
    except embeddings of the version's images (cached). Used to compare a champion with a challenger
    trained on newer data on the same references.
    """
    from evaluation.metrics import Encoders, score_samples
    from evaluation.references import reference_embeddings
    from evaluation.sampling import GeneratedSample
    from store.registry import load_registry

    with store.session() as session:
        evaluation = session.get(Evaluation, evaluation_id)
        preset = load_preset({k: v for k, v in evaluation.preset.items() if k != "digest"})
        rows = session.execute(select(Sample, Artifact).join(Artifact, Sample.artifact_id == Artifact.id)
                               .where(Sample.evaluation_id == evaluation_id).order_by(Sample.id)).all()
        stored = [(s.model, s.prompt, s.seed, a.sha256, a.ext) for s, a in rows]
        entries = [tuple(e) for e in session.execute(select(VersionEntry.blob_sha256, VersionEntry.blob_ext)
                                                     .where(VersionEntry.version_id == version_id)
                                                     .order_by(VersionEntry.position)).all()]
    if not stored:
        raise ValueError(f"evaluation {evaluation_id} has no stored samples to re-score")
    from PIL import Image

    samples = []
    for model, prompt, seed, sha, ext in stored:
        with Image.open(io.BytesIO(store.blobs.get(sha, ext))) as image:
            samples.append(GeneratedSample(model, prompt, prompt, seed, image.convert("RGB")))
    encoders = Encoders.load(preset, registry or load_registry())
    refs = reference_embeddings(store, entries, encoders)
    _, overall, _ = score_samples(samples, refs, encoders)
    overall["references"] = {"version_id": version_id, "images": len(entries),
                             "faces": 0 if refs.faces is None else len(refs.faces)}
    return overall


@flow(name="evaluate", log_prints=False)
def evaluate_flow(run_id: int, preset: str | dict | None = None, overrides: dict | None = None,
                  force: bool = False) -> int:
    """Prefect flow: sample + score training run RUN_ID with a preset (path or dict); returns the Evaluation id."""
    from prefect import get_run_logger

    logger = get_run_logger()
    return run_evaluation(open_store(), run_id, load_preset(preset, overrides), log=logger.info, force=force)
