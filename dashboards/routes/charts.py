"""Charts of a dataset: score distributions and tag frequencies (drawn as inline SVG, no CDN)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dashboards.auth import reader
from dashboards.pages import render
from store import queries
from store.users import UserInfo

router = APIRouter()


def charts_data(request: Request, dataset: str, bins: int = 20, top: int = 30) -> dict:
    with request.app.state.store.session() as session:
        ds = queries.dataset_id(session, dataset)
        scores = [h for name in queries.score_names(session, ds)
                  if (h := queries.score_histogram(session, ds, name, bins))["count"]]
        tags = queries.tag_table(session, ds, limit=top)["tags"]
    return {"dataset": dataset, "scores": scores,
            "tag_frequency": [{"text": t["text"], "count": t["count"]} for t in tags]}


@router.get("/api/datasets/{dataset}/charts", tags=["charts"])
def api_charts(request: Request, dataset: str, bins: int = 20, top: int = 30, user: UserInfo = Depends(reader)):
    """Histogram of every score, and the `top` most frequent tags."""
    return charts_data(request, dataset, min(max(bins, 2), 100), min(max(top, 1), 200))


@router.get("/d/{dataset}/charts", include_in_schema=False)
def charts_page(request: Request, dataset: str, user: UserInfo = Depends(reader)):
    return render(request, "charts.html", user=user, dataset=dataset, charts=charts_data(request, dataset))
