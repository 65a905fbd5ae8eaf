"""The audit log of curator changes: snapshots before and after, and undo of a user's last change.

A change's `before` and `after` hold {"members": {id: snapshot}} where a snapshot has the member's
revision, the member fields the change touched and the touched tags ({text: row or None when
absent}); dataset-wide tag rules add {"rule": {...}}. That is exactly enough to put things back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from store.models import AuditEntry, Member, Tag, TagRule

TAG_FIELDS = ("source", "category", "confidence", "status", "position", "updated_by")
MEMBER_FIELDS = ("status", "excluded_reason", "caption", "caption_source", "reviewed_at", "reviewed_by")
UNDOABLE = {"tag_add", "tag_accept", "tag_reject", "tag_remove", "caption_edit", "exclude", "include",
            "review", "bulk_add", "bulk_remove", "bulk_rename", "bulk_accept", "bulk_reject",
            "tag_rename", "tag_merge", "tag_blacklist", "bulk_caption_prepend", "bulk_caption_append",
            "bulk_caption_replace", "bulk_exclude", "bulk_include"}
CHUNK = 500


class Conflict(Exception):
    """Someone changed the member since the edit's revision; carries the member's current state."""

    def __init__(self, member_id: int, current: dict[str, Any], message: str | None = None):
        self.member_id = member_id
        self.current = current
        last = current.get("last_change") or {}
        who = f" by {last['user']} ({last['action']})" if last else ""
        super().__init__(message or f"image {member_id} was changed{who} since you loaded it "
                                    f"(now at revision {current.get('revision')}); nothing was overwritten")


class NothingToUndo(LookupError):
    pass


def now() -> datetime:
    return datetime.now(timezone.utc)


def chunks(ids: list[int], size: int = CHUNK) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def snapshot(session: Session, ids: list[int], fields: Iterable[str] = (),
             texts: Iterable[str] = ()) -> dict[int, dict[str, Any]]:
    """Revision, chosen member fields and chosen tags (None when absent) of each member."""
    fields, texts = list(fields), list(dict.fromkeys(texts))
    out: dict[int, dict[str, Any]] = {}
    for part in chunks(ids):
        columns = [Member.id, Member.revision, *(getattr(Member, f) for f in fields)]
        for row in session.execute(select(*columns).where(Member.id.in_(part))):
            out[row[0]] = {"revision": row[1], "fields": {f: _plain(v) for f, v in zip(fields, row[2:])},
                           "tags": {t: None for t in texts}}
        if texts:
            query = select(Tag.member_id, Tag.text, *(getattr(Tag, f) for f in TAG_FIELDS)).where(
                Tag.member_id.in_(part), Tag.text.in_(texts))
            for row in session.execute(query):
                out[row[0]]["tags"][row[1]] = dict(zip(TAG_FIELDS, row[2:]))
    return out


def record(session: Session, user: str, action: str, dataset_id: int | None, target: str,
           before: dict[str, Any], after: dict[str, Any]) -> AuditEntry:
    entry = AuditEntry(user=user, action=action, dataset_id=dataset_id, target=target,
                       before=before, after=after, at=now())
    session.add(entry)
    session.flush()
    return entry


def members_json(snaps: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {"members": {str(k): v for k, v in snaps.items()}}


class CannotUndo(LookupError):
    """A change that cannot be undone as asked (overwritten since, someone else's, or needs confirming)."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


REVIEW_FIELDS = ("reviewed_at", "reviewed_by")


def _compared(action: str, fields: Iterable[str]) -> list[str]:
    # every edit stamps "reviewed by"; only undoing a review itself puts the review fields back
    return ["reviewed_by"] if action == "review" else [f for f in fields if f not in REVIEW_FIELDS]


def _differs(action: str, now_snap: dict[str, Any], then: dict[str, Any]) -> tuple[str, str, str] | None:
    """Which touched part no longer holds what the change left there, as (phrase, "fields"|"tags", key);
    None: all still as it left them."""
    for name in _compared(action, then.get("fields", {})):
        if now_snap["fields"].get(name) != then["fields"].get(name):
            return name.replace("_", " "), "fields", name
    for text, row in then.get("tags", {}).items():
        current = now_snap["tags"].get(text)
        if (current is None) != (row is None) or (row is not None and current["status"] != row["status"]):
            return f"tag {text!r}", "tags", text
    return None


def _who_changed_later(session: Session, entry: AuditEntry, member_id: int, kind: str, key: str) -> str:
    """Who changed that part of the image after `entry`: the first later change whose snapshot holds it."""
    later = session.scalars(select(AuditEntry).where(
        AuditEntry.id > entry.id, AuditEntry.action.in_(UNDOABLE),
        or_(AuditEntry.target == f"member:{member_id}",
            and_(AuditEntry.dataset_id == entry.dataset_id, ~AuditEntry.target.startswith("member:"))))
        .order_by(AuditEntry.id).limit(500))
    for e in later:
        snap = (e.after or {}).get("members", {}).get(str(member_id))
        if snap and key in snap.get(kind, {}):
            return f"by {e.user} ({e.action} at {e.at:%Y-%m-%d %H:%M}, audit #{e.id})"
    return "by a later bulk edit, tag rule or model run"


def _stamp(value: Any) -> tuple:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value.replace(tzinfo=None) if isinstance(value, datetime) else value,)


