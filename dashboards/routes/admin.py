"""The audit log (admins browse and filter it) and undo of one's own last change."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from dashboards.auth import admin_reader, curator
from dashboards.pages import render
from store import queries
from store.audit import UNDOABLE, changes, member_history, undo, why_not
from store.models import AuditEntry
from store.users import UserInfo, list_users

router = APIRouter()


def audit_data(request: Request, user: str | None, action: str | None, dataset: str | None,
               target: str | None, since: datetime | None, limit: int, offset: int) -> dict:
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset) if dataset else None
        return queries.audit_entries(session, user=user or None, action=action or None, dataset=ds,
                                     target=target or None, since=since, limit=min(limit, 500), offset=offset)


@router.get("/api/audit", tags=["audit"])
def api_audit(request: Request, user: str | None = None, action: str | None = None, dataset: str | None = None,
              target: str | None = None, since: datetime | None = None, limit: int = 100, offset: int = 0,
              me: UserInfo = Depends(admin_reader)):
    """Every change (who, when, what, before and after), newest first; admin only."""
    return audit_data(request, user, action, dataset, target, since, limit, offset)


def readable(session, entry: dict, me: UserInfo) -> dict:
    """An audit entry as a person reads it: before → after lines (no JSON), and whether `me` can undo it."""
    lines = changes(entry["before"] or {}, entry["after"] or {}, limit=8)
    if not lines and entry["action"] not in UNDOABLE:  # account and version entries: their fields as they are
        keys = [k for k in dict.fromkeys([*(entry["before"] or {}), *(entry["after"] or {})]) if k != "members"]
        lines = [{"member": None, "part": k.replace("_", " "), "before": (entry["before"] or {}).get(k),
                  "after": (entry["after"] or {}).get(k)} for k in keys]
    images = len((entry["after"] or {}).get("members", {}))
    reason = None
    if entry["action"] in UNDOABLE and entry["undone_at"] is None:
        row = session.get(AuditEntry, entry["id"])
        reason = why_not(session, row, me.name, may_undo_others=me.can("admin"))
    return {**entry, "lines": lines, "images": images, "more": max(0, images - len({ln["member"] for ln in lines})),
            "undoable": entry["action"] in UNDOABLE and entry["undone_at"] is None and reason is None,
            "why_not": reason}


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, user: str = "", action: str = "", dataset: str = "", target: str = "",
               image: str = "", page: int = 1, me: UserInfo = Depends(admin_reader)):
    """The audit log for people: filters by user, action, dataset and image; before → after; undo buttons."""
    page = max(page, 1)
    q = {"user": user, "action": action, "dataset": dataset, "target": target, "image": image}
    with request.app.state.store.session() as session:
        if image.strip().isdigit():  # one image: its own edits and the bulk edits that covered it
            history = member_history(session, int(image), me.name, may_undo_others=True, limit=500)
            ids = [h["id"] for h in history]
            rows = session.scalars(select(AuditEntry).where(AuditEntry.id.in_(ids)).order_by(AuditEntry.id.desc()))
            entries = [{"id": e.id, "user": e.user, "at": e.at, "action": e.action, "dataset_id": e.dataset_id,
                        "target": e.target, "before": e.before, "after": e.after, "undone_at": e.undone_at}
                       for e in rows if (not user or e.user == user) and (not action or e.action == action)]
            log = {"total": len(entries), "entries": entries[(page - 1) * 50:page * 50]}
        else:
            log = audit_data(request, user, action, dataset, target, None, 50, (page - 1) * 50)
        log["entries"] = [readable(session, e, me) for e in log["entries"]]
        users = [u.name for u in list_users(session)]
        actions = sorted(set(session.scalars(select(AuditEntry.action).distinct())))
    return render(request, "audit.html", user=me, log=log, page=page, q=q, users=users, actions=actions)


class Undo(BaseModel):
    entry_id: int | None = Field(None, description="the audit entry to undo; default: your newest change")
    confirm: int | None = Field(None, description="for a change of several images: their count, as confirmation")


@router.post("/api/undo", tags=["audit"])
def api_undo(request: Request, body: Undo | None = None, me: UserInfo = Depends(curator)):
    """Undo one change (yours; an admin may undo anyone's). 409 says why not: a part it touched was changed
    again since (and by whom), or — for a change of several images — `confirm` must give their count."""
    body = body or Undo()
    with request.app.state.store.session() as session:
        return undo(session, me.name, body.entry_id, confirm=body.confirm, may_undo_others=me.can("admin"))
