"""Dashboard users: names, roles and argon2 password hashes.

Roles are ordered: a viewer reads; a curator also edits tags, captions and exclusions and
commits versions; an admin also browses the audit log and manages users.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
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
