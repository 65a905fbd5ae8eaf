"""Dashboard logins kept on the server, and the failed-login throttle that every worker shares.

A login makes a `LoginSession` row; the browser's cookie holds only its random id (the row keeps
the id's SHA-256). Logging out, disabling the account or changing its password revokes rows, so a
cookie saved earlier stops working at once.

The throttle counts failures per key in the database with one atomic UPDATE … RETURNING, so
parallel wrong logins cannot all slip in before the count is written. Keys: `user:NAME` and
`client:ADDRESS` for an unknown browser; `device:ID` for a browser that logged in as that user
before (a signed device cookie). An attacker who exhausts `user:NAME` therefore does not lock
out the real user on their own device (OWASP's "device cookies").
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import LoginSession, LoginThrottle, User

SESSION_HOURS = 12


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: str, client: str | None = None, hours: float = SESSION_HOURS) -> str:
    """A new login session for `user`; returns the token the cookie carries."""
    token = secrets.token_urlsafe(32)
    now = _now()
    session.add(LoginSession(id=_digest(token), user=user, client=(client or "")[:100], created_at=now,
                             expires_at=now + timedelta(hours=hours)))
    session.flush()
    return token


def session_owner(session: Session, token: str | None) -> tuple[str, str, bool] | None:
    """(name, role, disabled) of a live session's user, or None (unknown, expired, revoked)."""
    if not token:
        return None
    row = session.execute(
        select(User.name, User.role, User.disabled, LoginSession.expires_at)
        .join(User, User.name == LoginSession.user)
        .where(LoginSession.id == _digest(token), LoginSession.revoked_at.is_(None))).first()
    if row is None or _aware(row.expires_at) <= _now():
        return None
    return row.name, row.role, row.disabled


def revoke_session(session: Session, token: str | None, why: str = "logout") -> None:
    if token:
        session.execute(update(LoginSession).where(LoginSession.id == _digest(token),
                                                   LoginSession.revoked_at.is_(None))
                        .values(revoked_at=_now(), revoked_why=why))


def revoke_user_sessions(session: Session, user: str, why: str, keep: str | None = None) -> int:
    """Revoke every live session of `user` (except the one with token `keep`); returns how many."""
    query = update(LoginSession).where(LoginSession.user == user, LoginSession.revoked_at.is_(None))
    if keep:
        query = query.where(LoginSession.id != _digest(keep))
    return session.execute(query.values(revoked_at=_now(), revoked_why=why)).rowcount


def live_sessions(session: Session, user: str) -> int:
    return len(session.scalars(select(LoginSession.id).where(
        LoginSession.user == user, LoginSession.revoked_at.is_(None), LoginSession.expires_at > _now())).all())


@dataclass(frozen=True)
class Throttle:
    """At most `attempts` failures per key within `window` s; each further failure doubles the wait
    (`base_lock` s, then 2×, 4×, … up to `window`), so a patient guesser gets a handful of tries an hour."""

    attempts: int = 5
    window: float = 300.0
    base_lock: float = 30.0


def _insert(session: Session):
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(LoginThrottle)


def retry_after(session: Session, keys: list[str]) -> int:
    """Seconds until a login may be tried for these keys (0: now)."""
    now = _now()
    waits = [(_aware(until) - now).total_seconds() for until in session.scalars(
        select(LoginThrottle.locked_until).where(LoginThrottle.key.in_(keys))) if until is not None]
    wait = max(waits, default=0.0)
    return int(wait) + 1 if wait > 0 else 0


def reserve_attempt(session: Session, keys: list[str], throttle: Throttle) -> int:
    """Count one attempt against every key atomically; returns the wait in s when over the limit (0: go on).

    Each attempt is counted before the password is checked (and forgiven by `forget` on success), so
    30 parallel tries see counts 1…30 and only the first `attempts` reach the password check.
    """
    now = _now()
    window_start = now - timedelta(seconds=throttle.window)
    worst = 0.0
    for key in sorted(keys):  # a fixed order: two logins never wait on each other's rows crosswise
        insert = _insert(session).values(key=key, failures=0, window_start=now)
        session.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
        row = session.execute(
            update(LoginThrottle).where(LoginThrottle.key == key)
            .values(failures=LoginThrottle.failures + 1)
            .returning(LoginThrottle.failures, LoginThrottle.window_start, LoginThrottle.locked_until)).one()
        failures, started, locked = row
        started, locked = _aware(started), _aware(locked)
        if started < window_start and (locked is None or locked <= now):  # an old window: start afresh
            failures = 1
            session.execute(update(LoginThrottle).where(LoginThrottle.key == key)
                            .values(failures=1, window_start=now, locked_until=None))
        if locked is not None and locked > now:
            worst = max(worst, (locked - now).total_seconds())
        elif failures > throttle.attempts:
            lock = min(throttle.window, throttle.base_lock * 2 ** (failures - throttle.attempts - 1))
            session.execute(update(LoginThrottle).where(LoginThrottle.key == key)
                            .values(locked_until=now + timedelta(seconds=lock)))
            worst = max(worst, lock)
    return int(worst) + 1 if worst > 0 else 0


def forget(session: Session, keys: list[str]) -> None:
    """A successful login: its keys start from zero."""
    session.execute(update(LoginThrottle).where(LoginThrottle.key.in_(keys))
                    .values(failures=0, locked_until=None, window_start=_now()))
