"""Who may do what: every write needs a logged-in curator with a CSRF token; logins are rate-limited;
images are served by hash only."""

from __future__ import annotations

import io
import re

from PIL import Image
from sqlalchemy import func, select

from dashboards.thumbnails import thumbnail_path
from store.models import AuditEntry, Tag
from tests.dashboards.seed import PASSWORD

BODIES = {"tags": {"text": "sky", "revision": 1}, "status": {"text": "sky", "status": "accepted", "revision": 1},
          "remove": {"text": "sky", "revision": 1}, "caption": {"caption": "x", "revision": 1},
          "exclusion": {"excluded": True, "reason": "x", "revision": 1}, "reviewed": {"revision": 1},
          "bulk": {"op": "add", "tag": "x", "filter": {}}, "rename": {"tag": "sky", "new": "heaven"},
          "merge": {"tag": "sky", "new": "outdoors"}, "blacklist": {"tag": "sky"},
          "versions": {"message": "x"}, "undo": None, "logout": None}


def write_routes(app, member_id: int) -> list[tuple[str, str, dict | None]]:
    """Every non-GET route of the JSON API (from the OpenAPI document), with a plausible body."""
    routes = []
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            if method == "get" or path == "/api/login":
                continue
            url = (path.replace("{member_id}", str(member_id)).replace("{dataset}", "portraits")
                   .replace("{name}", "cur2"))
            key = url.rstrip("/").rsplit("/", 1)[-1]
            routes.append((method.upper(), url, BODIES.get(key, {"revision": 1})))
    return routes


def tags_snapshot(store):
    with store.session() as session:
        return sorted(session.execute(select(Tag.member_id, Tag.text, Tag.status)).all())


def test_every_write_route_refuses_anonymous_viewer_and_missing_csrf(seeded, app, client):
    store, ids = seeded
    routes = write_routes(app, ids["messi5.jpg"])
    assert len(routes) >= 13, routes  # member edits, bulk, tag rules, commit, undo, logout
    before = tags_snapshot(store)
    anonymous, viewer, curator = client(None), client("viewer"), client("cur1")
    del curator.headers["X-CSRF-Token"]
    for method, url, body in routes:
        assert anonymous.request(method, url, json=body).status_code == 401, (method, url)
        if url not in ("/api/logout", "/api/me/password"):  # anyone logged in may log out, change their password
            assert viewer.request(method, url, json=body).status_code == 403, (method, url)
        if url != "/api/logout":
            assert curator.request(method, url, json=body).status_code == 403, (method, url)
    assert tags_snapshot(store) == before
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)
                              .where(AuditEntry.action != "user_add")) == 0


def test_pages_need_login_and_the_audit_log_needs_an_admin(client):
    anonymous = client(None)
    r = anonymous.get("/d/portraits", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert anonymous.get("/api/datasets").status_code == 401
    assert client("cur1").get("/api/audit").status_code == 403
    assert client("boss").get("/api/audit").status_code == 200


def test_an_image_loading_after_logout_gets_a_plain_401_and_leaves_the_session_cookie_alone(client, seeded):
    """Not a redirect to the login page: rendering it would write a new CSRF token into the cookie,
    over the one the login form carries (its CSRF check then failed)."""
    store, ids = seeded
    c = client("cur1")
    sha = c.get("/api/datasets/portraits/members").json()["items"][0]["sha256"]
    assert c.post("/api/logout").status_code == 200
    for headers in ({"Sec-Fetch-Dest": "image", "Accept": "*/*"}, {"Accept": "image/avif,image/webp,*/*;q=0.8"}):
        r = c.get(f"/thumbs/{sha}", headers=headers, follow_redirects=False)
        assert r.status_code == 401 and r.json() == {"error": "log in first"}
        assert "set-cookie" not in r.headers
    page = c.get("/d/portraits", headers={"Sec-Fetch-Dest": "document"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_session_cookie_is_httponly_and_samesite(client):
    c = client(None)
    r = c.post("/api/login", json={"name": "cur1", "password": PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_login_form_needs_csrf_and_logs_in(client):
    c = client(None)
    page = c.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    bad = c.post("/login", data={"name": "cur1", "password": PASSWORD}, follow_redirects=False)
    assert bad.status_code == 403
    good = c.post("/login", data={"name": "cur1", "password": PASSWORD, "csrf_token": token, "next": "/d/portraits"},
                  follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/d/portraits"
    assert c.get("/api/me").json()["name"] == "cur1"


def test_login_attempts_are_rate_limited(client):
    c = client(None)
    for _ in range(5):
        assert c.post("/api/login", json={"name": "cur2", "password": "wrong password"}).status_code == 401
    blocked = c.post("/api/login", json={"name": "cur2", "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


def test_thumbnails_and_images_are_served_by_hash_only(seeded, client):
    store, ids = seeded
    c = client("viewer")
    sha = c.get(f"/api/members/{ids['messi5.jpg']}").json()["original"]["sha256"]
    r = c.get(f"/thumbs/{sha}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"]
    assert max(Image.open(io.BytesIO(r.content)).size) <= 320
    assert thumbnail_path(store, sha).exists()  # made once, cached by hash
    assert c.get(f"/thumbs/{sha}", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    full = c.get(f"/blobs/{sha}")
    assert full.content == (store.blobs.get(sha, "jpg"))
    for bad in ("0" * 64, "../../etc/passwd", "%2e%2e%2fsecret_key", sha.upper(), sha + ".jpg"):
        assert c.get(f"/thumbs/{bad}").status_code == 404, bad
        assert c.get(f"/blobs/{bad}").status_code == 404, bad
