"""Logging in and out (a form for people, JSON for scripts), who am I, and changing one's password.

Failed logins are throttled in the database (store.logins): per account and per client address
for an unknown browser, per device for a browser that logged in as that user before.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel

from dashboards.auth import check_csrf, csrf_token, reader, session_token, writer
from dashboards.pages import render
from store import logins
from store.users import UserInfo, authenticate, check_password, set_password

router = APIRouter()
DEVICE_COOKIE = "atelier_device"


class Credentials(BaseModel):
    name: str
    password: str


class PasswordChange(BaseModel):
    current: str
    new: str


def _devices(request: Request) -> URLSafeSerializer:
    return URLSafeSerializer(request.app.state.secret_key, salt="atelier-device")


def _device_of(request: Request, name: str) -> str | None:
    """The device id when this browser logged in as `name` before (its signed device cookie)."""
    try:
        data = _devices(request).loads(request.cookies.get(DEVICE_COOKIE, ""))
    except BadSignature:
        return None
    return data.get("device") if isinstance(data, dict) and data.get("user") == name else None


def client_address(request: Request) -> str:
    # request.client is the proxy's address unless uvicorn was told to trust it (--forwarded-allow-ips)
    return request.client.host if request.client else "?"


def _login(request: Request, response: Response, name: str, password: str) -> UserInfo:
    store, throttle = request.app.state.store, request.app.state.login_throttle
    device = _device_of(request, name)
    keys = [f"device:{device}"] if device else [f"user:{name}", f"client:{client_address(request)}"]
    with store.session() as session:  # its own short transaction: counted before the password is checked
        wait = logins.reserve_attempt(session, keys, throttle)
    if wait:
        raise HTTPException(429, f"too many failed logins; try again in {wait} s", headers={"Retry-After": str(wait)})
    with store.session() as session:
        user = authenticate(session, name, password)
        if user is None:
            raise HTTPException(401 if request.url.path.startswith("/api") else 400, "wrong name or password")
        logins.forget(session, keys)
        old = session_token(request)
        logins.revoke_session(session, old, "new login")
        token = logins.start_session(session, user.name, client_address(request))
    request.session.clear()  # a fresh session (and CSRF token) on every login
    request.session["sid"] = token
    csrf_token(request)
    device = device or secrets.token_urlsafe(16)
    response.set_cookie(DEVICE_COOKIE, _devices(request).dumps({"user": user.name, "device": device}),
                        max_age=365 * 24 * 3600, httponly=True, samesite="strict")
    return user


def _logout(request: Request) -> None:
    with request.app.state.store.session() as session:
        logins.revoke_session(session, session_token(request), "logout")
    request.session.clear()


def _safe_next(target: str | None) -> str:
    # only same-site paths: never redirect to another host after login
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str | None = None):
    return render(request, "login.html", user=None, next=_safe_next(next), error=None)


@router.post("/login", include_in_schema=False, dependencies=[Depends(check_csrf)])
def login_form(request: Request, name: str = Form(...), password: str = Form(...), next: str = Form("/")):
    response = RedirectResponse(_safe_next(next), status_code=303)
    try:
        _login(request, response, name, password)
    except HTTPException as error:
        return render(request, "login.html", status_code=error.status_code, user=None,
                      next=_safe_next(next), error=error.detail)
    return response


@router.post("/logout", include_in_schema=False, dependencies=[Depends(check_csrf)])
def logout_form(request: Request):
    _logout(request)
    return RedirectResponse("/login", status_code=303)


@router.post("/api/login", tags=["session"])
def api_login(request: Request, response: Response, credentials: Credentials):
    """Log in; the reply carries the CSRF token to send as X-CSRF-Token on every write.

    Failed tries are limited (429 with Retry-After after 5 in 5 minutes per account and per client;
    a browser that logged in as that user before has its own count)."""
    user = _login(request, response, credentials.name, credentials.password)
    return {"name": user.name, "role": user.role, "csrf_token": request.session["csrf"]}


@router.post("/api/logout", tags=["session"])
def api_logout(request: Request, user: UserInfo = Depends(reader)):
    """End this session on the server: the cookie no longer works, even a copy saved before."""
    _logout(request)
    return {"logged_out": user.name}


@router.get("/api/me", tags=["session"])
def me(request: Request, user: UserInfo = Depends(reader)):
    return {"name": user.name, "role": user.role, "csrf_token": csrf_token(request)}


@router.post("/api/me/password", tags=["session"])
def change_password(request: Request, body: PasswordChange, user: UserInfo = Depends(writer("viewer"))):
    """Change your password (give the current one); every other session of yours ends."""
    with request.app.state.store.session() as session:
        if not check_password(session, user.name, body.current):
            raise HTTPException(403, "current password: wrong")
        ended = set_password(session, user.name, body.new, by=user.name, keep_session=session_token(request))
    return {"name": user.name, "sessions_ended": ended}
