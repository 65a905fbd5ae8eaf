"""Accounts an admin can run: sessions end on the server at logout, disable and password change;
roles change at once; HTTPS gets Secure cookies; the CLI does the same as the admin page."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from store.models import LoginSession, LoginThrottle
from tests.dashboards.seed import PASSWORD


def test_logout_ends_the_session_on_the_server(app, client):
    c = client("cur1")
    saved = dict(c.cookies)
    assert c.post("/api/logout").status_code == 200
    replay = TestClient(app, cookies=saved)  # a copy of the cookie taken before logging out
    assert replay.get("/api/me").status_code == 401
    assert replay.get("/d/portraits", follow_redirects=False).status_code == 303


def test_disable_and_password_reset_end_every_session_and_role_changes_apply_at_once(seeded, app, client):
    store, _ = seeded
    admin, cur2, cur2_phone = client("boss"), client("cur2"), client("cur2")
    r = admin.post("/api/users/cur2/disable")
    assert r.status_code == 200
    assert cur2.get("/api/me").status_code == 401 and cur2_phone.get("/api/me").status_code == 401
    assert TestClient(app).post("/api/login", json={"name": "cur2", "password": PASSWORD}).status_code == 401
    assert admin.post("/api/users/cur2/enable").status_code == 200
    cur2 = client("cur2")
    assert admin.put("/api/users/cur2/role", json={"role": "viewer"}).json()["role"] == "viewer"
    assert cur2.get("/api/me").json()["role"] == "viewer"
    assert cur2.post("/api/datasets/portraits/bulk", json={"op": "add", "tag": "x", "filter": {}}).status_code == 403

    reset = admin.post("/api/users/cur2/password", json={}).json()
    assert reset["sessions_ended"] == 1 and len(reset["password"]) >= 12
    assert cur2.get("/api/me").status_code == 401
    fresh = TestClient(app)
    assert fresh.post("/api/login", json={"name": "cur2", "password": reset["password"]}).status_code == 200
    users = {u["name"]: u for u in admin.get("/api/users").json()["users"]}
    assert users["cur2"]["role"] == "viewer" and users["cur2"]["sessions"] == 1
    assert admin.post("/api/users/boss/disable").status_code == 400  # the last admin stays
    assert client("cur1").get("/api/users").status_code == 403
    assert "Reset password" in admin.get("/admin/users").text


def test_changing_my_password_ends_my_other_sessions(app, client):
    laptop, phone = client("cur1"), client("cur1")
    wrong = laptop.post("/api/me/password", json={"current": "nope", "new": "another long one"})
    assert wrong.status_code == 403
    r = laptop.post("/api/me/password", json={"current": PASSWORD, "new": "another long one"})
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert phone.get("/api/me").status_code == 401 and laptop.get("/api/me").status_code == 200


def test_failed_logins_are_counted_per_account_and_client_and_a_known_device_is_not_locked_out(seeded, app):
    store, _ = seeded
    device = TestClient(app)  # the real user's browser: logged in before, has a device cookie
    assert device.post("/api/login", json={"name": "cur1", "password": PASSWORD}).status_code == 200
    device.post("/api/logout")
    attacker = TestClient(app)
    codes = [attacker.post("/api/login", json={"name": "cur1", "password": f"guess {n}"}).status_code for n in range(8)]
    assert codes == [401] * 5 + [429] * 3
    refused = attacker.post("/api/login", json={"name": "cur1", "password": PASSWORD})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0  # even the right password
    assert device.post("/api/login", json={"name": "cur1", "password": PASSWORD}).status_code == 200
    with store.session() as session:
        keys = set(session.scalars(select(LoginThrottle.key)))
    assert {"user:cur1", "client:testclient"} <= keys


def test_cookies_are_secure_over_https(app):
    plain = TestClient(app).post("/api/login", json={"name": "cur1", "password": PASSWORD})
    assert "secure" not in plain.headers["set-cookie"].lower()
    https = TestClient(app, base_url="https://testserver").post("/api/login", json={"name": "cur1", "password": PASSWORD})
    cookies = https.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all("; Secure" in c for c in cookies)


def test_users_cli_disable_enable_role_reset_password(seeded, client):
    store, _ = seeded
    from flows.cli import app as cli

    runner = CliRunner()
    session_of_cur2 = client("cur2")
    assert runner.invoke(cli, ["users", "disable", "cur2", "--json"]).exit_code == 0
    assert session_of_cur2.get("/api/me").status_code == 401
    assert runner.invoke(cli, ["users", "enable", "cur2"]).exit_code == 0
    assert runner.invoke(cli, ["users", "role", "cur2", "admin"]).exit_code == 0
    assert client("cur2").get("/api/me").json()["role"] == "admin"
    result = runner.invoke(cli, ["users", "reset-password", "cur2", "--password-stdin"], input="a fresh password\n")
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["users", "role", "cur2", "boss"]).exit_code != 0
    with store.session() as session:
        assert session.scalar(select(LoginSession.revoked_why).where(LoginSession.user == "cur2")
                              .order_by(LoginSession.created_at.desc())) == "password changed"
