"""Review sessions: a curator walks a snapshot of the ids a grid filter matched when they started.

The snapshot fixes the order, so marking an image reviewed (which moves it out of an "unreviewed"
filter) or any other edit never shifts next/previous. The session keeps the curator's position,
so a walk can be resumed later; "next unreviewed" skips within the snapshot.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Member, ReviewSession
from store.queries import GridFilter, NotFound, sorted_ids

MAX_SNAPSHOT = 20_000  # ids kept per session (about 140 kB of JSON)
REUSE_MINUTES = 30


def start_review(session: Session, user: str, dataset: int, f: GridFilter) -> ReviewSession:
    """A new session over the members `f` matches now, in the grid's order (at most MAX_SNAPSHOT)."""
    ids = sorted_ids(session, dataset, f, MAX_SNAPSHOT)
    now = datetime.now(timezone.utc)
    review = ReviewSession(user=user, dataset_id=dataset, params=f.to_params(), member_ids=ids, position=0,
                           created_at=now, updated_at=now)
    session.add(review)
    session.flush()
    return review


def review_for_member(session: Session, user: str, dataset: int, f: GridFilter, member_id: int) -> ReviewSession:
    """The user's recent session over the same filter that holds `member_id`, or a new one."""
    since = datetime.now(timezone.utc) - timedelta(minutes=REUSE_MINUTES)
    recent = session.scalars(select(ReviewSession).where(
        ReviewSession.user == user, ReviewSession.dataset_id == dataset, ReviewSession.created_at >= since)
        .order_by(ReviewSession.id.desc()).limit(5))
    for review in recent:
        if review.params == f.to_params() and member_id in review.member_ids:
            return review
    return start_review(session, user, dataset, f)


def get_review(session: Session, review_id: int, user: str) -> ReviewSession:
    review = session.get(ReviewSession, review_id)
    if review is None or review.user != user:
        raise NotFound(f"review session {review_id} not found (sessions belong to the curator who started them)")
    return review


def place(session: Session, review: ReviewSession, member_id: int) -> dict[str, Any]:
    """Where `member_id` sits in the session — position, total, previous and next ids — and remember it."""
    ids = review.member_ids
    try:
        position = ids.index(member_id)
    except ValueError:
        raise NotFound(f"image {member_id} is not in review session {review.id}") from None
    if review.position != position:
        review.position = position
        review.updated_at = datetime.now(timezone.utc)
    return {"id": review.id, "position": position + 1, "total": len(ids),
            "prev_id": ids[position - 1] if position > 0 else None,
            "next_id": ids[position + 1] if position + 1 < len(ids) else None,
            "params": review.params}


def next_unreviewed(session: Session, review: ReviewSession, after: int = -1) -> int | None:
    """The first id after position `after` (0-based) that nobody has reviewed yet (None: all done)."""
    rest = review.member_ids[after + 1:]
    for start in range(0, len(rest), 500):
        part = rest[start:start + 500]
        open_ = set(session.scalars(select(Member.id).where(Member.id.in_(part), Member.reviewed_at.is_(None))))
        for member_id in part:
            if member_id in open_:
                return member_id
    return None


def latest_review(session: Session, user: str, dataset: int) -> ReviewSession | None:
    """The user's most recently used session on this dataset (for "resume")."""
    return session.scalars(select(ReviewSession).where(ReviewSession.user == user,
                                                       ReviewSession.dataset_id == dataset)
                           .order_by(ReviewSession.updated_at.desc(), ReviewSession.id.desc()).limit(1)).first()