def _restore(session: Session, member_id: int, action: str, snap: dict[str, Any], left: dict[str, Any]) -> None:
    """Put back the member fields and tags of `snap`, as a new revision (revisions only go up).

    The review stamp goes back too when it is still the one this change (`left`) put there."""
    reviewed = session.execute(select(Member.reviewed_at, Member.reviewed_by).where(Member.id == member_id)).one()
    stamped = left.get("fields", {})
    own_stamp = "reviewed_by" in stamped and (_stamp(reviewed[0]), reviewed[1]) == (
        _stamp(stamped.get("reviewed_at")), stamped.get("reviewed_by"))
    new = session.execute(update(Member).where(Member.id == member_id).values(revision=Member.revision + 1)
                          .returning(Member.revision).execution_options(synchronize_session=False)).scalar_one()
    values: dict[str, Any] = {}
    fields = snap.get("fields", {})
    names = [f for f in fields if f not in REVIEW_FIELDS]
    for name in names + (list(REVIEW_FIELDS) if own_stamp or action == "review" else []):
        value = fields.get(name)
        if name == "reviewed_at" and isinstance(value, str):
            value = datetime.fromisoformat(value)
        values[name] = value
    if "caption" in values:
        values["caption_revision"] = new
    if "status" in values:
        values["status_revision"] = new
    if values:
        session.execute(update(Member).where(Member.id == member_id).values(**values)
                        .execution_options(synchronize_session=False))
    for text, row in snap.get("tags", {}).items():
        session.execute(delete(Tag).where(Tag.member_id == member_id, Tag.text == text)
                        .execution_options(synchronize_session=False))
        if row is not None:
            session.execute(insert(Tag).values(member_id=member_id, text=text, updated_at=now(), revision=new,
                                               **{**row, "updated_by": row.get("updated_by")}))


def why_not(session: Session, entry: AuditEntry, user: str, may_undo_others: bool = False) -> str | None:
    """Why `user` cannot undo this change now (None: they can). Checks every image it touched."""
    if entry.undone_at is not None:
        return f"audit #{entry.id} was undone already"
    if entry.action not in UNDOABLE:
        return f"{entry.action} cannot be undone"
    if entry.user != user and not may_undo_others:
        return f"audit entry {entry.id} is {entry.user}'s change; only an admin may undo it"
    after = entry.after.get("members", {})
    ids = [int(k) for k in after]
    for part in chunks(ids):
        texts = {t for k in part for t in after[str(k)].get("tags", {})}
        fields = {f for k in part for f in after[str(k)].get("fields", {})}
        current = snapshot(session, part, fields, texts)
        for member_id in part:
            if member_id not in current:
                return f"cannot undo {entry.action} (audit #{entry.id}): image {member_id} is gone"
            found = _differs(entry.action, current[member_id], after[str(member_id)])
            if found:
                what, kind, key = found
                return (f"cannot undo {entry.action} (audit #{entry.id}): the {what} of image {member_id} was "
                        f"changed again {_who_changed_later(session, entry, member_id, kind, key)}; undo that "
                        f"change first, or edit by hand")
    return None


