"""`atelier users add/list`: the password comes from stdin, is stored hashed, and logs in."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flows.cli import app as cli


def test_users_add_from_stdin_then_log_in(atelier_env):
    runner = CliRunner()
    added = runner.invoke(cli, ["users", "add", "alice", "--role", "curator", "--json"], input="a long password\n")
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout.strip().splitlines()[-1]) == {"name": "alice", "role": "curator"}
    again = runner.invoke(cli, ["users", "add", "alice", "--role", "curator"], input="a long password\n")
    assert again.exit_code == 1 and "already exists" in again.output
    bad_role = runner.invoke(cli, ["users", "add", "bob", "--role", "boss"], input="a long password\n")
    assert bad_role.exit_code == 1 and "role 'boss'" in bad_role.output
    listed = runner.invoke(cli, ["users", "list", "--json"])
    assert json.loads(listed.stdout.strip().splitlines()[-1])["users"] == [
        {"name": "alice", "role": "curator", "disabled": False}]

    from dashboards.app import create_app
    from store.db import Store
    from store.models import User

    store = Store()
    with store.session() as session:
        stored = session.query(User).one().password_hash
    assert stored.startswith("$argon2") and "a long password" not in stored
    with TestClient(create_app(store)) as c:
        assert c.post("/api/login", json={"name": "alice", "password": "a long password"}).json()["role"] == "curator"
        assert c.post("/api/login", json={"name": "alice", "password": "wrong password"}).status_code == 401
    store.dispose()
