"""`atelier serve` (the dashboard) and `atelier users add|list`."""

from __future__ import annotations

import os
import sys

import typer

from flows.cli_common import console, emit, fail

users_app = typer.Typer(help="Dashboard users (roles: viewer, curator, admin).", no_args_is_help=True)


def _read_password(password_stdin: bool) -> str:
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on stdin")
        return password
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="user name (no spaces)"),
    role: str = typer.Option("curator", "--role", help="viewer | curator | admin"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Add a user; the password comes from a prompt (or stdin when piped), stored as an argon2 hash."""
    from store.db import open_store
    from store.users import UserError, add_user

    password = _read_password(password_stdin)
    try:
        with open_store().session() as session:
            user = add_user(session, name, role, password)
    except UserError as error:
        fail(str(error))
    console.print(f"added {user.name} ({user.role})")
    emit({"name": user.name, "role": user.role}, as_json)


@users_app.command("list")
def users_list(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """List users with their roles."""
    from store.db import open_store
    from store.users import list_users

    with open_store().session() as session:
        users = list_users(session)
    for user in users:
        console.print(f"{user.name:20} {user.role}{'  (disabled)' if user.disabled else ''}", highlight=False)
    emit({"users": [{"name": u.name, "role": u.role, "disabled": u.disabled} for u in users]}, as_json)


def _change(fn, *args) -> None:
    from store.db import open_store
    from store.users import UserError

    try:
        with open_store().session() as session:
            return fn(session, *args)
    except UserError as error:
        fail(str(error))


@users_app.command("disable")
def users_disable(name: str = typer.Argument(..., help="user name"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Disable an account: it can no longer log in, and its open sessions end now."""
    from store.users import set_disabled

    _change(set_disabled, name, True)
    console.print(f"disabled {name} (sessions ended)")
    emit({"name": name, "disabled": True}, as_json)


@users_app.command("enable")
def users_enable(name: str = typer.Argument(..., help="user name"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Enable a disabled account again."""
    from store.users import set_disabled

    _change(set_disabled, name, False)
    console.print(f"enabled {name}")
    emit({"name": name, "disabled": False}, as_json)


@users_app.command("role")
def users_role(name: str = typer.Argument(..., help="user name"),
               role: str = typer.Argument(..., help="viewer | curator | admin"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Change a user's role (takes effect on their next request)."""
    from store.users import set_role

    _change(set_role, name, role)
    console.print(f"{name} is now a {role}")
    emit({"name": name, "role": role}, as_json)


@users_app.command("reset-password")
def users_reset_password(
    name: str = typer.Argument(..., help="user name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the new password from stdin"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Set a new password (prompt, or stdin when piped); every session of the user ends."""
    from store.users import set_password

    ended = _change(set_password, name, _read_password(password_stdin))
    console.print(f"password of {name} changed; {ended} session(s) ended")
    emit({"name": name, "sessions_ended": ended}, as_json)


def proxy_options(forwarded_allow_ips: str) -> dict:
    """uvicorn options: X-Forwarded-* are read only from the listed proxies (none by default; uvicorn
    itself would trust 127.0.0.1, so any local process could pose as any client)."""
    trusted = [a.strip() for a in forwarded_allow_ips.split(",") if a.strip()]
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="port to listen on"),
    workers: int = typer.Option(1, "--workers", min=1, help="uvicorn worker processes (several curators at once: one or two per core)"),
    threads: int = typer.Option(0, "--threads", min=0, help="requests served at once per worker (default 2, "
                                "ATELIER_DASHBOARD_THREADS; more for a PostgreSQL server far away)"),
    forwarded_allow_ips: str = typer.Option(
        "", "--forwarded-allow-ips",
        help="comma-separated proxy addresses whose X-Forwarded-For/-Proto are trusted (default: none)"),
    as_json: bool = typer.Option(False, "--json", help="print the address as one JSON object, then serve"),
) -> None:
    """Run the curator dashboard (FastAPI under uvicorn) over the store from the environment.

    Behind a TLS-terminating proxy, pass its address with --forwarded-allow-ips: the client address
    (login throttle) and the scheme then come from its X-Forwarded-* headers, and session cookies get
    `Secure`. Nobody else's forwarded headers are believed."""
    import uvicorn

    from dashboards.app import create_app, freeze_gc_wanted
    from store.db import open_store

    store = open_store()
    with store.session() as session:
        from store.users import list_users

        if not list_users(session):
            console.print("[yellow]no users yet:[/yellow] add one with `atelier users add NAME --role admin`")
    emit({"url": f"http://{host}:{port}", "docs": f"http://{host}:{port}/docs"}, as_json)
    console.print(f"dashboard on http://{host}:{port}  (API docs: /docs)")
    proxy = proxy_options(forwarded_allow_ips)
    if threads:  # read by every worker process's app
        os.environ["ATELIER_DASHBOARD_THREADS"] = str(threads)
    if workers > 1:  # each worker process builds its own app (and database pool) from the environment
        from dashboards.balance import ENV, WorkerLoads

        loads = WorkerLoads.create()  # the workers' requests in flight, to even out their connections
        os.environ[ENV] = loads.name
        try:
            uvicorn.run("dashboards.app:app_from_environment", factory=True, host=host, port=port,
                        workers=workers, log_level="info", **proxy)
        finally:
            loads.close()
            loads.unlink()
    else:
        uvicorn.run(create_app(store, freeze_gc=freeze_gc_wanted()), host=host, port=port, log_level="info", **proxy)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(users_app, name="users")
