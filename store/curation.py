"""Every curator write: tags, captions, exclusions, bulk edits, tag rules — audited and concurrency-safe.

Single-image edits carry the member revision they were made on. Conflicts are judged per part: the
caption, the status (exclusion) and each tag remember the member revision of their last change, so
an edit made on an older page still goes through when another curator changed a *different* part
(their change is kept: the reply carries both), and raises `Conflict` (carrying the current state,
writing nothing) when the same part changed since. Bulk edits bump every changed member's revision
and stamp the parts they touch, so a single edit of the same part made on an older page conflicts.
"""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

import hashlib
import json

from store.audit import Conflict, chunks, members_json, now, record, snapshot
from store.bulk_fields import CAPTION_OPS, FIELD_OPS, FIELDS, apply_fields, field_targets
from store.models import Member, Tag, TagRule
from store.queries import NotFound, member_state

TAG_OPS = ("add", "remove", "rename", "accept", "reject")
BULK_OPS = TAG_OPS + FIELD_OPS
REVIEW_FIELDS = ("reviewed_at", "reviewed_by")

__all__ = ["Conflict", "CurationError", "add_tag", "set_tag_status", "remove_tag", "edit_caption",
           "set_excluded", "mark_reviewed", "bulk_edit", "rename_tag", "blacklist_tag", "BULK_OPS"]


class CurationError(ValueError):
    """An edit that makes no sense (empty tag, unknown operation); the message names the field."""


class PreviewChanged(Exception):
    """A bulk edit applied with a preview token whose images are no longer the ones it would change."""


def clean_tag(text: str | None, field: str = "tag") -> str:
    text = (text or "").strip()
    if not text:
        raise CurationError(f"{field}: empty")
    if len(text) > 200:
        raise CurationError(f"{field}: longer than 200 characters")
    return text


class _Stale(Exception):
    def __init__(self, what: str):
        self.what = what


def _claim(session: Session, member_id: int, revision: int, user: str, stale: Callable[[], str | None],
           review: bool = True) -> tuple[int, bool]:
    """Bump the member's revision (locking its row until commit); returns (new revision, merged).

    When the edit was made on an older revision, `stale()` says which touched part changed since
    (→ Conflict, nothing written) or None (the edit merges with the other changes).
    """
    values: dict[str, Any] = {"revision": Member.revision + 1}
    if review:
        values.update(reviewed_at=now(), reviewed_by=user)
    try:
        with session.begin_nested():
            new = session.execute(update(Member).where(Member.id == member_id).values(**values)
                                  .returning(Member.revision).execution_options(synchronize_session=False)
                                  ).scalar_one_or_none()
            if new is None:
                raise NotFound(f"member {member_id} not found")
            merged = revision != new - 1
            if revision > new - 1:
                raise _Stale("the image")
            if merged and (what := stale()):
                raise _Stale(what)
    except _Stale as error:
        current = member_state(session, member_id)
        last = current.get("last_change") or {}
        who = f" by {last['user']} ({last['action']})" if last else ""
        raise Conflict(member_id, current, f"{error.what} was changed{who} since you loaded image {member_id} "
                                           f"(now at revision {current['revision']}); nothing was overwritten")
    return new, merged


