"""Dashboard users: names, roles and argon2 password hashes.

Roles are ordered: a viewer reads; a curator also edits tags, captions and exclusions and
commits versions; an admin also browses the audit log and manages users.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import AuditEntry, User

ROLES = ("viewer", "curator", "admin")
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user cannot be created or changed as asked (the message says why)."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    disabled: bool = False

    def can(self, role: str) -> bool:
        """True when this user's role is `role` or above it."""
        return not self.disabled and ROLES.index(self.role) >= ROLES.index(role)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def add_user(session: Session, name: str, role: str, password: str, by: str = "cli") -> UserInfo:
    """Create a user; the name must be new, the role one of ROLES, the password 8+ characters."""
    name = name.strip()
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise UserError(f"user name {name!r}: 1–100 characters, no spaces")
    if role not in ROLES:
        raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise UserError("password: at least 8 characters")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserError(f"user {name!r} already exists")
    session.add(User(name=name, role=role, password_hash=hash_password(password)))
    session.add(AuditEntry(user=by, action="user_add", target=f"user:{name}", before={}, after={"role": role}))
    return UserInfo(name, role)


def list_users(session: Session) -> list[UserInfo]:
    rows = session.scalars(select(User).order_by(User.name))
    return [UserInfo(u.name, u.role, u.disabled) for u in rows]


def get_user(session: Session, name: str) -> UserInfo | None:
    user = session.scalar(select(User).where(User.name == name))
    return UserInfo(user.name, user.role, user.disabled) if user else None


def authenticate(session: Session, name: str, password: str) -> UserInfo | None:
    """The user when the password matches (and the account is enabled), else None."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        # hash anyway so that response time does not tell which names exist
        _hasher.hash(password)
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if user.disabled:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return UserInfo(user.name, user.role, user.disabled)


def _row(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserError(f"no user named {name!r}")
    return user


def _check_admins_left(session: Session, name: str) -> None:
    others = session.scalar(select(func.count()).select_from(User).where(
        User.role == "admin", User.disabled.is_(False), User.name != name))
    if not others:
        raise UserError(f"{name!r} is the last enabled admin: make another admin first")


def set_disabled(session: Session, name: str, disabled: bool, by: str = "cli") -> UserInfo:
    """Disable (every session of the user ends at once) or enable an account."""
    from store.logins import revoke_user_sessions

    user = _row(session, name)
    if disabled and user.role == "admin" and not user.disabled:
        _check_admins_left(session, name)
    before = user.disabled
    user.disabled = disabled
    ended = revoke_user_sessions(session, name, "disabled") if disabled else 0
    session.add(AuditEntry(user=by, action="user_disable" if disabled else "user_enable", target=f"user:{name}",
                           before={"disabled": before}, after={"disabled": disabled, "sessions_ended": ended}))
    return UserInfo(user.name, user.role, user.disabled)


def set_role(session: Session, name: str, role: str, by: str = "cli") -> UserInfo:
    if role not in ROLES:
        raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    user = _row(session, name)
    if user.role == "admin" and role != "admin" and not user.disabled:
        _check_admins_left(session, name)
    before = user.role
    user.role = role
    session.add(AuditEntry(user=by, action="user_role", target=f"user:{name}", before={"role": before},
                           after={"role": role}))
    return UserInfo(user.name, user.role, user.disabled)


def set_password(session: Session, name: str, password: str, by: str = "cli", keep_session: str | None = None) -> int:
    """Set a new password; every session of the user ends (but `keep_session`, the one asking). Returns how many."""
    from store.logins import revoke_user_sessions

    if len(password) < 8:
        raise UserError("password: at least 8 characters")
    user = _row(session, name)
    user.password_hash = hash_password(password)
    ended = revoke_user_sessions(session, name, "password changed", keep=keep_session)
    session.add(AuditEntry(user=by, action="user_password", target=f"user:{name}", before={},
                           after={"sessions_ended": ended}))
    return ended


def check_password(session: Session, name: str, password: str) -> bool:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
