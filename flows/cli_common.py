"""What every `atelier` command shares: --set parsing, JSON output, one-line failures, progress."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# human text goes to stderr so that --json output on stdout stays one clean object
console = Console(stderr=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with a one-line reason."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # one line, however long
    raise typer.Exit(code)


def emit(obj: Any, as_json: bool) -> None:
    """Print one JSON object on stdout (for --json)."""
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set a.b=1 --set c=x` → {"a": {"b": 1}, "c": "x"}; values are parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            fail(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                fail(f"--set {pair!r}: {part!r} is set to a value and also used as a section")
        node[parts[-1]] = value
    return result


def progress() -> Progress:
    """A rich progress bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        # no stdout/stderr proxies: Prefect ships the run context (sys streams included) to process workers
        redirect_stdout=False,
        redirect_stderr=False,
        disable=not console.is_terminal,
    )


def api_url() -> str:
    """The Prefect API to use (PREFECT_API_URL, or this home's local server, started in the background
    on first use and reused by later commands); one line and exit when there is none."""
    from flows.prefect_server import PrefectUnavailable, ensure_api

    try:
        url, started = ensure_api()
    except PrefectUnavailable as error:
        fail(str(error))
    if started:
        console.print(f"started the Prefect server for this home: UI at {url.removesuffix('/api')} "
                      "(`atelier server stop` stops it)", highlight=False)
    return url


@contextmanager
def prefect_api() -> Iterator[str]:
    """Around a command's flow calls: the Prefect API to use (PREFECT_API_URL, or this home's local
    server, started in the background on first use and reused by later commands)."""
    url = api_url()
    before = os.environ.get("PREFECT_API_URL")
    # before Prefect reads its settings: this process's threads and the processes a flow starts
    # (process and Dask task runners) see the same API
    os.environ["PREFECT_API_URL"] = url
    loaded_before = "prefect.context" in sys.modules
    import prefect.context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    if loaded_before and prefect.context.GLOBAL_SETTINGS_CONTEXT.settings.api.url != url:
        prefect.context.refresh_global_settings_context()
    try:
        # no heartbeat thread for a flow run in this process: its stop waits out a 1 s sleep
        # (half a second per command) and nothing here listens for heartbeats
        with temporary_settings({PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
