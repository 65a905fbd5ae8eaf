"""Bulk edit over a selection or over everything a filter matches — with a count before applying."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from dashboards.auth import curator
from store import curation, queries
from store.users import UserInfo

router = APIRouter()


class BulkEdit(BaseModel):
    op: Literal["add", "remove", "rename", "accept", "reject", "caption_prepend", "caption_append",
                "caption_replace", "exclude", "include"]
    tag: str = Field("", description="the tag; for caption ops the trigger word or phrase; for exclude the reason")
    new: str | None = Field(None, description="the new name (rename) or the replacement text (caption_replace)")
    member_ids: list[int] | None = Field(None, description="a selection; or give `filter`")
    filter: dict[str, str] | None = Field(None, description="grid filter parameters (see the grid API)")
    dry_run: bool = Field(False, description="only count how many images would change (and get a preview token)")
    preview: str | None = Field(None, description="the dry run's token: apply to exactly the previewed images, "
                                                  "or 409 when they changed since")


@router.post("/api/datasets/{dataset}/bulk", tags=["bulk edit"])
def bulk_edit(request: Request, dataset: str, body: BulkEdit, user: UserInfo = Depends(curator)):
    """Apply (or with dry_run, count) one operation on a selection or on the filter's matches: a tag op,
    prepend/append/replace a trigger word in captions, or exclude/include. With `preview` (the dry run's
    token) it changes exactly the previewed images, or nothing and 409 when another edit changed them."""
    if (body.member_ids is None) == (body.filter is None):
        raise curation.CurationError("give either member_ids (a selection) or filter (everything it matches)")
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset)
        if body.member_ids is not None:
            ids = body.member_ids
        else:
            f = queries.grid_filter_from_params({k: v for k, v in body.filter.items() if k not in ("page",)})
            ids = queries.matching_member_ids(session, ds, f)
        return curation.bulk_edit(session, ds, ids, body.op, body.tag, body.new, user.name, dry_run=body.dry_run,
                                  preview=body.preview)
