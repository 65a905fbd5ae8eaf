"""Training runs with their metrics and sample grids, the champion of each slot, Prefect links."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from dashboards.auth import reader
from dashboards.pages import render
from evaluation.run_table import run_state
from store.models import Artifact, Champion, Dataset, DatasetVersion, Evaluation, Sample, TrainingRun
from store.users import UserInfo

router = APIRouter()


def runs_data(request: Request, limit: int = 100) -> dict:
    with request.app.state.store.session() as session:
        champions = {c.slot: {"slot": c.slot, "run_id": c.run_id, "evaluation_id": c.evaluation_id,
                              "published_path": c.published_path, "updated_at": c.updated_at}
                     for c in session.scalars(select(Champion).order_by(Champion.slot))}
        champion_runs = {c["run_id"] for c in champions.values()}
        rows = session.execute(
            select(TrainingRun, Dataset.name, DatasetVersion.number)
            .join(Dataset, Dataset.id == TrainingRun.dataset_id)
            .outerjoin(DatasetVersion, DatasetVersion.id == TrainingRun.version_id)
            .order_by(TrainingRun.id.desc()).limit(limit)).all()
        runs = []
        for run, dataset, number in rows:
            evaluations = []
            for ev in session.scalars(select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.id)):
                samples = session.execute(
                    select(Sample.model, Sample.prompt, Sample.seed, Sample.scores, Artifact.sha256)
                    .join(Artifact, Artifact.id == Sample.artifact_id)
                    .where(Sample.evaluation_id == ev.id).order_by(Sample.id)).all()
                evaluations.append({"id": ev.id, "status": ev.status, "metrics": ev.metrics,
                                    "grid_sha256": ev.grid_sha256, "created_at": ev.created_at,
                                    "samples": [dict(s._mapping) for s in samples]})
            runs.append({"id": run.id, "dataset": dataset, "version": number, "method": run.method,
                         "status": run.status, "state": run_state(run.status), "started_at": run.started_at,
                         "base_model": run.base_model, "metrics": run.metrics,
                         "created_at": run.created_at, "finished_at": run.finished_at, "error": run.error,
                         "flow_run_id": run.flow_run_id, "champion": run.id in champion_runs,
                         "evaluations": evaluations})
    return {"runs": runs, "champions": list(champions.values()), "prefect_ui": request.app.state.prefect_ui}


@router.get("/api/runs", tags=["runs"])
def api_runs(request: Request, limit: int = 100, user: UserInfo = Depends(reader)):
    """Training runs (newest first) with evaluations and samples, and the champion of each slot."""
    return runs_data(request, min(limit, 500))


@router.get("/runs", include_in_schema=False)
def runs_page(request: Request, user: UserInfo = Depends(reader)):
    return render(request, "runs.html", user=user, **runs_data(request))
