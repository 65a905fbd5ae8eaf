"""The audit log (admins browse and filter it) and undo of one's own last change."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request

from dashboards.auth import admin_reader, curator
from dashboards.pages import render
from store import queries
from pydantic import BaseModel, Field

from store.audit import undo
from store.users import UserInfo

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


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, user: str = "", action: str = "", dataset: str = "", target: str = "",
               page: int = 1, me: UserInfo = Depends(admin_reader)):
    page = max(page, 1)
    data = audit_data(request, user, action, dataset, target, None, 50, (page - 1) * 50)
    return render(request, "audit.html", user=me, log=data, page=page,
                  q={"user": user, "action": action, "dataset": dataset, "target": target})


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
