"""The curator dashboard: a FastAPI app over the same store as the CLI.

`create_app(store)` builds it; `atelier serve` runs it under uvicorn. Pages are server-rendered
(templates/), a little plain JavaScript (static/) calls the JSON API under /api for every write,
and /docs documents that API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from dashboards.auth import LoginLimiter, secret_key
from dashboards.routes import ROUTERS
from store.audit import Conflict, NothingToUndo
from store.curation import CurationError
from store.datasets import DatasetNotFound
from store.db import Store, open_store
from store.queries import NotFound, QueryError
from store.users import UserError
from store.versions import NothingToCommit, VersionNotFound

STATIC = Path(__file__).parent / "static"


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api") or "application/json" in request.headers.get("accept", "")


def _error(request: Request, status: int, message: str, headers: dict | None = None):
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    from dashboards.pages import render

    return render(request, "error.html", status_code=status, status=status, message=message)


def create_app(store: Store | None = None, *, secure_cookies: bool | None = None) -> FastAPI:
    """The dashboard app over `store` (default: the store from the environment)."""
    store = store or open_store()
    app = FastAPI(title="Atelier dashboard", summary="Review tags and captions, commit versions, watch runs",
                  docs_url="/docs", openapi_url="/api/openapi.json")
    app.state.store = store
    app.state.login_limiter = LoginLimiter()
    app.state.prefect_ui = os.environ.get("PREFECT_UI_URL", "http://127.0.0.1:4200").rstrip("/")
    if secure_cookies is None:
        secure_cookies = os.environ.get("ATELIER_SECURE_COOKIES", "") in ("1", "true", "yes")
    app.add_middleware(SessionMiddleware, secret_key=secret_key(store.settings.home),
                       session_cookie="atelier_session", same_site="strict", https_only=secure_cookies,
                       max_age=12 * 3600)

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.2f}"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict):
        return JSONResponse({"error": str(error), "conflict": True,
                             "current": _jsonable(error.current)}, status_code=409)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 401 and not _wants_json(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        return _error(request, error.status_code, str(error.detail), error.headers)

    for kind, status in ((NotFound, 404), (DatasetNotFound, 404), (VersionNotFound, 404), (QueryError, 400),
                         (CurationError, 400), (UserError, 400), (NothingToUndo, 409), (NothingToCommit, 409)):
        app.add_exception_handler(kind, lambda request, error, status=status: _error(request, status, str(error)))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in ROUTERS:
        app.include_router(router)
    return app


def _jsonable(value):
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)
