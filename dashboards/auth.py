"""Who is asking: server-side login sessions, roles and CSRF tokens.

The browser holds a signed cookie (HttpOnly, SameSite=Strict; Secure when served over HTTPS) with
the id of a server-side `LoginSession` and the CSRF token; the session row decides whether the
login still holds (logout, disabling and password changes revoke it). Every write must carry the
session's CSRF token, in the X-CSRF-Token header (JSON API) or a csrf_token form field.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from store.logins import session_owner
from store.users import UserInfo

CSRF_HEADER = "X-CSRF-Token"


def secret_key(home: Path) -> str:
    """ATELIER_SECRET_KEY, or a random key kept in $ATELIER_HOME/secret_key (so restarts keep sessions)."""
    if key := os.environ.get("ATELIER_SECRET_KEY"):
        return key
    path = home / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".tmp-{os.getpid()}")
        temp.write_text(secrets.token_urlsafe(48))
        temp.chmod(0o600)
        temp.replace(path)
    return path.read_text().strip()


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def check_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    given = request.headers.get(CSRF_HEADER)
    if not given and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        given = (await request.form()).get("csrf_token")
    if not expected or not given or not hmac.compare_digest(str(given), expected):
        raise HTTPException(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")


def session_token(request: Request) -> str | None:
    return request.session.get("sid")


def session_user(request: Request, db: Session | None = None) -> UserInfo | None:
    """The logged-in user, from the server-side session (a revoked or expired session, or a disabled
    account, is nobody); read once per request, in `db` when the route already has a database session."""
    if hasattr(request.state, "user"):
        return request.state.user
    user = None
    if token := session_token(request):
        if db is None:
            with request.app.state.store.session() as session:
                owner = session_owner(session, token)
        else:
            owner = session_owner(db, token)
        if owner and not owner[2]:
            user = UserInfo(owner[0], owner[1], False)
    request.state.user = user
    return user


def reader(request: Request) -> UserInfo:
    """Any logged-in user (viewer or above)."""
    return reader_in(request, None)


def reader_in(request: Request, db: Session | None) -> UserInfo:
    """`reader` inside a route's own database session: the grid's hot paths ask once, not twice
    (on PostgreSQL each session is a pool checkout, a ping and a transaction)."""
    user = session_user(request, db)
    if user is None:
        raise HTTPException(401, "log in first")
    return user


def writer(role: str):
    """A dependency: a logged-in user with `role` or above, and a valid CSRF token."""

    async def dependency(request: Request, user: UserInfo = Depends(reader)) -> UserInfo:
        if not user.can(role):
            raise HTTPException(403, f"{user.name} is a {user.role}; this needs the {role} role")
        await check_csrf(request)
        return user

    return dependency


curator = writer("curator")
admin_writer = writer("admin")


def admin_reader(user: UserInfo = Depends(reader)) -> UserInfo:
    if not user.can("admin"):
        raise HTTPException(403, f"{user.name} is a {user.role}; this needs the admin role")
    return user