def undo(session: Session, user: str, entry_id: int | None = None, *, confirm: int | None = None,
         may_undo_others: bool = False) -> dict[str, Any]:
    """Undo one change: `entry_id`, or `user`'s newest change not undone yet.

    Refused (CannotUndo, saying why) when a part it touched was changed again since — by whom — and,
    for a change of more than one image, until `confirm` names that count.
    """
    query = select(AuditEntry).where(AuditEntry.undone_at.is_(None), AuditEntry.action.in_(UNDOABLE))
    if entry_id is None:
        query = query.where(AuditEntry.user == user).order_by(AuditEntry.id.desc()).limit(1)
    else:
        query = query.where(AuditEntry.id == entry_id)
    entry = session.scalar(query.with_for_update())
    if entry is None:
        if entry_id is None:
            raise NothingToUndo(f"{user} has no change left to undo")
        raise NothingToUndo(f"audit entry {entry_id} is not an undoable change, or was undone already")
    ids = [int(k) for k in entry.after.get("members", {})]
    if reason := why_not(session, entry, user, may_undo_others):
        raise CannotUndo(reason, entry=entry.id, action=entry.action)
    if len(ids) > 1 and confirm != len(ids):
        raise CannotUndo(f"undoing {entry.action} ({entry.target}) changes {len(ids):,} images: confirm that count",
                         confirm=len(ids), entry=entry.id, action=entry.action)
    for key, snap in entry.before.get("members", {}).items():
        _restore(session, int(key), entry.action, snap, entry.after["members"].get(key, {}))
    rule = entry.after.get("rule")
    if rule and not entry.before.get("rule"):
        session.execute(delete(TagRule).where(TagRule.dataset_id == rule["dataset_id"],
                                              TagRule.kind == rule["kind"], TagRule.text == rule["text"]))
    entry.undone_at = now()
    restored = snapshot(session, ids)
    record(session, user, "undo", entry.dataset_id, f"audit:{entry.id}",
           {"undid": entry.id, "action": entry.action, "by": entry.user}, members_json(restored))
    return {"undone": entry.id, "action": entry.action, "target": entry.target, "members": ids}


def changes(before: dict[str, Any], after: dict[str, Any], member_id: int | None = None,
            limit: int = 20) -> list[dict[str, Any]]:
    """A change as readable lines: [{"member", "part", "before", "after"}] (review stamps left out)."""
    out: list[dict[str, Any]] = []
    old_members, new_members = before.get("members", {}), after.get("members", {})
    keys = [str(member_id)] if member_id is not None else list(new_members)
    for key in keys:
        old, new = old_members.get(key, {}), new_members.get(key, {})
        for name, value in new.get("fields", {}).items():
            if name not in REVIEW_FIELDS and old.get("fields", {}).get(name) != value:
                out.append({"member": int(key), "part": name.replace("_", " "),
                            "before": old.get("fields", {}).get(name), "after": value})
        if "reviewed_by" in new.get("fields", {}) and not old.get("fields", {}).get("reviewed_at") \
                and not any(o["member"] == int(key) for o in out):
            out.append({"member": int(key), "part": "reviewed", "before": None, "after": new["fields"]["reviewed_by"]})
        for text, row in new.get("tags", {}).items():
            was = old.get("tags", {}).get(text)
            describe = lambda r: None if r is None else r["status"]  # noqa: E731
            if describe(was) != describe(row):
                out.append({"member": int(key), "part": f"tag {text}", "before": describe(was),
                            "after": describe(row)})
        if len(out) >= limit:
            break
    for name in ("rule",):
        if name in after or name in before:
            out.append({"member": None, "part": "tag rule", "before": before.get(name), "after": after.get(name)})
    return out[:limit]


def undo_last(session: Session, user: str) -> dict[str, Any]:
    """Undo `user`'s newest change that is not undone yet (a change of many images needs `undo(confirm=)`)."""
    return undo(session, user)


def member_history(session: Session, member_id: int, user: str, may_undo_others: bool = False,
                   limit: int = 50) -> list[dict[str, Any]]:
    """Every change that touched one image (its own edits and bulk edits), newest first, each with
    readable before → after lines and whether `user` can undo it now (and why not)."""
    dataset = session.scalar(select(Member.dataset_id).where(Member.id == member_id))
    own = list(session.scalars(select(AuditEntry).where(AuditEntry.target == f"member:{member_id}")
                               .order_by(AuditEntry.id.desc()).limit(limit)))
    bulk = [e for e in session.scalars(
        select(AuditEntry).where(AuditEntry.dataset_id == dataset, ~AuditEntry.target.startswith("member:"),
                                 AuditEntry.action.in_(UNDOABLE)).order_by(AuditEntry.id.desc()).limit(200))
        if str(member_id) in (e.after or {}).get("members", {})]
    entries = sorted(own + bulk, key=lambda e: e.id, reverse=True)[:limit]
    out = []
    for e in entries:
        reason = why_not(session, e, user, may_undo_others) if e.action in UNDOABLE else "not an undoable change"
        out.append({"id": e.id, "user": e.user, "at": e.at, "action": e.action, "target": e.target,
                    "images": len(e.after.get("members", {})), "changes": changes(e.before, e.after, member_id),
                    "undone_at": e.undone_at, "undoable": reason is None, "why_not": reason})
    return out
