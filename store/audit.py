"""The audit log of curator changes: snapshots before and after, and undo of a user's last change.

A change's `before` and `after` hold {"members": {id: snapshot}} where a snapshot has the member's
revision, the member fields the change touched and the touched tags ({text: row or None when
absent}); dataset-wide tag rules add {"rule": {...}}. That is exactly enough to put things back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from store.models import AuditEntry, Member, Tag, TagRule

TAG_FIELDS = ("source", "category", "confidence", "status", "position", "updated_by")
MEMBER_FIELDS = ("status", "excluded_reason", "caption", "caption_source", "reviewed_at", "reviewed_by")
UNDOABLE = {"tag_add", "tag_accept", "tag_reject", "tag_remove", "caption_edit", "exclude", "include",
            "review", "bulk_add", "bulk_remove", "bulk_rename", "bulk_accept", "bulk_reject",
            "tag_rename", "tag_merge", "tag_blacklist"}
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


def _restore(session: Session, member_id: int, snap: dict[str, Any], user: str) -> None:
    # the state is exactly the one at the earlier revision again, so the revision goes back too
    # (that lets a user undo several of their changes in a row)
    values: dict[str, Any] = {"revision": snap["revision"]}
    for name, value in snap.get("fields", {}).items():
        if name == "reviewed_at" and isinstance(value, str):
            value = datetime.fromisoformat(value)
        values[name] = value
    session.execute(update(Member).where(Member.id == member_id).values(**values)
                    .execution_options(synchronize_session=False))
    for text, row in snap.get("tags", {}).items():
        session.execute(delete(Tag).where(Tag.member_id == member_id, Tag.text == text)
                        .execution_options(synchronize_session=False))
        if row is not None:
            session.execute(insert(Tag).values(member_id=member_id, text=text, updated_at=now(),
                                               **{**row, "updated_by": row.get("updated_by")}))


def undo_last(session: Session, user: str) -> dict[str, Any]:
    """Undo `user`'s newest change that is not undone yet; Conflict if someone changed it since."""
    from store.queries import member_state

    entry = session.scalar(select(AuditEntry).where(
        AuditEntry.user == user, AuditEntry.undone_at.is_(None), AuditEntry.action.in_(UNDOABLE))
        .order_by(AuditEntry.id.desc()).limit(1).with_for_update())
    if entry is None:
        raise NothingToUndo(f"{user} has no change left to undo")
    after = entry.after.get("members", {})
    ids = [int(k) for k in after]
    current = {}
    for part in chunks(ids):
        current.update(session.execute(select(Member.id, Member.revision).where(Member.id.in_(part))).all())
    for key, snap in after.items():
        if current.get(int(key)) != snap["revision"]:
            raise Conflict(int(key), member_state(session, int(key)),
                           f"cannot undo {entry.action}: image {key} was changed after it")
    for key, snap in entry.before.get("members", {}).items():
        _restore(session, int(key), snap, user)
    rule = entry.after.get("rule")
    if rule and not entry.before.get("rule"):
        session.execute(delete(TagRule).where(TagRule.dataset_id == rule["dataset_id"],
                                              TagRule.kind == rule["kind"], TagRule.text == rule["text"]))
    entry.undone_at = now()
    restored = snapshot(session, ids)
    record(session, user, "undo", entry.dataset_id, f"audit:{entry.id}",
           {"undid": entry.id, "action": entry.action}, members_json(restored))
    return {"undone": entry.id, "action": entry.action, "target": entry.target, "members": ids}