def _edit(session: Session, member_id: int, revision: int, user: str, action: str,
          fields: tuple[str, ...], texts: list[str], change: Callable[[Member, int], None],
          stale: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    if session.get(Member, member_id) is None:
        raise NotFound(f"member {member_id} not found")
    all_fields = (*fields, *REVIEW_FIELDS)
    before = snapshot(session, [member_id], all_fields, texts)
    new, merged = _claim(session, member_id, revision, user, stale)
    member = session.get(Member, member_id, populate_existing=True)
    change(member, new)
    session.flush()
    after = snapshot(session, [member_id], all_fields, texts)
    record(session, user, action, member.dataset_id, f"member:{member_id}",
           members_json(before), members_json(after))
    state = member_state(session, member_id)
    state["merged"] = merged
    return state


def _tag_changed(session: Session, member_id: int, text: str, revision: int, missing: str | None) -> str | None:
    """Which part changed since `revision` (a phrase for the conflict message), or None."""
    tag = _tag(session, member_id, text)
    if tag is None:
        return f"the tag {text!r} (removed since)" if missing else None
    return f"the tag {text!r}" if tag.revision > revision else None


def _tag(session: Session, member_id: int, text: str) -> Tag | None:
    return session.scalar(select(Tag).where(Tag.member_id == member_id, Tag.text == text))


def add_tag(session: Session, member_id: int, text: str, revision: int, user: str) -> dict[str, Any]:
    """Add an accepted human tag (or accept the tag if the member already has it)."""
    text = clean_tag(text)

    def change(member: Member, new: int) -> None:
        tag = _tag(session, member_id, text)
        if tag is None:
            position = session.scalar(select(func.max(Tag.position)).where(Tag.member_id == member_id))
            session.add(Tag(member_id=member_id, text=text, source=f"human:{user}", status="accepted",
                            position=(position or 0) + 1, updated_by=user, updated_at=now(), revision=new))
        else:
            tag.status, tag.updated_by, tag.updated_at, tag.revision = "accepted", user, now(), new

    def stale() -> str | None:  # someone else added it too: same wish, merge; they rejected it: conflict
        tag = _tag(session, member_id, text)
        return f"the tag {text!r}" if tag is not None and tag.revision > revision and tag.status != "accepted" else None

    return _edit(session, member_id, revision, user, "tag_add", (), [text], change, stale)


def set_tag_status(session: Session, member_id: int, text: str, status: str, revision: int,
                   user: str) -> dict[str, Any]:
    """Accept or reject (or return to suggested) one tag of one member."""
    if status not in ("accepted", "rejected", "suggested"):
        raise CurationError(f"status: expected accepted, rejected or suggested, got {status!r}")
    if _tag(session, member_id, text) is None:
        raise NotFound(f"member {member_id} has no tag {text!r}")

    def change(member: Member, new: int) -> None:
        tag = _tag(session, member_id, text)
        if tag is None:  # a model run dropped the suggestion meanwhile
            raise NotFound(f"member {member_id} has no tag {text!r}")
        tag.status, tag.updated_by, tag.updated_at, tag.revision = status, user, now(), new

    def stale() -> str | None:
        return _tag_changed(session, member_id, text, revision, missing="yes")

    action = {"accepted": "tag_accept", "rejected": "tag_reject", "suggested": "tag_accept"}[status]
    return _edit(session, member_id, revision, user, action, (), [text], change, stale)


def remove_tag(session: Session, member_id: int, text: str, revision: int, user: str) -> dict[str, Any]:
    if _tag(session, member_id, text) is None:
        raise NotFound(f"member {member_id} has no tag {text!r}")

    def change(member: Member, new: int) -> None:
        session.execute(delete(Tag).where(Tag.member_id == member_id, Tag.text == text)
                        .execution_options(synchronize_session=False))

    def stale() -> str | None:
        return _tag_changed(session, member_id, text, revision, missing="yes")

    return _edit(session, member_id, revision, user, "tag_remove", (), [text], change, stale)


def edit_caption(session: Session, member_id: int, caption: str, revision: int, user: str) -> dict[str, Any]:
    caption = (caption or "").strip()

    def change(member: Member, new: int) -> None:
        member.caption, member.caption_source, member.caption_revision = caption, f"human:{user}", new

    def stale() -> str | None:
        current = session.scalar(select(Member.caption_revision).where(Member.id == member_id))
        return "the caption" if current > revision else None

    return _edit(session, member_id, revision, user, "caption_edit", ("caption", "caption_source"), [], change,
                 stale)


def set_excluded(session: Session, member_id: int, excluded: bool, reason: str | None, revision: int,
                 user: str) -> dict[str, Any]:
    """Exclude an image from the dataset (with a reason) or include it again."""
    reason = (reason or "").strip() or f"excluded by {user}"

    def change(member: Member, new: int) -> None:
        member.status = "excluded" if excluded else "active"
        member.excluded_reason = reason if excluded else None
        member.status_revision = new

    def stale() -> str | None:
        current = session.scalar(select(Member.status_revision).where(Member.id == member_id))
        return "the status (excluded or not)" if current > revision else None

    return _edit(session, member_id, revision, user, "exclude" if excluded else "include",
                 ("status", "excluded_reason"), [], change, stale)


def mark_reviewed(session: Session, member_id: int, revision: int, user: str) -> dict[str, Any]:
    return _edit(session, member_id, revision, user, "review", (), [], lambda member, new: None)


def _having(session: Session, ids: list[int], text: str, status_not: str | None = None) -> set[int]:
    found: set[int] = set()
    for part in chunks(ids):
        query = select(Tag.member_id).where(Tag.member_id.in_(part), Tag.text == text)
        if status_not:
            query = query.where(Tag.status != status_not)
        found.update(session.scalars(query))
    return found


def bulk_targets(session: Session, ids: list[int], op: str, text: str, new: str | None = None) -> list[int]:
    """The members among `ids` that the operation would actually change."""
    if op == "add":
        already = _having(session, ids, text)
        accepted = already - _having(session, ids, text, status_not="accepted")
        return [i for i in ids if i not in accepted]
    if op in ("remove", "rename"):
        having = _having(session, ids, text)
    elif op in ("accept", "reject"):
        having = _having(session, ids, text, status_not=op + "ed")
    else:
        raise CurationError(f"op: expected one of {', '.join(BULK_OPS)}, got {op!r}")
    return [i for i in ids if i in having]


def _apply(session: Session, targets: list[int], op: str, text: str, new: str | None, user: str) -> None:
    stamp = {"updated_by": user, "updated_at": now()}
    for part in chunks(targets):
        tags = update(Tag).where(Tag.member_id.in_(part), Tag.text == text).execution_options(
            synchronize_session=False)
        if op in ("accept", "reject"):
            session.execute(tags.values(status=op + "ed", **stamp))
        elif op == "remove":
            session.execute(delete(Tag).where(Tag.member_id.in_(part), Tag.text == text)
                            .execution_options(synchronize_session=False))
        elif op == "add":
            session.execute(tags.values(status="accepted", **stamp))
            have = set(session.scalars(select(Tag.member_id).where(Tag.member_id.in_(part), Tag.text == text)))
            top = dict(session.execute(select(Tag.member_id, func.max(Tag.position))
                                       .where(Tag.member_id.in_(part)).group_by(Tag.member_id)).all())
            rows = [{"member_id": m, "text": text, "source": f"human:{user}", "status": "accepted",
                     "category": "general", "position": (top.get(m) or 0) + 1, **stamp}
                    for m in part if m not in have]
            if rows:
                session.execute(insert(Tag), rows)
        elif op == "rename":
            # members that already have the new tag: merge (keep it, accept it if the old one was)
            both = set(session.scalars(select(Tag.member_id).where(Tag.member_id.in_(part), Tag.text == new)))
            if both:
                accepted = set(session.scalars(select(Tag.member_id).where(
                    Tag.member_id.in_(both), Tag.text == text, Tag.status == "accepted")))
                if accepted:
                    session.execute(update(Tag).where(Tag.member_id.in_(accepted), Tag.text == new)
                                    .values(status="accepted", **stamp)
                                    .execution_options(synchronize_session=False))
                session.execute(delete(Tag).where(Tag.member_id.in_(both), Tag.text == text)
                                .execution_options(synchronize_session=False))
            session.execute(tags.values(text=new, **stamp))
        session.execute(update(Member).where(Member.id.in_(part)).values(revision=Member.revision + 1)
                        .execution_options(synchronize_session=False))
        stamp_tags(session, part, [t for t in (text, new) if t])


def stamp_tags(session: Session, ids: list[int], texts: list[str]) -> None:
    """Mark these tags of these members as changed at their member's (new) revision."""
    member_revision = select(Member.revision).where(Member.id == Tag.member_id).scalar_subquery()
    session.execute(update(Tag).where(Tag.member_id.in_(ids), Tag.text.in_(texts)).values(revision=member_revision)
                    .execution_options(synchronize_session=False))


def bulk_edit(session: Session, dataset_id: int, ids: list[int], op: str, text: str, new: str | None,
              user: str, *, dry_run: bool = False, action: str | None = None,
              rule: dict[str, Any] | None = None, preview: str | None = None) -> dict[str, Any]:
    """Apply one operation (a tag op, a caption op or exclude/include) to the members `ids` of a dataset.

    `dry_run` only counts, and returns a `preview` token naming exactly the images that would change;
    applied with that token, the edit changes those images or none (PreviewChanged when they differ now).
    Returns {"matched": how many were asked, "changed": how many change, "preview", "audit_id"}.
    """
    if op in FIELD_OPS:
        text = (text or "").strip()
        if op in CAPTION_OPS and not text:
            raise CurationError("text: empty (the trigger word or phrase)")
        if op != "caption_replace":
            new = None
    else:
        text = clean_tag(text)
        if op not in TAG_OPS:
            raise CurationError(f"op: expected one of {', '.join(BULK_OPS)}, got {op!r}")
    if op == "rename":
        new = clean_tag(new, "new tag")
        if new == text:
            raise CurationError("new tag: same as the tag")
    ids = sorted(set(ids))
    inside = set()
    for part in chunks(ids):
        inside.update(session.scalars(select(Member.id).where(Member.id.in_(part),
                                                              Member.dataset_id == dataset_id)))
    if len(inside) != len(ids):
        missing = sorted(set(ids) - inside)[:5]
        raise NotFound(f"members not in this dataset: {missing}")
    fields = op in FIELD_OPS
    targets = field_targets(session, ids, op, text, new) if fields else bulk_targets(session, ids, op, text, new)
    token = preview_token(op, text, new, targets)
    result: dict[str, Any] = {"matched": len(ids), "changed": len(targets), "op": op, "tag": text, "new": new,
                              "preview": token}
    if dry_run:
        return result
    if preview is not None and preview != token:
        raise PreviewChanged(f"the images this edit would change are not the ones previewed (now {len(targets):,} "
                             f"of {len(ids):,}; someone edited meanwhile): nothing was changed; preview again")
    texts = [] if fields else ([text, new] if new else [text])
    columns = FIELDS.get(op, ())
    before = members_json(snapshot(session, targets, columns, texts))
    if fields:
        apply_fields(session, targets, op, text, new, user)
    else:
        _apply(session, targets, op, text, new, user)
    after = members_json(snapshot(session, targets, columns, texts))
    if rule:
        existing = session.scalar(select(TagRule).where(TagRule.dataset_id == dataset_id,
                                                        TagRule.kind == rule["kind"], TagRule.text == text))
        if existing is None:
            session.add(TagRule(dataset_id=dataset_id, kind=rule["kind"], text=text,
                                replacement=rule.get("replacement"), created_by=user))
            after["rule"] = {"dataset_id": dataset_id, "kind": rule["kind"], "text": text,
                             "replacement": rule.get("replacement")}
        else:
            before["rule"] = {"kind": existing.kind, "replacement": existing.replacement}
            existing.replacement = rule.get("replacement")
    target = f"tag:{text}" if rule else f"bulk:{len(targets)} members"
    entry = record(session, user, action or f"bulk_{op}", dataset_id, target, before, after)
    result["audit_id"] = entry.id
    return result


def preview_token(op: str, text: str, new: str | None, targets: list[int]) -> str:
    """Names one exact bulk edit: the operation and the images it changes."""
    return hashlib.sha256(json.dumps([op, text, new, targets]).encode()).hexdigest()[:32]


def _dataset_members_with(session: Session, dataset_id: int, text: str) -> list[int]:
    return list(session.scalars(select(Tag.member_id).join(Member, Member.id == Tag.member_id)
                                .where(Member.dataset_id == dataset_id, Tag.text == text)))


def rename_tag(session: Session, dataset_id: int, old: str, new: str, user: str, *,
               merge: bool = False, dry_run: bool = False, preview: str | None = None) -> dict[str, Any]:
    """Rename a tag everywhere in the dataset (merging into `new` where it exists) and record the rule."""
    old, new = clean_tag(old), clean_tag(new, "new tag")
    if merge and not _dataset_members_with(session, dataset_id, new):
        raise NotFound(f"cannot merge into {new!r}: no image of this dataset has that tag")
    ids = _dataset_members_with(session, dataset_id, old)
    return bulk_edit(session, dataset_id, ids, "rename", old, new, user, dry_run=dry_run,
                     action="tag_merge" if merge else "tag_rename",
                     rule={"kind": "rename", "replacement": new}, preview=preview)


def blacklist_tag(session: Session, dataset_id: int, text: str, user: str, *,
                  dry_run: bool = False, preview: str | None = None) -> dict[str, Any]:
    """Blacklist a tag: later model runs drop it, and every current copy is rejected."""
    text = clean_tag(text)
    ids = _dataset_members_with(session, dataset_id, text)
    return bulk_edit(session, dataset_id, ids, "reject", text, None, user, dry_run=dry_run,
                     action="tag_blacklist", rule={"kind": "blacklist"}, preview=preview)
