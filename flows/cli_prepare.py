"""`atelier prepare` (the pipeline over a dataset) and `atelier deploy` (Prefect deployments)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import console, emit, fail, parse_sets, prefect_api, progress


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
    from flows.prepare import prepare as run_prepare
    from flows.pipeline import load_pipeline
    from store.datasets import DatasetNotFound

    overrides = parse_sets(sets)
    try:
        config = load_pipeline(pipeline, overrides)
    except ValueError as error:
        fail(str(error))
    if commit and not message:
        fail("--commit needs -m MESSAGE")
    with prefect_api(), progress() as bar:
        tasks = {step.id: bar.add_task(step.id, total=None) for step in config.steps}

        def on_progress(step_id: str, done: int, total: int) -> None:
            bar.update(tasks[step_id], completed=done if total else 1, total=total or 1)

        try:
            summary = run_prepare(name, str(pipeline) if pipeline else None, overrides,
                                  message if commit else None, on_progress)
        except (DatasetNotFound, ValueError) as error:
            fail(str(error))
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
