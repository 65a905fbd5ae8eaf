"""Logging in and out (a form for people, JSON for scripts), and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from dashboards.auth import check_csrf, csrf_token, reader
from dashboards.pages import render
from store.users import UserInfo, authenticate

router = APIRouter()


class Credentials(BaseModel):
    name: str
    password: str


def _login(request: Request, name: str, password: str) -> UserInfo:
    limiter = request.app.state.login_limiter
    keys = (f"ip:{request.client.host if request.client else '?'}", f"user:{name}")
    wait = limiter.retry_after(*keys)
    if wait:
        raise HTTPException(429, f"too many failed logins; try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    with request.app.state.store.session() as session:
        user = authenticate(session, name, password)
    if user is None:
        limiter.failed(*keys)
        raise HTTPException(401 if request.url.path.startswith("/api") else 400, "wrong name or password")
    limiter.succeeded(*keys)
    request.session.clear()  # a fresh session (and CSRF token) on every login
    request.session["user"] = user.name
    csrf_token(request)
    return user


def _safe_next(target: str | None) -> str:
    # only same-site paths: never redirect to another host after login
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str | None = None):
    return render(request, "login.html", user=None, next=_safe_next(next), error=None)


@router.post("/login", include_in_schema=False, dependencies=[Depends(check_csrf)])
def login_form(request: Request, name: str = Form(...), password: str = Form(...), next: str = Form("/")):
    try:
        _login(request, name, password)
    except HTTPException as error:
        return render(request, "login.html", status_code=error.status_code, user=None,
                      next=_safe_next(next), error=error.detail)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", include_in_schema=False, dependencies=[Depends(check_csrf)])
def logout_form(request: Request):
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.post("/api/login", tags=["session"])
def api_login(request: Request, credentials: Credentials):
    """Log in; the reply carries the CSRF token to send as X-CSRF-Token on every write."""
    user = _login(request, credentials.name, credentials.password)
    return {"name": user.name, "role": user.role, "csrf_token": request.session["csrf"]}


@router.post("/api/logout", tags=["session"])
def api_logout(request: Request, user: UserInfo = Depends(reader)):
    request.session.clear()
    return {"logged_out": user.name}


@router.get("/api/me", tags=["session"])
def me(request: Request, user: UserInfo = Depends(reader)):
    return {"name": user.name, "role": user.role, "csrf_token": csrf_token(request)}
