"""Champion and challenger: promote a run only when it beats the champion, and record every decision.

`decide` is the rule (pure): promoted when the challenger beats the champion's primary metric by
the slot's margin and no guard metric falls beyond its tolerance. The rest keeps the champions
table, the published file and the decisions log in step: a promotion publishes the weights and
updates the champion in one transaction; a rollback restores the champion before the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from evaluation.config import METRICS, Slot
from evaluation.publish import companion_lora, companion_path, publish_file, published_path, weights_file
from store.db import Store
from store.models import Champion, Evaluation, PromotionDecision, TrainingRun, utcnow
from store.run_outputs import local_outputs


@dataclass
class Decision:
    action: str  # promoted | kept
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.action == "promoted"


def _gain(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is (positive = better), whichever way the metric points."""
    return challenger - champion if METRICS[metric] else champion - challenger


def decide(slot: Slot, challenger: dict[str, Any], champion: dict[str, Any] | None) -> Decision:
    """The promotion rule on two metric dicts (an evaluation's metrics["trained"])."""
    primary = slot.primary_metric
    numbers: dict[str, Any] = {"primary_metric": primary, "min_margin": slot.min_margin,
                               "challenger": challenger, "champion": champion, "guards": {}}
    if challenger.get(primary) is None:
        return Decision("kept", f"the challenger has no {primary} score", numbers)
    if champion is None:
        return Decision("promoted", f"no champion yet; challenger {primary} {challenger[primary]:.4f}", numbers)
    if champion.get(primary) is None:
        return Decision("promoted", f"the champion has no {primary} score; challenger {challenger[primary]:.4f}", numbers)
    gain = _gain(primary, challenger[primary], champion[primary])
    numbers["primary_gain"] = gain
    failed = []
    for name, guard in slot.guards.items():
        if challenger.get(name) is None or champion.get(name) is None:
            numbers["guards"][name] = {"skipped": "not measured on both"}
            continue
        loss = -_gain(name, challenger[name], champion[name])
        numbers["guards"][name] = {"challenger": challenger[name], "champion": champion[name], "loss": loss,
                                   "tolerance": guard.tolerance, "ok": loss <= guard.tolerance}
        if loss > guard.tolerance:
            failed.append(f"{name} fell {loss:.4f} ({champion[name]:.4f} → {challenger[name]:.4f}), "
                          f"beyond its tolerance {guard.tolerance}")
    if gain < slot.min_margin:
        return Decision("kept", f"{primary} {challenger[primary]:.4f} vs champion {champion[primary]:.4f}: "
                                f"gain {gain:+.4f} is below the margin {slot.min_margin}", numbers)
    if failed:
        return Decision("kept", f"{primary} gains {gain:+.4f} but guard " + "; ".join(failed), numbers)
    return Decision("promoted", f"{primary} {challenger[primary]:.4f} beats champion {champion[primary]:.4f} "
                                f"by {gain:+.4f} (margin {slot.min_margin}); all guards within tolerance", numbers)


def champion_of(store: Store, slot: str) -> dict[str, Any] | None:
    """{run_id, evaluation_id, published_path, metrics, preset} of the slot's champion, or None."""
    with store.session() as session:
        row = session.get(Champion, slot)
        if row is None:
            return None
        evaluation = session.get(Evaluation, row.evaluation_id) if row.evaluation_id else None
        return {"slot": slot, "run_id": row.run_id, "evaluation_id": row.evaluation_id,
                "published_path": row.published_path, "updated_at": row.updated_at.isoformat(),
                "metrics": (evaluation.metrics.get("trained") if evaluation else None),
                "preset": evaluation.preset if evaluation else None}


