"""The prepare flow's memory: step results keyed by (input hash, step, params hash, model hash),
the artifacts they made, and applying them to members (tags, caption, scores, exclusion)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.models import Artifact, Image, Member, Score, StepResult, Tag
from store.tags import apply_caption, apply_model_tags, apply_scores

RULE_PREFIX = "rule: "  # exclusions made by pipeline rules start with this; a curator's do not


@dataclass
class MemberState:
    """Where one member stands in the pipeline while the flow runs."""

    member_id: int
    image_id: int
    source_path: str
    sha: str  # the image as it reaches the next step
    ext: str
    width: int
    height: int
    caption: str | None
    tags: list[str]
    artifact_id: int | None = None  # None: still the original
    meta: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, dict] = field(default_factory=dict)  # name → {sha256, ext} of the current image's masks
    scores: dict[str, float] = field(default_factory=dict)
    results: dict[str, int] = field(default_factory=dict)  # step id → step_results.id
    pass_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # step id → dataset-level scores
    failed: str | None = None

    def facts(self) -> dict[str, float]:
        short, long = sorted((self.width, self.height))
        return {**self.scores, "width": self.width, "height": self.height, "short_side": short,
                "long_side": long, "aspect_ratio": long / max(short, 1), "faces": len(self.meta.get("faces") or [])}


def load_member_states(session: Session, dataset_id: int) -> list[MemberState]:
    """Active members and those a rule excluded (rules are re-evaluated); curator exclusions stay out."""
    rows = session.execute(
        select(Member, Image).join(Image, Member.image_id == Image.id)
        .where(Member.dataset_id == dataset_id, Member.status.in_(("active", "excluded")))
        .order_by(Member.id)
    ).all()
    states = []
    for member, image in rows:
        if member.status == "excluded" and not (member.excluded_reason or "").startswith(RULE_PREFIX):
            continue
        tags = [t.text for t in sorted(member.tags, key=lambda t: t.position) if t.status != "rejected"]
        states.append(MemberState(member.id, image.id, member.source_path, image.sha256, image.ext,
                                  image.width, image.height, member.caption, tags))
    return states


def find_results(session: Session, step: str, params_hash: str, input_shas: list[str]) -> dict[str, list[StepResult]]:
    """Every recorded result of this step and params for these inputs, by input hash."""
    found: dict[str, list[StepResult]] = defaultdict(list)
    for start in range(0, len(input_shas), 500):
        chunk = input_shas[start:start + 500]
        for row in session.scalars(select(StepResult).where(
                StepResult.step == step, StepResult.params_hash == params_hash, StepResult.input_sha256.in_(chunk))):
            found[row.input_sha256].append(row)
    return found


def record_result(session: Session, state: MemberState, step: str, params: dict, params_hash: str,
                  backend: str, model_id: str | None, model_hash: str, fingerprint: str, result: dict) -> StepResult:
    """Record one computed result (and its artifact); replaces an earlier failure with the same key.

    The key's model part is the fingerprint of every weight file the step's parameters name
    (preprocess.steps.model_fingerprint); `model_hash` (what the step itself reports) goes to the artifact.
    """
    key = dict(input_sha256=state.sha, step=step, params_hash=params_hash, model_hash=fingerprint)
    row = session.scalar(select(StepResult).filter_by(**key)) or StepResult(**key)
    artifact_id = None
    if result["status"] == "done" and result.get("artifact"):
        made = result["artifact"]
        artifact = Artifact(sha256=made["sha256"], ext=made["ext"], width=made["width"], height=made["height"],
                            image_id=state.image_id, parent_id=state.artifact_id, step=step, params=params,
                            params_hash=params_hash, backend=backend, model_id=model_id, model_hash=model_hash,
                            meta=result.get("meta") or {})
        session.add(artifact)
        session.flush()
        artifact_id = artifact.id
    for name, made in (result.get("intermediates") or {}).items() if result["status"] == "done" else ():
        session.add(Artifact(sha256=made["sha256"], ext=made["ext"], width=made["width"], height=made["height"],
                             image_id=state.image_id, parent_id=state.artifact_id, step=step, params=params,
                             params_hash=params_hash, backend=backend, model_id=model_id, model_hash=model_hash,
                             meta={"intermediate": name}))
    if result["status"] == "done" and result.get("masks"):
        from store.masks import record_masks

        record_masks(session, result["masks"], image_id=state.image_id,
                     parent_id=artifact_id if artifact_id is not None else state.artifact_id, step=step,
                     params_hash=params_hash, backend=backend, model_id=model_id, model_hash=model_hash)
    row.status = result["status"]
    row.output_artifact_id = artifact_id
    row.output = {k: result.get(k) for k in ("meta", "tags", "caption", "scores", "artifact", "intermediates", "step_version")} \
        | {"model_id": model_id}
    if result.get("masks") is not None:
        row.output["masks"] = result["masks"]
    row.backend = backend
    row.error = result.get("error")
    row.seconds = float(result.get("seconds", 0.0))
    session.add(row)
    session.flush()
    return row


def advance(state: MemberState, row: StepResult, step_id: str, session: Session) -> None:
    """Move a member past a step using its (new or cached) result."""
    if row.status != "done":
        state.failed = f"{step_id}: {row.error}"
        return
    output = row.output or {}
    if row.output_artifact_id is not None:
        artifact = output.get("artifact") or {}
        state.sha, state.ext = artifact["sha256"], artifact["ext"]
        state.width, state.height = artifact["width"], artifact["height"]
        state.artifact_id = row.output_artifact_id
    if output.get("masks") is not None:  # the step's output image's full set (its own + carried)
        state.masks = dict(output["masks"])
    state.meta.update(output.get("meta") or {})
    state.scores.update(output.get("scores") or {})
    if output.get("caption"):
        state.caption = output["caption"]
    state.results[step_id] = row.id


def apply_to_member(session: Session, state: MemberState, exclusion: str | None,
                    accept_above: dict[str, float] | None = None) -> dict[str, int]:
    """Write a member's pipeline outcome: newest artifact, new tags/caption/scores, rule exclusion.

    Only results not applied before are written, so a re-run changes nothing and a tag a
    curator removed is not brought back by an unchanged step.
    """
    member = session.get(Member, state.member_id)
    applied = dict(member.prepared or {})
    counts = {"tags": 0, "scores": 0, "captions": 0}
    for step_id, result_id in state.results.items():
        if applied.get(step_id) == result_id:
            continue
        row = session.get(StepResult, result_id)
        output = row.output or {}
        source = f"model:{output.get('model_id') or row.backend}"
        if output.get("tags") is not None:
            apply_model_tags(session, member.id, source, [_Suggestion(**t) for t in output["tags"]])
            if (threshold := (accept_above or {}).get(step_id)) is not None:
                session.execute(update(Tag).where(Tag.member_id == member.id, Tag.source == source,
                                                  Tag.status == "suggested", Tag.confidence >= threshold)
                                .values(status="accepted", updated_by=f"auto:{step_id}"))
            counts["tags"] += 1
        if output.get("caption"):
            apply_caption(session, member.id, output["caption"], source)
            counts["captions"] += 1
        if output.get("scores"):
            apply_scores(session, member.id, output["scores"], source, row.input_sha256)
            counts["scores"] += 1
        applied[step_id] = result_id
    for step_id, scores in state.pass_scores.items():  # recomputed every run: write only what changed
        known = {sc.name: sc.value for sc in session.scalars(select(Score).where(Score.member_id == member.id))}
        changed = {k: v for k, v in scores.items() if known.get(k) is None or abs(known[k] - v) > 1e-9}
        if changed and step_id in state.results:
            row = session.get(StepResult, state.results[step_id])
            source = f"model:{(row.output or {}).get('model_id') or row.backend}"
            apply_scores(session, member.id, changed, source, row.input_sha256)
            counts["scores"] += 1
    if member.current_artifact_id != state.artifact_id and not state.failed:
        member.current_artifact_id = state.artifact_id
    if applied != (member.prepared or {}):
        member.prepared = applied
    if exclusion and member.status == "active":
        member.status, member.excluded_reason = "excluded", RULE_PREFIX + exclusion
        member.revision += 1
        member.status_revision = member.revision
    elif not exclusion and member.status == "excluded" and (member.excluded_reason or "").startswith(RULE_PREFIX):
        member.status, member.excluded_reason = "active", None
        member.revision += 1
        member.status_revision = member.revision
    return counts


@dataclass
class _Suggestion:
    text: str
    confidence: float
    category: str = "general"
