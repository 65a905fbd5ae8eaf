"""The grid of a dataset's members: filters, sort, pages (and the list of datasets)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dashboards.auth import reader, reader_in
from dashboards.pages import json_response, render
from store import queries, tag_counts
from store import review as reviews
from store.users import UserInfo

router = APIRouter()

FILTER_DOC = ("Filter parameters: tags_all, tags_any, tags_none (comma-separated tags: and / or / not), "
              "tag_source (model|human), tag_status (suggested|accepted|rejected), min_<score>/max_<score> "
              "(e.g. min_aesthetic=5), face (yes|no), status (active|excluded|duplicate|all), unreviewed=1, "
              "sort (date|confidence|score:<name>), order (asc|desc), page, per_page (≤ 200).")


def grid_data(request: Request, session, dataset_id: int, dataset: str) -> dict:
    f = queries.grid_filter_from_params(request.query_params)
    page = queries.grid_page(session, dataset_id, f)
    tops = tag_counts.top_tags(session, [item["id"] for item in page["items"]])
    for item in page["items"]:
        item["tags"] = tops.get(item["id"], [])
    page["dataset"] = dataset
    page["params"] = f.to_params()
    return page


@router.get("/", include_in_schema=False)
def home(request: Request, user: UserInfo = Depends(reader)):
    with request.app.state.store.session() as session:
        datasets = queries.list_datasets(session)
    return render(request, "home.html", user=user, datasets=datasets)


@router.get("/api/datasets", tags=["grid"])
def api_datasets(request: Request, user: UserInfo = Depends(reader)):
    with request.app.state.store.session() as session:
        return {"datasets": queries.list_datasets(session)}


# The two hot paths (every grid load, every page a client reads) check the login in their own
# database session (reader_in): one pool checkout per request instead of two.
@router.get("/api/datasets/{dataset}/members", tags=["grid"], description=FILTER_DOC)
def api_grid(request: Request, dataset: str):
    """One page of the dataset's members matching the filter (any logged-in user)."""
    with request.app.state.store.reading() as session:
        reader_in(request, session)
        return json_response(grid_data(request, session, queries.dataset_id(session, dataset), dataset))


@router.get("/d/{dataset}", include_in_schema=False)
def grid_page(request: Request, dataset: str):
    with request.app.state.store.reading() as session:  # one session (one pooled connection) per page
        user = reader_in(request, session)
        ds = queries.dataset_id(session, dataset)
        page = grid_data(request, session, ds, dataset)
        score_names = queries.score_names(session, ds)
        latest = reviews.latest_review(session, user.name, ds)
        resume = ({"id": latest.id, "member_id": latest.member_ids[latest.position],
                   "position": latest.position + 1, "total": len(latest.member_ids)}
                  if latest is not None and latest.member_ids else None)
    return render(request, "grid.html", user=user, dataset=dataset, grid=page, score_names=score_names,
                  q=request.query_params, resume=resume)
