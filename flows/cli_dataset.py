"""Dataset commands: init, datasets, ingest, commit, versions, diff, export."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import api_url, console, emit, fail, prefect_api, progress


def register(app: typer.Typer) -> None:
    for command in (init, datasets, ingest, commit, versions, diff, export):
        app.command(command.__name__)(command)


def _store():
    from store.db import open_store

    try:
        return open_store()
    except Exception as error:  # a bad URL or an unreachable server: one line, not a traceback
        fail(f"cannot open the store: {str(error).splitlines()[0]}")


def init(as_json: bool = typer.Option(False, "--json")) -> None:
    """Create (or upgrade in place) the database and blob store under $ATELIER_HOME."""
    store = _store()
    info = {"home": str(store.settings.home), "database": store.engine.url.render_as_string(hide_password=True),
            "blobs": store.settings.blobs_url, "models": str(store.settings.models_dir)}
    emit(info, as_json)
    if not as_json:
        console.print(f"store ready: {info['database']}\nblobs: {info['blobs']}")


def datasets(as_json: bool = typer.Option(False, "--json")) -> None:
    """List datasets with their member counts and newest version."""
    from sqlalchemy import func, select

    from store.models import Dataset, DatasetVersion, Member

    store = _store()
    with store.session() as session:
        rows = session.execute(
            select(Dataset.name, func.count(Member.id).filter(Member.status == "active"),
                   select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == Dataset.id).scalar_subquery())
            .outerjoin(Member, Member.dataset_id == Dataset.id).group_by(Dataset.id).order_by(Dataset.name)
        ).all()
    result = [{"name": n, "active_members": c, "latest_version": v} for n, c, v in rows]
    emit({"datasets": result}, as_json)
    if not as_json:
        for row in result:
            console.print(f"{row['name']}: {row['active_members']} active images, latest version {row['latest_version']}")


def _unchanged(store, sources: list[Path], dataset: str, options: dict, settings: dict) -> dict | None:
    """A no-op re-ingest: the report, with its flow run recorded as Completed (no Prefect import, no engine)."""
    from flows.ingest_noop import unchanged_report
    from flows.quick_run import record_completed_run

    report = unchanged_report(store, sources, dataset, options, settings)
    if report is None:
        return None
    url = api_url()
    parameters = {"sources": [str(s) for s in sources], "dataset": dataset, "options": options,
                  "dataset_settings": settings}
    message = f"nothing to do: {report['unchanged']} files already in {dataset} at the same paths"
    if (run_id := record_completed_run(url, "ingest", parameters, message)) is None:
        return None
    console.print(f"ingest {dataset}: {message}. View at {url.removesuffix('/api')}/runs/flow-run/{run_id}",
                  highlight=False, soft_wrap=True)
    return report


def ingest(
    sources: list[Path] = typer.Argument(..., help="folders (recursive), image files or .zip archives"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset name (created if new)"),
    max_pixels: Optional[int] = typer.Option(None, help="decompression-bomb limit in pixels"),
    min_side: Optional[int] = typer.Option(None, help="reject images whose shorter side is below this (px)"),
    animated: Optional[str] = typer.Option(None, help="first-frame (default) or reject"),
    near_threshold: Optional[int] = typer.Option(None, help="perceptual-hash bits for near duplicates (default 12)"),
    identifier: Optional[str] = typer.Option(None, help="DreamBooth identifier for a new dataset, e.g. 'sks'"),
    class_word: Optional[str] = typer.Option(None, "--class", help="class word, e.g. 'dog'"),
    repeats: Optional[int] = typer.Option(None, help="kohya repeats per epoch"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Ingest images safely: verified, deduplicated (exact and near), sidecar captions imported."""
    from flows.ingest_options import IngestOptions

    for source in sources:
        if not source.exists():
            fail(f"source not found: {source}")
    options = {k: v for k, v in dict(max_pixels=max_pixels, min_side=min_side, animated=animated,
                                     near_threshold=near_threshold).items() if v is not None}
    try:
        IngestOptions(**options)
    except ValueError as error:
        fail(str(error))
    settings = {"identifier": identifier, "class_word": class_word, "repeats": repeats}
    report = _unchanged(_store(), sources, dataset, options, settings)
    if report is None:
        from flows.ingest import ingest_flow

        with prefect_api(), progress() as bar:
            task = bar.add_task(f"ingest {dataset}", total=None)
            report = ingest_flow([str(s) for s in sources], dataset, options, dataset_settings=settings,
                                 on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    emit(report, as_json)
    if not as_json:
        console.print(f"[bold]{dataset}[/bold]: scanned {report['scanned']}, added {report['added']}, "
                      f"unchanged {report['unchanged']}, exact duplicates {report['exact_duplicates']}, "
                      f"near duplicates {len(report['near_duplicates'])}, rejected {len(report['rejected'])}, "
                      f"ignored {len(report['ignored'])}")
        for rejected in report["rejected"]:
            console.print(f"  rejected {rejected['path']}: {rejected['reason']}", highlight=False)


def commit(
    name: str = typer.Argument(..., help="dataset"),
    message: str = typer.Option(..., "-m", "--message"),
    user: Optional[str] = typer.Option(None, help="who commits (default: $USER)"),
    allow_unchanged: bool = typer.Option(False, help="make a version even if nothing changed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Commit the working state as a new immutable version."""
    import os

    from store.datasets import DatasetNotFound
    from store.versions import NothingToCommit, commit_version

    try:
        info = commit_version(_store(), name, message, user or os.environ.get("USER"), allow_unchanged)
    except (DatasetNotFound, NothingToCommit) as error:
        fail(str(error))
    emit(dataclasses.asdict(info), as_json)
    if not as_json:
        console.print(f"{name}@{info.number}: {info.entries} images — {message}")


def versions(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """List the versions of a dataset."""
    from store.datasets import DatasetNotFound
    from store.versions import list_versions

    try:
        rows = [dataclasses.asdict(v) for v in list_versions(_store(), name)]
    except DatasetNotFound as error:
        fail(str(error))
    emit({"dataset": name, "versions": rows}, as_json)
    if not as_json:
        for row in rows:
            console.print(f"{name}@{row['number']}  {row['created_at'][:19]}  {row['entries']:>6} images  {row['message']}")


def diff(name: str = typer.Argument(...), a: int = typer.Argument(...), b: int = typer.Argument(...),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """What changed between two versions: added, removed, caption and tag changes."""
    from store.datasets import DatasetNotFound
    from store.versions import VersionNotFound, diff_versions

    try:
        result = diff_versions(_store(), name, a, b)
    except (DatasetNotFound, VersionNotFound) as error:
        fail(str(error))
    emit(result, as_json)
    if not as_json:
        console.print(f"{name} {a}→{b}: +{len(result['added'])} −{len(result['removed'])} ~{len(result['changed'])}")
        for row in result["added"]:
            console.print(f"  + {row['source_path']}")
        for row in result["removed"]:
            console.print(f"  − {row['source_path']}")
        for row in result["changed"]:
            console.print(f"  ~ {row['source_path']}: " + ", ".join(k for k in row if k not in ("image_sha256", "source_path")))


def export(
    ref: str = typer.Argument(..., help="NAME@N (or NAME for the newest version)"),
    fmt: str = typer.Option("kohya", "--format", help="kohya or imagefolder"),
    out: Path = typer.Option(..., "--out"),
    force: bool = typer.Option(False, help="replace a non-empty output folder"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export a version as a kohya folder tree or a Hugging Face imagefolder."""
    from store.datasets import DatasetNotFound, parse_version_ref
    from store.versions import VersionNotFound, export_version

    try:
        name, number = parse_version_ref(ref)
        summary = export_version(_store(), name, number, fmt, out, force)
    except (ValueError, DatasetNotFound, VersionNotFound, FileExistsError) as error:
        fail(str(error))
    emit(summary, as_json)
    if not as_json:
        console.print(f"exported {name}@{summary['version']} ({summary['images']} images, {fmt}) to {out}")
