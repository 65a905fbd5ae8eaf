"""Dataset versions: list, commit the working state with a message, diff two versions."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from dashboards.auth import curator, reader
from dashboards.pages import render
from store import versions
from store.audit import record
from store.queries import dataset_id
from store.users import UserInfo

router = APIRouter()


class Commit(BaseModel):
    message: str = Field(min_length=1, max_length=2000)


def _diff(request: Request, dataset: str, a: int, b: int) -> dict:
    return versions.diff_versions(request.app.state.store, dataset, a, b)


@router.get("/api/datasets/{dataset}/versions", tags=["versions"])
def api_versions(request: Request, dataset: str, user: UserInfo = Depends(reader)):
    return {"versions": [asdict(v) for v in versions.list_versions(request.app.state.store, dataset)]}


@router.post("/api/datasets/{dataset}/versions", tags=["versions"])
def commit(request: Request, dataset: str, body: Commit, user: UserInfo = Depends(curator)):
    """Commit the working state as the next version (409 when nothing changed)."""
    store = request.app.state.store
    info = versions.commit_version(store, dataset, body.message.strip(), user=user.name)
    with store.session() as session:
        record(session, user.name, "commit_version", dataset_id(session, dataset), f"version:{info.number}",
               {}, {"number": info.number, "message": info.message, "entries": info.entries})
    return asdict(info)


@router.get("/api/datasets/{dataset}/versions/diff", tags=["versions"])
def api_diff(request: Request, dataset: str, a: int, b: int, user: UserInfo = Depends(reader)):
    return _diff(request, dataset, a, b)


@router.get("/d/{dataset}/versions", include_in_schema=False)
def versions_page(request: Request, dataset: str, a: int | None = None, b: int | None = None,
                  user: UserInfo = Depends(reader)):
    listed = versions.list_versions(request.app.state.store, dataset)
    diff = _diff(request, dataset, a, b) if a is not None and b is not None else None
    return render(request, "versions.html", user=user, dataset=dataset, versions=listed, diff=diff, a=a, b=b)
