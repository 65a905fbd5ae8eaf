"""The curator dashboard: a FastAPI app over the same store as the CLI.

`create_app(store)` builds it; `atelier serve` runs it under uvicorn. Pages are server-rendered
(templates/), a little plain JavaScript (static/) calls the JSON API under /api for every write,
and /docs documents that API.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import fastapi_offline
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from dashboards.auth import secret_key
from dashboards.balance import ENV as WORKER_LOAD_ENV
from dashboards.balance import WorkerLoads
from dashboards.routes import ROUTERS
from store.audit import CannotUndo, Conflict, NothingToUndo
from store.curation import CurationError, PreviewChanged
from store.datasets import DatasetNotFound
from store.db import Store, open_store
from store.logins import Throttle
from store.queries import NotFound, QueryError
from store.users import UserError
from store.versions import NothingToCommit, VersionNotFound

STATIC = Path(__file__).parent / "static"
DEFAULT_THREADS = 2  # requests at once per worker process (see _worker_lifespan)
KEEPALIVE_REQUESTS = 8  # per connection, with several workers: often enough to even them out within seconds
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def _subresource(request: Request) -> bool:
    """An image (or script, style, fetch) a browser loads for a page, never a page itself: an error
    for it gets no HTML page and no redirect to the login page. Rendering one would write a new CSRF
    token into the session cookie — a thumbnail still loading after "Log out" did, after the login
    page had set its own, and the login form then failed its CSRF check."""
    dest = request.headers.get("sec-fetch-dest")
    return (dest is not None and dest not in ("document", "iframe")) or request.headers.get("accept", "").startswith("image/")


def _wants_json(request: Request) -> bool:
    return (request.url.path.startswith("/api") or "application/json" in request.headers.get("accept", "")
            or _subresource(request))


def _error(request: Request, status: int, message: str, headers: dict | None = None):
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    from dashboards.pages import render

    return render(request, "error.html", status_code=status, status=status, message=message)


class HeaderMiddleware:
    """Server-Timing and security headers on every response, and `Secure` on cookies sent over HTTPS.

    With `keepalive_requests` (several worker processes), a connection is closed after that many
    requests (`Connection: close`, as Apache's MaxKeepAliveRequests and nginx's keepalive_requests do):
    the browser reconnects and whichever worker is free takes it. Without it, kept-alive connections
    stay where they were first accepted (17 of 20 curators on one of two workers, measured), and one
    worker queues while the other idles. With `loads` (the workers' shared table, dashboards.balance),
    it counts this worker's requests in flight, and a worker clearly busier than the others' average
    also closes the connection of the response it is sending, so that the browser moves elsewhere.

    Plain ASGI, not @app.middleware("http"): that wrapper cost about a millisecond per request."""

    def __init__(self, app, keepalive_requests: int | None = None, loads: WorkerLoads | None = None):
        self.app, self.keepalive_requests, self.loads = app, keepalive_requests, loads
        self.served: dict[tuple, int] = {}  # requests so far per open connection (client address and port)

    def _last_on_connection(self, scope) -> bool:
        if not self.keepalive_requests or not scope.get("client"):
            return False
        key = tuple(scope["client"])
        count = self.served.get(key, 0) + 1
        if count >= self.keepalive_requests:
            self.served.pop(key, None)
            return True
        if len(self.served) > 10_000:  # connections the clients closed themselves
            self.served.clear()
        self.served[key] = count
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        https = scope.get("scheme") == "https"  # behind a trusted TLS proxy or uvicorn --ssl-*: cookies only over TLS
        close = self._last_on_connection(scope)
        loads = self.loads

        async def sending(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                if close or (loads is not None and loads.busier()):
                    headers.append((b"connection", b"close"))
                names = {k.lower() for k, _ in headers}
                headers.append((b"server-timing", f"app;dur={(time.perf_counter() - start) * 1000:.2f}".encode()))
                for name, value in ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")):
                    if name not in names:
                        headers.append((name, value))
                if https:
                    headers = [(k, v + b"; Secure" if k.lower() == b"set-cookie" and b"secure" not in v.lower() else v)
                               for k, v in headers]
                message = {**message, "headers": headers}
            await send(message)

        if loads is None:
            return await self.app(scope, receive, sending)
        loads.begin()
        try:
            await self.app(scope, receive, sending)
        finally:
            loads.end()


def _worker_lifespan(threads: int, freeze_gc: bool):
    """A lifespan that runs at most `threads` requests at once in this process (the rest wait their
    turn). Requests are GIL-bound: 40 threads (anyio's default) interleave every request with every
    other, and SQLite, which releases the GIL on every row, waits for it again on each one; with 20
    curators on two cores the slowest twentieth of requests took twice as long as with 2 threads."""

    @asynccontextmanager
    async def lifespan(app):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        # What start-up built (modules, the app, templates, the ORM's caches) lives as long as the
        # process: frozen, the collector stops walking it. Unfrozen, each full collection took 45–80 ms
        # under load, about once a second per worker, and stalled every request queued in it.
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield

    return lifespan


def create_app(store: Store | None = None, *, secure_cookies: bool | None = None,
               keepalive_requests: int | None = None, threads: int | None = None,
               loads: WorkerLoads | None = None, freeze_gc: bool = False) -> FastAPI:
    """The dashboard app over `store` (default: the store from the environment). `keepalive_requests`:
    requests per connection before it is closed (see HeaderMiddleware; for several workers);
    `threads`: requests served at once per process (default ATELIER_DASHBOARD_THREADS, else 2);
    `loads`: the workers' shared load table (see dashboards.balance); `freeze_gc`: freeze what start-up
    built out of the collector's reach (for a served process: `atelier serve` sets it; a test process,
    which builds many apps, must not, or the apps it drops stay frozen)."""
    store = store or open_store()
    threads = threads or int(os.environ.get("ATELIER_DASHBOARD_THREADS") or DEFAULT_THREADS)
    app = FastAPI(title="Atelier dashboard", summary="Review tags and captions, commit versions, watch runs",
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json", lifespan=_worker_lifespan(threads, freeze_gc))
    app.state.store = store
    app.state.login_throttle = Throttle()
    app.state.secret_key = secret_key(store.settings.home)
    app.state.prefect_ui = os.environ.get("PREFECT_UI_URL", "http://127.0.0.1:4200").rstrip("/")
    if secure_cookies is None:  # always Secure; otherwise Secure whenever the request came over HTTPS
        secure_cookies = os.environ.get("ATELIER_SECURE_COOKIES", "") in ("1", "true", "yes")
    app.add_middleware(SessionMiddleware, secret_key=app.state.secret_key,
                       session_cookie="atelier_session", same_site="strict", https_only=secure_cookies,
                       max_age=12 * 3600)

    app.add_middleware(HeaderMiddleware, keepalive_requests=keepalive_requests, loads=loads)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict):
        return JSONResponse({"error": str(error), "conflict": True,
                             "current": _jsonable(error.current)}, status_code=409)

    @app.exception_handler(CannotUndo)
    async def cannot_undo(request: Request, error: CannotUndo):
        return JSONResponse({"error": str(error), **error.details}, status_code=409)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 401 and not _wants_json(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        return _error(request, error.status_code, str(error.detail), error.headers)

    for kind, status in ((NotFound, 404), (DatasetNotFound, 404), (VersionNotFound, 404), (QueryError, 400),
                         (CurationError, 400), (UserError, 400), (PreviewChanged, 409), (NothingToUndo, 409),
                         (NothingToCommit, 409)):
        app.add_exception_handler(kind, lambda request, error, status=status: _error(request, status, str(error)))

    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        """Swagger UI from the assets fastapi-offline ships: no CDN, so it works on an offline network."""
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} – API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} – API",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon.png", with_google_fonts=False)
        # ReDoc's "powered by" badge loads a logo from its CDN: keep every request on this server
        page.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
                                                   "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                                   "worker-src 'self' blob:")
        return page

    for router in ROUTERS:
        app.include_router(router)
    return app


def freeze_gc_wanted() -> bool:
    """ATELIER_GC_FREEZE (default 1; 0: leave the collector as Python starts it)."""
    return os.environ.get("ATELIER_GC_FREEZE", "1").strip() != "0"


def app_from_environment() -> FastAPI:
    """The app over the store from the environment (what each `atelier serve --workers N` process runs);
    ATELIER_KEEPALIVE_REQUESTS (default 8, 0: never close) as in HeaderMiddleware, the load table that
    `atelier serve` shares among its workers (ATELIER_WORKER_LOAD), ATELIER_GC_FREEZE."""
    keepalive = int(os.environ.get("ATELIER_KEEPALIVE_REQUESTS", KEEPALIVE_REQUESTS))
    return create_app(open_store(), keepalive_requests=keepalive or None,
                      loads=WorkerLoads.attach(os.environ.get(WORKER_LOAD_ENV)), freeze_gc=freeze_gc_wanted())


def _jsonable(value):
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)
