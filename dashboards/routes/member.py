"""One image: original and derived artifacts with lineage, tags, caption; every single-image edit."""

from __future__ import annotations

from typing import Literal

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from dashboards.auth import curator, reader, writer
from dashboards.pages import render
from store import curation, queries
from store import review as reviews
from store.audit import member_history
from store.masks import MASK_STEP
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


@router.get("/api/members/{member_id}/history", tags=["image"])
def api_history(request: Request, member_id: int, user: UserInfo = Depends(reader)):
    """Every change to this image (its own edits and bulk edits), newest first: who, when, before → after,
    and whether you can undo it now (or why not)."""
    with request.app.state.store.session() as session:
        queries.member_state(session, member_id)  # 404 for an unknown image
        return {"entries": member_history(session, member_id, user.name, may_undo_others=user.can("admin"))}


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
def member_page(request: Request, dataset: str, member_id: int, review: int | None = None,
                user: UserInfo = Depends(reader)):
    """The image view. Opened from the grid (`from=grid` + the grid's filter) it starts a review
    session over a snapshot of what the filter matches and redirects into it (`review=ID`)."""
    params = {k: v for k, v in request.query_params.items() if k not in ("page", "from", "review", "i")}
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset)
        if review is None and request.query_params.get("from") == "grid":
            f = queries.grid_filter_from_params(params)
            found = reviews.review_for_member(session, user.name, ds, f, member_id)
            return RedirectResponse(f"/d/{dataset}/m/{member_id}?review={found.id}", status_code=303)
        detail = queries.member_detail(session, member_id)
        if detail["dataset_id"] != ds:
            raise queries.NotFound(f"image {member_id} is not in dataset {dataset!r}")
        walk = reviews.place(session, reviews.get_review(session, review, user.name), member_id) if review else None
    return render(request, "member.html", user=user, dataset=dataset, m=detail, walk=walk,
                  params=walk["params"] if walk else {}, views=views_of(detail))


def views_of(detail: dict) -> list[dict]:
    """What the image view can show: the original and every derived artifact (masks are overlays of these)."""
    original = detail["original"]
    has_current = any(a["current"] for a in detail["artifacts"])
    views = [{"key": "original", "sha256": original["sha256"], "step": "original", "label": "original",
              "width": original["width"], "height": original["height"], "current": not has_current,
              "backend": original.get("format"), "params": None, "meta": None, "masks": []}]
    by_id = {}
    for a in detail["artifacts"]:
        if a["step"] == MASK_STEP:
            continue
        view = {"key": f"artifact-{a['id']}", "sha256": a["sha256"], "step": a["step"], "width": a["width"],
                "height": a["height"], "current": a["current"], "backend": a["backend"], "model_id": a["model_id"],
                "params": a["params"], "meta": a["meta"], "masks": [],
                "label": f"{a['step']} ({a['width']}×{a['height']})"}
        by_id[a["id"]] = view
        views.append(view)
    for a in detail["artifacts"]:
        if a["step"] == MASK_STEP:
            owner = by_id.get(a["parent_id"]) if a["parent_id"] is not None else views[0]
            if owner is not None:
                name = (a["params"] or {}).get("name", "mask")
                owner["masks"] = [m for m in owner["masks"] if m["name"] != name] + [{"name": name, "sha256": a["sha256"]}]
    return views


def _unreviewed_walk(session, user: str, ds: int):
    """The user's latest walk over unreviewed images if it has some left after its position, else a new one."""
    f = queries.grid_filter_from_params({"unreviewed": "1", "order": "asc"})
    latest = reviews.latest_review(session, user, ds)
    if latest is not None and latest.params == f.to_params():
        found = reviews.next_unreviewed(session, latest, latest.position - 1)
        if found is not None:
            return latest, found
    walk = reviews.start_review(session, user, ds, f)
    return walk, (walk.member_ids[0] if walk.member_ids else None)


@router.get("/d/{dataset}/next-unreviewed", include_in_schema=False)
def next_unreviewed(request: Request, dataset: str, user: UserInfo = Depends(reader)):
    """Resume (or start) a review walk over the images nobody has reviewed yet, at the first one left."""
    with request.app.state.store.session() as session:
        walk, found = _unreviewed_walk(session, user.name, queries.dataset_id(session, dataset))
    if found is None:
        return RedirectResponse(f"/d/{dataset}?unreviewed=1", status_code=303)
    return RedirectResponse(f"/d/{dataset}/m/{found}?review={walk.id}", status_code=303)


@router.get("/d/{dataset}/review/{review_id}/next-unreviewed", include_in_schema=False)
def walk_next_unreviewed(request: Request, dataset: str, review_id: int, after: int = 0,
                         user: UserInfo = Depends(reader)):
    """Within a walk: the next image after position `after` (1-based) that nobody has reviewed."""
    with request.app.state.store.session() as session:
        walk = reviews.get_review(session, review_id, user.name)
        found = reviews.next_unreviewed(session, walk, after - 1)
    if found is None:
        return RedirectResponse(f"/d/{dataset}?{urlencode(walk.params)}", status_code=303)
    return RedirectResponse(f"/d/{dataset}/m/{found}?review={walk.id}", status_code=303)


@router.post("/d/{dataset}/review", include_in_schema=False)
async def start_walk(request: Request, dataset: str, user: UserInfo = Depends(writer("viewer"))):
    """Start a review walk over what the grid filter (the form's fields) matches now."""
    form = await request.form()
    params = {k: str(v) for k, v in form.items() if k not in ("csrf_token", "page") and str(v)}
    return await run_in_threadpool(_start_walk, request, dataset, user, params)


def _start_walk(request: Request, dataset: str, user: UserInfo, params: dict[str, str]):
    with request.app.state.store.session() as session:
        walk = reviews.start_review(session, user.name, queries.dataset_id(session, dataset),
                                    queries.grid_filter_from_params(params))
    if not walk.member_ids:
        return RedirectResponse(f"/d/{dataset}?{urlencode(params)}", status_code=303)
    return RedirectResponse(f"/d/{dataset}/m/{walk.member_ids[0]}?review={walk.id}", status_code=303)


@router.post("/api/datasets/{dataset}/reviews", tags=["review"])
def api_start_review(request: Request, dataset: str, body: dict[str, str], user: UserInfo = Depends(curator)):
    """Start a review session over a snapshot of what the grid filter (body: grid parameters) matches now."""
    with request.app.state.store.session() as session:
        walk = reviews.start_review(session, user.name, queries.dataset_id(session, dataset),
                                    queries.grid_filter_from_params(body))
        return {"id": walk.id, "total": len(walk.member_ids), "member_ids": walk.member_ids,
                "capped": len(walk.member_ids) == reviews.MAX_SNAPSHOT}


@router.get("/api/reviews/{review_id}", tags=["review"])
def api_review(request: Request, review_id: int, user: UserInfo = Depends(reader)):
    """A review session: its snapshot of ids, the filter it came from and where you were."""
    with request.app.state.store.session() as session:
        walk = reviews.get_review(session, review_id, user.name)
        return {"id": walk.id, "params": walk.params, "member_ids": walk.member_ids,
                "position": walk.position + 1, "total": len(walk.member_ids)}
