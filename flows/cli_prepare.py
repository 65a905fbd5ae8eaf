"""`atelier prepare` (the pipeline over a dataset) and `atelier deploy` (Prefect deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import api_url, console, emit, fail, parse_sets, prefect_api, progress


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
    app.command("deploy")(deploy)


def prepare(
    name: str = typer.Argument(..., help="dataset"),
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="pipeline YAML (default configs/pipeline/default.yaml)"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="override: step.key=value or a pipeline field"),
    commit: bool = typer.Option(False, "--commit", help="commit a version when the run ends"),
    message: Optional[str] = typer.Option(None, "-m", "--message", help="version message (with --commit)"),
    as_json: bool = typer.Option(False, "--json", help="per-step counts and times as one JSON object"),
) -> None:
    """Run the pipeline's steps over a dataset; only what changed since the last run is computed."""
    from flows.pipeline import load_pipeline
    from flows.pipeline_run import check_pipeline
    from store.datasets import DatasetNotFound
    from store.db import open_store

    overrides = parse_sets(sets)
    try:
        config = load_pipeline(pipeline, overrides)
    except ValueError as error:
        fail(str(error))
    if commit and not message:
        fail("--commit needs -m MESSAGE")
    pipeline_name = str(pipeline) if pipeline else None
    store = open_store()
    try:
        check_pipeline(store, name, config, pipeline_name)
    except (DatasetNotFound, ValueError) as error:
        fail(str(error))
    summary = _cached(store, name, config, pipeline_name, overrides, message if commit else None)
    if summary is None:
        summary = _run_flow(name, config, pipeline_name, overrides, message if commit else None)
    _print_summary(name, summary, as_json)


def _cached(store, name: str, config, pipeline: str | None, overrides: dict, commit_message: str | None) -> dict | None:
    """Every step cached: the summary, its run recorded as Completed (no Prefect import, no engine)."""
    from flows.prepare_noop import cached_run
    from flows.quick_run import record_completed_run

    url = api_url()  # before anything is written: a dead server fails the command first
    summary = cached_run(store, name, config, commit_message)
    if summary is None:
        return None
    message = (f"nothing to do: {summary['members']} members, every step cached "
               f"({', '.join(c['step'] for c in summary['steps'])})")
    parameters = {"dataset": name, "pipeline": pipeline, "overrides": overrides, "commit_message": commit_message}
    run_id = record_completed_run(url, "prepare", parameters, message)
    where = f". View at {url.removesuffix('/api')}/runs/flow-run/{run_id}" if run_id else " (not recorded: the Prefect API refused it)"
    console.print(f"prepare {name}: {message}{where}", highlight=False, soft_wrap=True)
    return summary


def _run_flow(name: str, config, pipeline: str | None, overrides: dict, commit_message: str | None) -> dict:
    from flows.prepare import prepare as run_prepare
    from store.datasets import DatasetNotFound

    with prefect_api(), progress() as bar:
        tasks = {step.id: bar.add_task(step.id, total=None) for step in config.steps}

        def on_progress(step_id: str, done: int, total: int) -> None:
            bar.update(tasks[step_id], completed=done if total else 1, total=total or 1)

        try:
            return run_prepare(name, pipeline, overrides, commit_message, on_progress, checked=True)
        except (DatasetNotFound, ValueError) as error:
            fail(str(error))


def _print_summary(name: str, summary: dict, as_json: bool) -> None:
    if as_json:  # the markdown and contact-sheet path are for the Prefect UI, not the JSON summary
        summary.pop("report", None)
    emit(summary, as_json)
    if not as_json:
        for c in summary["steps"]:
            console.print(f"{c['step']:>12}: done {c['done']}, cached {c['cached']}, not applicable "
                          f"{c['not_applicable']}, failed {len(c['failed'])}, excluded {c['excluded']} "
                          f"({c['seconds']:.2f} s, {c['backend'] or '-'})"
                          + (f" — skipped: {c['skipped']}" if c.get("skipped") else ""), highlight=False)
            for failure in c["failed"]:
                console.print(f"              failed {failure['path']}: {failure['reason']}", highlight=False)
        if summary.get("version"):
            console.print(f"committed {name}@{summary['version']['number']}")


def deploy(
    prefect_file: Path = typer.Option(Path("prefect.yaml"), "--file", help="deployments file"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create the work pools and deployments of prefect.yaml on the running Prefect server."""
    from flows.deploy import deploy_all

    try:
        with prefect_api():
            result = deploy_all(prefect_file)
    except (ValueError, RuntimeError, OSError) as error:
        fail(str(error))
    emit(result, as_json)
    if not as_json:
        for pool in result["pools"]:
            console.print(f"work pool {pool['name']} ({pool['type']}, concurrency {pool['concurrency_limit']})")
        for dep in result["deployments"]:
            console.print(f"deployment {dep['name']} → pool {dep['work_pool']}" + (f", schedule {dep['cron']}" if dep.get("cron") else ""))
        console.print("start a worker for each pool, e.g.:")
        for pool in result["pools"]:
            console.print(f"  .venv/bin/prefect worker start --pool {pool['name']}")
