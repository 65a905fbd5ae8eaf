"""The tag table: frequency, source, acceptance rate; rename, merge, blacklist across a dataset."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sqlalchemy import select

from dashboards.auth import curator, reader
from dashboards.pages import render
from dashboards.tokens import count_tokens
from store import curation, queries, tag_counts
from store.models import TagRule
from store.users import UserInfo

router = APIRouter()


class Rename(BaseModel):
    tag: str
    new: str
    dry_run: bool = False
    preview: str | None = None  # the dry run's token: change exactly the previewed images, or 409


class Blacklist(BaseModel):
    tag: str
    dry_run: bool = False
    preview: str | None = None


def _table(request: Request, dataset: str, contains: str, limit: int, offset: int) -> dict:
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset)
        table = queries.tag_table(session, ds, contains, min(limit, 1000), offset)
        table["rules"] = [{"kind": r.kind, "text": r.text, "replacement": r.replacement, "by": r.created_by}
                          for r in session.scalars(select(TagRule).where(TagRule.dataset_id == ds)
                                                   .order_by(TagRule.kind, TagRule.text))]
    return table


@router.get("/api/datasets/{dataset}/tags", tags=["tags"])
def api_tags(request: Request, dataset: str, contains: str = "", limit: int = 200, offset: int = 0,
             user: UserInfo = Depends(reader)):
    """Every tag with its frequency, model/human counts and acceptance rate; plus the tag rules."""
    return _table(request, dataset, contains, limit, offset)


@router.get("/api/datasets/{dataset}/tags/top", tags=["tags"])
def api_top_tags(request: Request, dataset: str, limit: int = 60, user: UserInfo = Depends(reader)):
    """The dataset's most frequent tags over its active images (rejected ones not counted): the grid's sidebar."""
    with request.app.state.store.session() as session:
        return {"tags": tag_counts.tag_frequencies(session, queries.dataset_id(session, dataset), min(limit, 500))}


@router.get("/api/datasets/{dataset}/tags/suggest", tags=["tags"])
def api_suggest(request: Request, dataset: str, q: str = "", limit: int = 12, user: UserInfo = Depends(reader)):
    """Autocomplete: the dataset's tags starting with `q` (a space matches an underscore), most used first."""
    with request.app.state.store.session() as session:
        return {"tags": tag_counts.suggest_tags(session, queries.dataset_id(session, dataset), q, min(limit, 50))}


@router.get("/api/tokens", tags=["tags"])
def api_tokens(request: Request, text: str = "", user: UserInfo = Depends(reader)):
    """A caption's CLIP token count against the 75-token window (exact with a CLIP tokenizer on disk)."""
    return count_tokens(text[:20_000], request.app.state.store.settings.models_dir)


@router.post("/api/datasets/{dataset}/tags/rename", tags=["tags"])
def rename(request: Request, dataset: str, body: Rename, user: UserInfo = Depends(curator)):
    with request.app.state.store.session() as session:
        return curation.rename_tag(session, queries.dataset_id(session, dataset), body.tag, body.new,
                                   user.name, dry_run=body.dry_run, preview=body.preview)


@router.post("/api/datasets/{dataset}/tags/merge", tags=["tags"])
def merge(request: Request, dataset: str, body: Rename, user: UserInfo = Depends(curator)):
    """Merge `tag` into the existing tag `new`."""
    with request.app.state.store.session() as session:
        return curation.rename_tag(session, queries.dataset_id(session, dataset), body.tag, body.new,
                                   user.name, merge=True, dry_run=body.dry_run, preview=body.preview)


@router.post("/api/datasets/{dataset}/tags/blacklist", tags=["tags"])
def blacklist(request: Request, dataset: str, body: Blacklist, user: UserInfo = Depends(curator)):
    with request.app.state.store.session() as session:
        return curation.blacklist_tag(session, queries.dataset_id(session, dataset), body.tag, user.name,
                                      dry_run=body.dry_run, preview=body.preview)


@router.get("/d/{dataset}/tags", include_in_schema=False)
def tags_page(request: Request, dataset: str, contains: str = "", page: int = 1,
              user: UserInfo = Depends(reader)):
    page = max(page, 1)
    table = _table(request, dataset, contains, 200, (page - 1) * 200)
    return render(request, "tags.html", user=user, dataset=dataset, table=table, contains=contains, page=page)
