"""One image: original and derived artifacts with lineage, tags, caption; every single-image edit."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from dashboards.auth import curator, reader
from dashboards.pages import render
from store import curation, queries
from store.users import UserInfo

router = APIRouter()


class Edit(BaseModel):
    revision: int = Field(description="the member revision the edit was made on (stale → 409)")


class TagEdit(Edit):
    text: str


class TagStatus(TagEdit):
    status: Literal["accepted", "rejected", "suggested"]


class CaptionEdit(Edit):
    caption: str


class Exclusion(Edit):
    excluded: bool
    reason: str | None = None


@router.get("/api/members/{member_id}", tags=["image"])
def api_member(request: Request, member_id: int, user: UserInfo = Depends(reader)):
    with request.app.state.store.session() as session:
        return queries.member_detail(session, member_id)


def _write(request: Request, fn, *args):
    with request.app.state.store.session() as session:
        return fn(session, *args)


@router.post("/api/members/{member_id}/tags", tags=["image"])
def add_tag(request: Request, member_id: int, body: TagEdit, user: UserInfo = Depends(curator)):
    """Add an accepted tag (or accept it when the image already has it)."""
    return _write(request, curation.add_tag, member_id, body.text, body.revision, user.name)


@router.post("/api/members/{member_id}/tags/status", tags=["image"])
def tag_status(request: Request, member_id: int, body: TagStatus, user: UserInfo = Depends(curator)):
    return _write(request, curation.set_tag_status, member_id, body.text, body.status, body.revision, user.name)


@router.post("/api/members/{member_id}/tags/remove", tags=["image"])
def remove_tag(request: Request, member_id: int, body: TagEdit, user: UserInfo = Depends(curator)):
    return _write(request, curation.remove_tag, member_id, body.text, body.revision, user.name)


@router.put("/api/members/{member_id}/caption", tags=["image"])
def edit_caption(request: Request, member_id: int, body: CaptionEdit, user: UserInfo = Depends(curator)):
    return _write(request, curation.edit_caption, member_id, body.caption, body.revision, user.name)


@router.put("/api/members/{member_id}/exclusion", tags=["image"])
def exclusion(request: Request, member_id: int, body: Exclusion, user: UserInfo = Depends(curator)):
    """Exclude the image (with a reason) or include it again."""
    return _write(request, curation.set_excluded, member_id, body.excluded, body.reason, body.revision, user.name)


@router.post("/api/members/{member_id}/reviewed", tags=["image"])
def reviewed(request: Request, member_id: int, body: Edit, user: UserInfo = Depends(curator)):
    return _write(request, curation.mark_reviewed, member_id, body.revision, user.name)


@router.get("/d/{dataset}/m/{member_id}", include_in_schema=False)
def member_page(request: Request, dataset: str, member_id: int, i: int | None = None,
                user: UserInfo = Depends(reader)):
    """The image view; `i` is its position in the grid's filtered list, for next/previous."""
    params = {k: v for k, v in request.query_params.items() if k not in ("i", "page")}
    f = queries.grid_filter_from_params(params)
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset)
        detail = queries.member_detail(session, member_id)
        if detail["dataset_id"] != ds:
            raise queries.NotFound(f"image {member_id} is not in dataset {dataset!r}")
        prev_id = queries.neighbour(session, ds, f, i - 1) if i is not None else None
        next_id = queries.neighbour(session, ds, f, i + 1) if i is not None else None
    return render(request, "member.html", user=user, dataset=dataset, m=detail, params=params, i=i,
                  prev_id=prev_id, next_id=next_id)


@router.get("/d/{dataset}/next-unreviewed", include_in_schema=False)
def next_unreviewed(request: Request, dataset: str, user: UserInfo = Depends(reader)):
    f = queries.grid_filter_from_params({"unreviewed": "1", "order": "asc"})
    with request.app.state.store.session() as session:
        found = queries.neighbour(session, queries.dataset_id(session, dataset), f, 0)
    return RedirectResponse(f"/d/{dataset}/m/{found}" if found else f"/d/{dataset}", status_code=303)
