"""`atelier serve` (the dashboard) and `atelier users add|list`."""

from __future__ import annotations

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


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="port to listen on"),
    as_json: bool = typer.Option(False, "--json", help="print the address as one JSON object, then serve"),
) -> None:
    """Run the curator dashboard (FastAPI under uvicorn) over the store from the environment."""
    import uvicorn

    from dashboards.app import create_app
    from store.db import open_store

    store = open_store()
    with store.session() as session:
        from store.users import list_users

        if not list_users(session):
            console.print("[yellow]no users yet:[/yellow] add one with `atelier users add NAME --role admin`")
    emit({"url": f"http://{host}:{port}", "docs": f"http://{host}:{port}/docs"}, as_json)
    console.print(f"dashboard on http://{host}:{port}  (API docs: /docs)")
    uvicorn.run(create_app(store), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(users_app, name="users")
