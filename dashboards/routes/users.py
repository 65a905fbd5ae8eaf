"""Accounts, for admins: list, add, disable/enable (ends their sessions), change role, reset a password."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from dashboards.auth import admin_reader, admin_writer
from dashboards.pages import render
from store import logins
from store.users import ROLES, UserInfo, add_user, list_users, set_disabled, set_password, set_role

router = APIRouter()


class NewUser(BaseModel):
    name: str
    role: str = "curator"
    password: str | None = Field(None, description="omit to get a generated one in the reply")


class Role(BaseModel):
    role: str = Field(description=" | ".join(ROLES))


class Password(BaseModel):
    password: str | None = Field(None, description="omit to get a generated one in the reply (shown once)")


def users_data(request: Request) -> list[dict]:
    with request.app.state.store.session() as session:
        return [{"name": u.name, "role": u.role, "disabled": u.disabled,
                 "sessions": logins.live_sessions(session, u.name)} for u in list_users(session)]


@router.get("/api/users", tags=["users"])
def api_users(request: Request, me: UserInfo = Depends(admin_reader)):
    """Every account with its role, whether it is disabled and how many live sessions it has."""
    return {"users": users_data(request), "roles": list(ROLES)}


@router.post("/api/users", tags=["users"])
def api_add_user(request: Request, body: NewUser, me: UserInfo = Depends(admin_writer)):
    password = body.password or secrets.token_urlsafe(12)
    with request.app.state.store.session() as session:
        user = add_user(session, body.name, body.role, password, by=me.name)
    return {"name": user.name, "role": user.role, **({"password": password} if not body.password else {})}


@router.post("/api/users/{name}/disable", tags=["users"])
def api_disable(request: Request, name: str, me: UserInfo = Depends(admin_writer)):
    """Disable an account: it cannot log in, and every session it has ends now."""
    with request.app.state.store.session() as session:
        user = set_disabled(session, name, True, by=me.name)
    return {"name": user.name, "disabled": True}


@router.post("/api/users/{name}/enable", tags=["users"])
def api_enable(request: Request, name: str, me: UserInfo = Depends(admin_writer)):
    with request.app.state.store.session() as session:
        user = set_disabled(session, name, False, by=me.name)
    return {"name": user.name, "disabled": False}


@router.put("/api/users/{name}/role", tags=["users"])
def api_role(request: Request, name: str, body: Role, me: UserInfo = Depends(admin_writer)):
    with request.app.state.store.session() as session:
        user = set_role(session, name, body.role, by=me.name)
    return {"name": user.name, "role": user.role}


@router.post("/api/users/{name}/password", tags=["users"])
def api_reset_password(request: Request, name: str, body: Password, me: UserInfo = Depends(admin_writer)):
    """Reset a password (every session of that user ends); a generated one is returned once."""
    password = body.password or secrets.token_urlsafe(12)
    with request.app.state.store.session() as session:
        ended = set_password(session, name, password, by=me.name)
    return {"name": name, "sessions_ended": ended, **({"password": password} if not body.password else {})}


@router.get("/admin/users", include_in_schema=False)
def users_page(request: Request, me: UserInfo = Depends(admin_reader)):
    return render(request, "users.html", user=me, users=users_data(request), roles=ROLES)
