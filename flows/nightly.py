"""The nightly retrain: one flow, deployed on a cron schedule.

  ingest the configured sources → prepare → enough new images since the last version? (else
  "no new data", done in seconds) → commit a version → train a challenger → evaluate it with the
  champion's prompts and seeds → promote or keep → a markdown report (Prefect artifact)

A failure in any stage leaves the champion untouched; the flow run fails naming the stage and
the reason (also in the report), and the next night starts from the stored state again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluation.config import REPO_ROOT, ConfigError, describe, merge_overrides, read_yaml

DEFAULT_NIGHTLY = REPO_ROOT / "configs" / "nightly.yaml"


class NightlyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    sources: list[str] = Field(min_length=1)  # folders or zip files with new photos
    dataset_settings: dict[str, Any] = {}  # identifier, class_word, repeats for a dataset created by the first night
    pipeline: str | None = None  # prepare pipeline (default configs/pipeline/default.yaml)
    pipeline_overrides: dict[str, Any] = {}
    training: str | dict[str, Any] = "configs/train/lora-sd15.yaml"  # preset path or the config itself
    training_overrides: dict[str, Any] = {}
    evaluation: str | dict[str, Any] | None = None  # eval preset for the first champion (later: the champion's)
    evaluation_overrides: dict[str, Any] = {}
    min_new_images: int = Field(1, ge=1)  # active images not in the last version that make a retrain worth it
    slot: str = "subject-lora"
    slots_file: str | None = None
    lock_wait_s: float = Field(0, ge=0)  # another night holds the slot: wait this long, then refuse


class NightlyFailed(RuntimeError):
    def __init__(self, stage: str, reason: str, summary: dict):
        super().__init__(f"nightly failed at {stage}: {reason}")
        self.stage, self.reason, self.summary = stage, reason, summary


def load_nightly(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> NightlyConfig:
    path = Path(path) if path else DEFAULT_NIGHTLY
    raw, name = read_yaml(path), str(path)
    if overrides:
        raw, name = merge_overrides(raw, overrides), name + " (with --set overrides)"
    try:
        config = NightlyConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error, name)) from None
    from evaluation.config import get_slot

    get_slot(config.slot, config.slots_file)  # an unknown slot fails now, not after training
    return config


def new_images(store, dataset: str, slot: str) -> tuple[int, int | None]:
    """(active images not in the baseline version, its number or None).

    The baseline is the version the slot's last decided challenger trained on, so that a night whose
    training crashed leaves its images "new" and the next night retries them.
    """
    from sqlalchemy import select

    from store.datasets import get_dataset
    from store.models import DatasetVersion, PromotionDecision, TrainingRun, VersionEntry
    from store.versions import working_manifest

    with store.session() as session:
        ds = get_dataset(session, dataset)
        working = {e["image_sha256"] for e in working_manifest(session, ds.id)}
        baseline = session.scalar(
            select(DatasetVersion).join(TrainingRun, TrainingRun.version_id == DatasetVersion.id)
            .join(PromotionDecision, PromotionDecision.challenger_run_id == TrainingRun.id)
            .where(PromotionDecision.slot == slot, TrainingRun.dataset_id == ds.id)
            .order_by(PromotionDecision.id.desc()).limit(1))
        if baseline is None:
            return len(working), None
        known = set(session.scalars(select(VersionEntry.image_sha256).where(VersionEntry.version_id == baseline.id)))
        return len(working - known), baseline.number


def commit_or_latest(store, dataset: str, message: str) -> int:
    """Commit the working state; when nothing changed since the newest version (a retried night), use that one."""
    from store.versions import NothingToCommit, commit_version, get_version

    try:
        return commit_version(store, dataset, message, user="nightly").number
    except NothingToCommit:
        with store.session() as session:
            return get_version(session, dataset).number


def report_markdown(summary: dict[str, Any]) -> str:
    """The night's report: outcome, metrics champion vs challenger, the decision and why, the grid."""
    lines = [f"# Nightly retrain: {summary['dataset']} → slot `{summary['slot']}`", "",
             f"**{summary['status']}**" + (f" at stage `{summary['stage']}`" if summary.get("stage") else "")
             + f": {summary.get('reason', '')}", ""]
    if summary.get("new_images") is not None:
        lines.append(f"- new images since the last version: {summary['new_images']} (threshold {summary['min_new_images']})")
    for key, label in (("version", "dataset version"), ("run_id", "challenger run"), ("evaluation_id", "evaluation"),
                       ("champion_run_id", "champion run before")):
        if summary.get(key) is not None:
            lines.append(f"- {label}: {summary[key]}")
    metrics = summary.get("metrics")
    if metrics:
        champion, challenger = metrics.get("champion") or {}, metrics.get("challenger") or {}
        lines += ["", "| metric | champion | challenger | Δ |", "| --- | ---: | ---: | ---: |"]
        for key in [k for k in challenger if k not in ("samples",)]:
            a, b = champion.get(key), challenger.get(key)
            fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))
            delta = fmt(b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "–"
            lines.append(f"| {key} | {fmt(a)} | {fmt(b)} | {delta} |")
    if summary.get("decision"):
        lines += ["", f"**Decision: {summary['decision']}** — {summary.get('decision_reason', '')}"]
    if summary.get("grid"):
        lines += ["", f"Sample grid (prompts × seeds, challenger beside base): ![grid]({summary['grid']})",
                  f"`{summary['grid']}`"]
    return "\n".join(lines) + "\n"


def _publish_report(summary: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    key = "nightly-" + "".join(c if c.isalnum() else "-" for c in summary["slot"].lower())
    create_markdown_artifact(markdown=report_markdown(summary), key=key,
                             description=f"nightly {summary['dataset']}: {summary['status']}")


def run_nightly(config: NightlyConfig, log=print) -> dict[str, Any]:
    """The night, holding the slot's lock in the database throughout: a second night on the same slot
    waits up to `lock_wait_s`, then refuses (stage "lock"), so a slot is never promoted twice from one night."""
    from prefect.runtime import flow_run

    from store.db import open_store
    from store.slot_locks import SlotBusy, holder_name, slot_lock

    try:
        with slot_lock(open_store(), config.slot, holder_name(flow_run.id), wait_s=config.lock_wait_s):
            return _night(config, log)
    except SlotBusy as busy:
        summary = {"dataset": config.dataset, "slot": config.slot, "status": "failed", "stage": "lock",
                   "reason": str(busy), "min_new_images": config.min_new_images}
        raise NightlyFailed("lock", str(busy), summary) from None


def _night(config: NightlyConfig, log=print) -> dict[str, Any]:
    """The stages in order; raises NightlyFailed(stage, reason) on the first failure (champion untouched)."""
    from evaluation.config import get_slot, load_preset
    from evaluation.promotion import challenge, champion_of
    from flows.evaluate import evaluate_flow, evaluation_summary
    from flows.ingest import ingest_flow
    from flows.prepare import prepare
    from flows.train import TrainingFailed, train_flow
    from store.db import open_store
    store = open_store()
    summary: dict[str, Any] = {"dataset": config.dataset, "slot": config.slot, "status": "running",
                               "min_new_images": config.min_new_images}
    stage = "ingest"
    try:
        report = ingest_flow([str(Path(s).expanduser()) for s in config.sources], config.dataset, dataset_settings=config.dataset_settings or None)
        summary["ingested"] = report["added"]
        stage = "prepare"
        prepare(config.dataset, config.pipeline, config.pipeline_overrides or None)
        stage = "check"
        count, last = new_images(store, config.dataset, config.slot)
        summary["new_images"] = count
        if count < config.min_new_images:
            summary.update(status="no new data", reason=f"{count} new images since version {last} "
                                                        f"(threshold {config.min_new_images}); nothing trained")
            log(summary["reason"])
            return summary
        stage = "commit"
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        summary["version"] = commit_or_latest(store, config.dataset, f"nightly {stamp}: {count} new images")
        stage = "train"
        try:
            summary["run_id"] = train_flow(config.dataset, summary["version"], config.training,
                                           config.training_overrides or None)
        except TrainingFailed as error:
            summary["run_id"] = error.run_id
            raise
        stage = "evaluate"
        slot = get_slot(config.slot, config.slots_file)
        champion = champion_of(store, config.slot)
        summary["champion_run_id"] = champion["run_id"] if champion else None
        if champion and champion["preset"]:  # the champion's prompts, seeds and encoders: comparable numbers
            preset = {k: v for k, v in champion["preset"].items() if k != "digest"}
        else:
            preset = load_preset(config.evaluation, config.evaluation_overrides or None).model_dump(mode="json")
        summary["evaluation_id"] = evaluate_flow(summary["run_id"], preset)
        evaluation = evaluation_summary(store, summary["evaluation_id"])
        summary["grid"] = evaluation["grid"]
        champion_metrics = None
        if champion and champion["evaluation_id"]:
            # the champion's own samples against the new version's images: both measured on the same references
            from flows.evaluate import rescore_evaluation
            from store.models import TrainingRun

            with store.session() as session:
                version_id = session.get(TrainingRun, summary["run_id"]).version_id
            champion_metrics = rescore_evaluation(store, champion["evaluation_id"], version_id).get("trained")
        stage = "promote"
        decision = challenge(store, config.slot, slot, summary["evaluation_id"], champion_metrics=champion_metrics)
        summary["metrics"] = {"champion": decision.numbers.get("champion"), "challenger": decision.numbers.get("challenger")}
        summary.update(status="promoted" if decision.promoted else "kept", decision=decision.action,
                       decision_reason=decision.reason, reason=decision.reason,
                       published_path=decision.numbers.get("published_path"))
        log(f"{config.slot}: {decision.action} — {decision.reason}")
        return summary
    except Exception as error:
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        summary.update(status="failed", stage=stage, reason=str(reason).splitlines()[0])
        raise NightlyFailed(stage, summary["reason"], summary) from error


@flow(name="nightly", log_prints=False)
def nightly_flow(config: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Prefect flow: the nightly retrain with configs/nightly.yaml (or CONFIG) and `--set` overrides."""
    from prefect import get_run_logger

    from flows.worker_check import check_worker_store

    check_worker_store()
    logger = get_run_logger()
    parsed = load_nightly(config, overrides)
    try:
        summary = run_nightly(parsed, log=logger.info)
    except NightlyFailed as failure:
        logger.error(str(failure))
        _publish_report(failure.summary)
        raise
    _publish_report(summary)
    return summary
