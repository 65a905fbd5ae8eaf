"""`atelier server start|stop|status`: the local Prefect server every command of this home shares."""

from __future__ import annotations

import typer

from flows.cli_common import console, emit, fail


def register(app: typer.Typer) -> None:
    server = typer.Typer(help="The local Prefect server (started on first use; these commands manage it).",
                         no_args_is_help=True)
    server.command("start")(start)
    server.command("stop")(stop)
    server.command("status")(status)
    app.add_typer(server, name="server")


def _describe(info) -> dict:
    return {"running": info is not None, "url": info.url if info else None, "ui": info.ui_url if info else None,
            "pid": info.pid if info else None, "log": info.log if info else None}


def start(as_json: bool = typer.Option(False, "--json")) -> None:
    """Start this home's Prefect server in the background (a no-op when it already runs)."""
    from flows.prefect_server import PrefectUnavailable, configured_api_url, start_server

    if url := configured_api_url():
        fail(f"PREFECT_API_URL is set ({url}): commands use that server; unset it to use a local one")
    try:
        info, started = start_server()
    except PrefectUnavailable as error:
        fail(str(error))
    emit({**_describe(info), "started": started}, as_json)
    if not as_json:
        console.print(f"Prefect server {'started' if started else 'already running'}: UI at {info.ui_url} "
                      f"(pid {info.pid}, log {info.log})", highlight=False)


def stop(as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop this home's Prefect server (flow run history stays in its database)."""
    from flows.prefect_server import stop_server

    info = stop_server()
    emit({"stopped": info is not None, "pid": info.pid if info else None}, as_json)
    if not as_json:
        console.print(f"stopped the Prefect server (pid {info.pid})" if info else "no Prefect server was running")


def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Which Prefect API commands use: PREFECT_API_URL, or this home's server (running or not)."""
    from flows.prefect_server import configured_api_url, healthy, running_server

    if url := configured_api_url():
        result = {"running": healthy(url), "url": url, "source": "PREFECT_API_URL"}
    else:
        result = {**_describe(running_server()), "source": "local"}
    emit(result, as_json)
    if not as_json:
        where = "PREFECT_API_URL" if result["source"] != "local" else "this home's server"
        console.print(f"{where}: {result['url'] or '-'} — {'running' if result['running'] else 'not running'}"
                      + (f" (pid {result['pid']})" if result.get("pid") else ""), highlight=False)
