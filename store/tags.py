"""Writing what tagging, captioning and scoring steps suggest into a member's working state.

The rule curators rely on: a model run never overwrites or deletes their work. A tag that is
accepted or rejected, or that a person added (source "human:<user>"), stays as it is; a caption
chosen by a person ("human:<user>") or read from a sidecar file ("sidecar…") stays the member's
caption. Model suggestions live beside them and are replaced by the next run of the same model.
"""

from __future__ import annotations

import math
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Caption, Member, Score, Tag, utcnow

TEXT_LIMIT = 200  # tags.text column width


class Suggestion(Protocol):  # preprocess.steps.TagSuggestion has this shape; store imports no step code
    text: str
    confidence: float
    category: str


def is_protected(tag: Tag) -> bool:
    """A tag a person decided on or wrote: model runs leave it alone."""
    return tag.status in ("accepted", "rejected") or tag.source.startswith("human:")


def caption_is_human(source: str | None) -> bool:
    return bool(source) and (source.startswith(("human:", "sidecar")))


def _member(session: Session, member_id: int) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise ValueError(f"member {member_id} does not exist")
    return member


def apply_model_tags(session: Session, member_id: int, source: str, suggestions: list[Suggestion]) -> dict[str, int]:
    """Record a model run's tags for a member; returns counts added/updated/removed/protected.

    `source` names the model ("model:wd14-vit-v2"). The run's order becomes the tags' positions.
    A suggestion whose text matches a tag from another model updates it only when more confident.
    Suggested tags from the same source that this run no longer suggests are deleted.
    """
    if source.startswith("human:"):
        raise ValueError(f"source {source!r}: model tags cannot be written as a person's")
    _member(session, member_id)
    existing = {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == member_id))}
    counts = {"added": 0, "updated": 0, "removed": 0, "protected": 0}
    now = utcnow()
    seen: set[str] = set()
    for position, suggestion in enumerate(suggestions):
        text = suggestion.text.strip()
        if not text or text in seen:
            continue
        if len(text) > TEXT_LIMIT:
            raise ValueError(f"tag {text[:40]!r}…: longer than {TEXT_LIMIT} characters")
        seen.add(text)
        confidence = float(suggestion.confidence)
        tag = existing.get(text)
        if tag is None:
            session.add(Tag(member_id=member_id, text=text, source=source, category=suggestion.category,
                            confidence=confidence, status="suggested", position=position, updated_at=now))
            counts["added"] += 1
        elif is_protected(tag):
            counts["protected"] += 1
        elif tag.source == source or (tag.confidence or 0.0) <= confidence:
            tag.source, tag.category, tag.confidence = source, suggestion.category, confidence
            tag.position, tag.updated_at, tag.updated_by = position, now, None
            counts["updated"] += 1
    for text, tag in existing.items():
        if text not in seen and tag.source == source and not is_protected(tag):
            session.delete(tag)
            counts["removed"] += 1
    session.flush()
    return counts


def apply_scores(
    session: Session, member_id: int, scores: dict[str, float], source: str, artifact_sha256: str | None = None
) -> int:
    """Set the member's scores by name (one value per name: the newest wins); returns how many were written.

    `artifact_sha256` records which image was scored (the original or a derived artifact).
    """
    _member(session, member_id)
    existing = {s.name: s for s in session.scalars(select(Score).where(Score.member_id == member_id))}
    now = utcnow()
    for name, value in scores.items():
        value = float(value)
        if math.isnan(value):  # NaN: a score that could not be measured is not a score
            raise ValueError(f"score {name!r} for member {member_id} is NaN")
        score = existing.get(name)
        if score is None:
            session.add(Score(member_id=member_id, name=name, value=value, source=source,
                              artifact_sha256=artifact_sha256, created_at=now))
        else:
            score.value, score.source, score.artifact_sha256, score.created_at = value, source, artifact_sha256, now
    session.flush()
    return len(scores)


def apply_caption(session: Session, member_id: int, text: str, source: str) -> bool:
    """Keep a captioner's text under its source; make it the member's caption unless a person chose one.

    Returns True when the member's caption changed (its revision goes up, so an editor holding
    the old revision notices).
    """
    member = _member(session, member_id)
    text = text.strip()
    row = session.scalars(select(Caption).where(Caption.member_id == member_id, Caption.source == source)).first()
    if row is None:
        session.add(Caption(member_id=member_id, text=text, source=source))
    else:
        row.text, row.created_at = text, utcnow()
    changed = False
    if not caption_is_human(member.caption_source) and (member.caption, member.caption_source) != (text, source):
        member.caption, member.caption_source = text, source
        member.revision = (member.revision or 1) + 1
        member.caption_revision = member.revision
        changed = True
    session.flush()
    return changed
