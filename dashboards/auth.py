"""Who is asking: session login, roles, CSRF tokens and the login rate limit.

The session lives in a signed cookie (HttpOnly, SameSite=Strict). Every write must carry the
session's CSRF token, in the X-CSRF-Token header (JSON API) or a csrf_token form field.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from fastapi import Depends, HTTPException, Request

from store.users import UserInfo, get_user

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


class LoginLimiter:
    """At most `attempts` failed logins per client address and per user name within `window` seconds."""

    def __init__(self, attempts: int = 5, window: float = 300.0):
        self.attempts, self.window = attempts, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures[key]
        while times and times[0] < now - self.window:
            times.popleft()
        return times

    def retry_after(self, *keys: str) -> int:
        """Seconds to wait before another try (0 when allowed)."""
        now = time.monotonic()
        with self.lock:
            waits = [self.window - (now - t[0]) for k in keys if len(t := self._recent(k, now)) >= self.attempts]
        return int(max(waits)) + 1 if waits else 0

    def failed(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.failures[key].append(time.monotonic())

    def succeeded(self, *keys: str) -> None:
        with self.lock:
            for key in keys:
                self.failures.pop(key, None)


def session_user(request: Request) -> UserInfo | None:
    """The logged-in user (re-read from the database, so a disabled account stops at once)."""
    name = request.session.get("user")
    if not name:
        return None
    with request.app.state.store.session() as session:
        user = get_user(session, name)
    return user if user and not user.disabled else None


def reader(request: Request) -> UserInfo:
    """Any logged-in user (viewer or above)."""
    user = session_user(request)
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