def _install(session, store: Store, slot_name: str, slot: Slot, run_id: int, evaluation_id: int | None) -> str | None:
    """Publish the run's weights (if the slot has a path) and make it the champion row."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise LookupError(f"no training run {run_id}")
    target = None
    if slot.publish_path:
        outputs = local_outputs(store, run.outputs or {})
        source = weights_file(run.method, outputs)
        main = published_path(slot.publish_path, slot_name, source)
        if (lora := companion_lora(run.method, outputs)) is not None:  # first, so the embedding never lacks its LoRA
            publish_file(lora, companion_path(slot.publish_lora_path, main, slot_name, lora))
        target = str(publish_file(source, main))
    row = session.get(Champion, slot_name)
    if row is None:
        session.add(Champion(slot=slot_name, run_id=run_id, evaluation_id=evaluation_id, published_path=target))
    else:
        row.run_id, row.evaluation_id, row.published_path, row.updated_at = run_id, evaluation_id, target, utcnow()
    return target


def _record(session, slot: str, action: str, reason: str, numbers: dict, challenger: int | None,
            champion: int | None, decided_by: str) -> int:
    row = PromotionDecision(slot=slot, challenger_run_id=challenger, champion_run_id=champion, action=action,
                            reason=reason, numbers=numbers, decided_by=decided_by)
    session.add(row)
    session.flush()
    return row.id


def latest_evaluation(session, run_id: int) -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.status == "succeeded")
                          .order_by(Evaluation.id.desc()).limit(1))


def challenge(store: Store, slot_name: str, slot: Slot, evaluation_id: int, decided_by: str = "auto",
              champion_metrics: dict[str, Any] | None = None) -> Decision:
    """Compare an evaluated challenger with the slot's champion; promote it if it wins. Always recorded.

    `champion_metrics` replaces the champion's stored metrics (e.g. its samples re-scored against
    the challenger's dataset version, so both are measured against the same images).
    """
    champion = champion_of(store, slot_name)
    if champion and champion_metrics is not None:
        champion["metrics"] = champion_metrics
    with store.session() as session:
        evaluation = session.get(Evaluation, evaluation_id)
        if evaluation is None or evaluation.status != "succeeded":
            raise ValueError(f"evaluation {evaluation_id} did not succeed; nothing to compare")
        run_id = evaluation.run_id
        decision = decide(slot, evaluation.metrics.get("trained", {}), champion["metrics"] if champion else None)
        if champion and champion["preset"] and (champion["preset"].get("prompts"), champion["preset"].get("seeds")) != \
                (evaluation.preset.get("prompts"), evaluation.preset.get("seeds")):
            decision = Decision("kept", "not comparable: the challenger was not sampled with the champion's "
                                        "prompts and seeds (evaluate it with the champion's preset)", decision.numbers)
        decision.numbers.update(challenger_evaluation_id=evaluation_id,
                                champion_evaluation_id=champion["evaluation_id"] if champion else None)
        if decision.promoted:
            decision.numbers["published_path"] = _install(session, store, slot_name, slot, run_id, evaluation_id)
        _record(session, slot_name, decision.action, decision.reason, decision.numbers, run_id,
                champion["run_id"] if champion else None, decided_by)
    return decision


def promote_by_hand(store: Store, slot_name: str, slot: Slot, run_id: int, user: str = "cli") -> Decision:
    """Make `run_id` the champion whatever its metrics (recorded as a manual decision with the numbers)."""
    champion = champion_of(store, slot_name)
    with store.session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"no training run {run_id}")
        if run.status != "succeeded":
            raise ValueError(f"training run {run_id} is {run.status}; only a succeeded run can be promoted")
        evaluation = latest_evaluation(session, run_id)
        metrics = evaluation.metrics.get("trained", {}) if evaluation else {}
        numbers = decide(slot, metrics, champion["metrics"] if champion else None).numbers
        numbers.update(challenger_evaluation_id=evaluation.id if evaluation else None,
                       champion_evaluation_id=champion["evaluation_id"] if champion else None)
        numbers["published_path"] = _install(session, store, slot_name, slot, run_id, evaluation.id if evaluation else None)
        reason = f"promoted by hand by {user}" + ("" if evaluation else " (run not evaluated)")
        _record(session, slot_name, "manual", reason, numbers, run_id, champion["run_id"] if champion else None, user)
    return Decision("manual", reason, numbers)


def champion_history(session, slot: str) -> list[tuple[int, int | None]]:
    """The stack of (run_id, evaluation_id) champions, replayed from the decisions (rollback pops)."""
    stack: list[tuple[int, int | None]] = []
    rows = session.scalars(select(PromotionDecision).where(PromotionDecision.slot == slot)
                           .order_by(PromotionDecision.id)).all()
    for row in rows:
        if row.action in ("promoted", "manual"):
            stack.append((row.challenger_run_id, row.numbers.get("challenger_evaluation_id")))
        elif row.action == "rollback" and stack:
            stack.pop()
    return stack


def rollback(store: Store, slot_name: str, slot: Slot, user: str = "cli") -> dict[str, Any]:
    """Restore the champion before the current one (weights re-published, decision recorded)."""
    with store.session() as session:
        current = session.get(Champion, slot_name)
        history = champion_history(session, slot_name)
        if current is None:
            raise LookupError(f"slot {slot_name!r} has no champion to roll back")
        if len(history) < 2:
            raise LookupError(f"slot {slot_name!r} has no earlier champion than run {current.run_id}")
        run_id, evaluation_id = history[-2]
        replaced = current.run_id
        path = _install(session, store, slot_name, slot, run_id, evaluation_id)
        reason = f"rolled back by {user}: run {replaced} → run {run_id}"
        _record(session, slot_name, "rollback", reason, {"published_path": path, "challenger_evaluation_id": evaluation_id},
                run_id, replaced, user)
        return {"slot": slot_name, "run_id": run_id, "replaced_run_id": replaced, "published_path": path,
                "reason": reason}


def decisions(store: Store, slot: str, limit: int = 20) -> list[dict[str, Any]]:
    with store.session() as session:
        rows = session.scalars(select(PromotionDecision).where(PromotionDecision.slot == slot)
                               .order_by(PromotionDecision.id.desc()).limit(limit)).all()
        return [{"id": r.id, "action": r.action, "reason": r.reason, "challenger_run_id": r.challenger_run_id,
                 "champion_run_id": r.champion_run_id, "decided_by": r.decided_by,
                 "created_at": r.created_at.isoformat()} for r in rows]



