"""Bulk edits of image fields rather than tags: a trigger word prepended, appended or replaced in captions,
and images excluded or included again.

Like tag bulk edits, each changed member gets a new revision and the part it changed (caption or
status) is stamped with it, so a single edit made on an older page conflicts, and the audit entry
holds the fields before and after, so the whole edit can be undone.
"""

from __future__ import annotations

import re

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from store.audit import chunks
from store.models import Member

CAPTION_OPS = ("caption_prepend", "caption_append", "caption_replace")
STATUS_OPS = ("exclude", "include")
FIELD_OPS = CAPTION_OPS + STATUS_OPS
MEMBERS = Member.__table__  # Core statements: one executemany per chunk, no ORM bookkeeping
FIELDS = {**{op: ("caption", "caption_source") for op in CAPTION_OPS},
          **{op: ("status", "excluded_reason") for op in STATUS_OPS}}


def _tidy(caption: str) -> str:
    """A caption after a replacement: no doubled or dangling commas, single spaces."""
    caption = re.sub(r"\s*,\s*(,\s*)+", ", ", caption)
    caption = re.sub(r"\s{2,}", " ", caption)
    return caption.strip().strip(",").strip()


def new_caption(op: str, caption: str | None, text: str, new: str | None) -> str:
    """What one caption becomes. Prepend/append join with ", " (the trigger-word convention)."""
    caption = (caption or "").strip()
    if op == "caption_prepend":
        return f"{text}, {caption}" if caption else text
    if op == "caption_append":
        return f"{caption}, {text}" if caption else text
    return _tidy(caption.replace(text, new or ""))


def _changes(op: str, caption: str | None, status: str, text: str, new: str | None) -> bool:
    if op == "exclude":
        return status != "excluded"
    if op == "include":
        return status == "excluded"
    caption = (caption or "").strip()
    if op == "caption_prepend":
        return not (caption == text or caption.startswith(f"{text},") or caption.startswith(f"{text} "))
    if op == "caption_append":
        return not (caption == text or caption.endswith(f", {text}") or caption.endswith(f" {text}"))
    return text in caption and new_caption(op, caption, text, new) != caption


def field_targets(session: Session, ids: list[int], op: str, text: str, new: str | None) -> list[int]:
    """The members among `ids` that the operation would change (already prefixed, excluded… are left out)."""
    out: list[int] = []
    for part in chunks(ids):
        rows = session.execute(select(Member.id, Member.caption, Member.status).where(Member.id.in_(part)))
        out.extend(i for i, caption, status in rows if _changes(op, caption, status, text, new))
    return sorted(out)


def apply_fields(session: Session, targets: list[int], op: str, text: str, new: str | None, user: str) -> None:
    for part in chunks(targets):
        revisions = dict(session.execute(
            update(Member).where(Member.id.in_(part)).values(revision=Member.revision + 1)
            .returning(Member.id, Member.revision).execution_options(synchronize_session=False)).all())
        if op in STATUS_OPS:
            excluded = op == "exclude"
            rows = [{"b_id": i, "b_rev": revisions[i]} for i in part]
            session.execute(update(MEMBERS).where(MEMBERS.c.id == bindparam("b_id")).values(
                status="excluded" if excluded else "active",
                excluded_reason=(text or f"excluded by {user}") if excluded else None,
                status_revision=bindparam("b_rev")), rows)
            continue
        captions = dict(session.execute(select(Member.id, Member.caption).where(Member.id.in_(part))).all())
        rows = [{"b_id": i, "b_rev": revisions[i], "b_caption": new_caption(op, captions[i], text, new)} for i in part]
        session.execute(update(MEMBERS).where(MEMBERS.c.id == bindparam("b_id")).values(
            caption=bindparam("b_caption"), caption_source=f"human:{user}", caption_revision=bindparam("b_rev")), rows)
