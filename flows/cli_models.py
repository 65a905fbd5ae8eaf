"""`atelier models` (the registry: present, missing, wrong hash) and `atelier models pull` (fetch entries)."""

from __future__ import annotations

import dataclasses

import typer

from flows.cli_common import console, emit, fail

models_app = typer.Typer(help="The model registry (configs/models.yaml): list entries, pull them.",
                         invoke_without_command=True, no_args_is_help=False)


@models_app.callback()
def models(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout")) -> None:
    """List every model in configs/models.yaml: present, missing (with where to put it) or wrong hash."""
    if ctx.invoked_subcommand is not None:
        return
    from store.registry import load_registry

    try:
        registry = load_registry()
    except ValueError as error:
        fail(str(error))
    rows = [dataclasses.asdict(row) for row in registry.status()]
    if as_json:
        emit({"models_dir": str(registry.models_dir), "models": rows}, True)
        return
    from rich.table import Table

    table = Table("name", "kind", "status", "path")
    colour = {"present": "green", "missing": "yellow", "wrong-hash": "red"}
    for row in rows:
        table.add_row(row["name"], row["kind"], f"[{colour[row['status']]}]{row['status']}", row["path"])
    console.print(table)
    console.print(f"models folder: {registry.models_dir} (set ATELIER_MODELS to change it); "
                  "`atelier models pull NAME` fetches one")


@models_app.command("pull")
def pull(
    names: list[str] | None = typer.Argument(None, help="registry names (see `atelier models`)"),
    pull_all: bool = typer.Option(False, "--all", help="every entry that has a URL or a hub repo"),
    source: str | None = typer.Option(None, "--source", help="a mirror: the hub endpoint for hub entries, "
                                         "and URL/<path> for file entries (the models-folder layout)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Download registry entries into $ATELIER_MODELS, verifying every published sha256.

    Hub entries go through huggingface_hub (HF_ENDPOINT and the Hugging Face cache honoured);
    URL entries resume a partial download. This is the only command that goes online.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from store.model_pull import PullError, pullable
    from store.model_pull import pull as pull_entry
    from store.registry import load_registry

    try:
        registry = load_registry()
    except ValueError as error:
        fail(str(error))
    if pull_all == bool(names):
        fail("name the entries to pull, or give --all")
    wanted = sorted(n for n, e in registry.entries.items() if pullable(e)) if pull_all else list(names)
    unknown = [n for n in wanted if n not in registry.entries]
    if unknown:
        fail(f"not in the registry: {', '.join(unknown)} (see `atelier models`)")
    results, errors = [], []
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def on_progress(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    with bar:
        for name in wanted:
            try:
                result = pull_entry(registry, name, source, on_progress)
            except PullError as error:
                errors.append({"name": name, "error": str(error)})
                console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
                continue
            results.append(dataclasses.asdict(result))
            if not as_json:
                resumed = f", resumed at {result.resumed_from} bytes" if result.resumed_from else ""
                console.print(f"{name}: {result.status} → {result.path} ({result.bytes} bytes{resumed})", highlight=False, soft_wrap=True)
    emit({"models_dir": str(registry.models_dir), "pulled": results, "errors": errors}, as_json)
    if errors:
        raise typer.Exit(1)
