"""The accounts' web edge: per-app state, FastAPI dependencies and the ``require_login`` gate.

Routes use ``Depends(require_role("admin"))`` (401 or a redirect to /login when nobody is
logged in, 403 when the role is too low) and ``Depends(csrf_protected)`` on anything that
changes state from a browser. The gate (``RequireLogin``, installed only when
``web.require_login`` is on) turns away every request without a logged-in user except the
open paths: ingest (agent tokens), the local admin API (admin key), /healthz, /metrics, the
login page itself, static assets and the API docs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gpufleet.accounts.ratelimit import LoginLimiter
from gpufleet.accounts.sessions import (
    SESSION_COOKIE,
    Session,
    SessionSigner,
    ensure_secret,
    password_fingerprint,
)
from gpufleet.accounts.users import UserDirectory, has_role
from gpufleet.config import Settings
from gpufleet.http.errors import ApiError, error_response
from gpufleet.store import Store, UserRecord

MAX_FORM_BYTES = 64 * 1024
OPEN_PATHS = ("/healthz", "/metrics", "/login", "/logout", "/favicon.ico", "/openapi.json")
OPEN_PREFIXES = ("/api/v1/ingest", "/api/v1/admin/", "/static/", "/assets/", "/docs", "/redoc")


class Accounts:
    """What the accounts need at run time; one per app, at ``app.state.accounts``."""

    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        web = settings.web
        self.max_age = web.session_max_age_seconds
        self.signer = SessionSigner(ensure_secret(settings.server.data_dir))
        self.users = UserDirectory(store)
        self.limiter = LoginLimiter(web.login_max_attempts, web.login_lockout_seconds)
        self.clock = clock

    def session(self, cookie_header: str | None) -> Session | None:
        if not cookie_header:
            return None
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(cookie_header)
        except Exception:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        return self.signer.loads(morsel.value if morsel else None, self.clock())

    def user_of(self, s: Session | None) -> UserRecord | None:
        """The user a session belongs to, if it is still valid (user exists, same password)."""
        if s is None or s.user is None:
            return None
        user = self.users.get(s.user)
        if user is None or password_fingerprint(user.password_hash) != s.password_fp:
            return None
        return user


@dataclass
class Auth:
    """The request's session (maybe anonymous) and its user (None: not logged in)."""

    session: Session | None
    user: UserRecord | None


def accounts_of(request: Request) -> Accounts:
    return request.app.state.accounts


def auth(request: Request) -> Auth:
    """The request's session and user, computed once per request."""
    found = request.scope.get("gpufleet.auth")
    if found is None:
        acc = accounts_of(request)
        s = acc.session(request.headers.get("cookie"))
        found = Auth(s, acc.user_of(s))
        request.scope["gpufleet.auth"] = found
    return found


def current_user(request: Request) -> UserRecord | None:
    """FastAPI dependency: the logged-in user, or None."""
    return auth(request).user


class LoginRequired(ApiError):
    """Nobody is logged in: pages redirect to /login, the API answers 401."""

    def __init__(self) -> None:
        super().__init__(401, "login_required", "log in first: POST /login, or open /login")


def require_role(role: str) -> Callable[[Request], UserRecord]:
    """FastAPI dependency factory: the logged-in user, who must have ``role`` or above."""

    def dependency(request: Request) -> UserRecord:
        user = auth(request).user
        if user is None:
            raise LoginRequired()
        if not has_role(user.role, role):
            raise ApiError(
                403, "forbidden", f"this needs the {role} role; {user.name!r} is a {user.role}"
            )
        return user

    dependency.__name__ = f"require_{role}"
    return dependency


async def form_data(request: Request) -> dict[str, str]:
    """An urlencoded form body (what the pages' forms send) as a dict."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ApiError(
            415, "unsupported_media_type", "send the form as application/x-www-form-urlencoded"
        )
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ApiError(413, "payload_too_large", f"a form is at most {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_form", "cannot read the form body") from None


async def csrf_protected(request: Request) -> None:
    """FastAPI dependency: the request carries this session's CSRF token, in the form field
    ``csrf_token`` or the ``X-CSRF-Token`` header (for scripts on our own pages)."""
    token = request.headers.get("x-csrf-token")
    if token is None:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            token = (await form_data(request)).get("csrf_token")
    if not accounts_of(request).signer.check_csrf(auth(request).session, token):
        raise ApiError(
            403, "csrf_failed",
            "missing or wrong CSRF token: reload the page and submit the form again",
        )  # fmt: skip


def wants_html(request_path: str) -> bool:
    return not request_path.startswith("/api/")


def login_redirect(path: str, query: str = "") -> RedirectResponse:
    target = path + (f"?{query}" if query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class RequireLogin:
    """ASGI gate for ``web.require_login``: a logged-in user (any role) or an open path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if auth(request).user is not None:
            await self.app(scope, receive, send)
            return
        response: Response
        if wants_html(scope["path"]):
            response = login_redirect(scope["path"], scope.get("query_string", b"").decode())
        else:
            exc = LoginRequired()
            response = error_response(exc.status, exc.code, exc.message)
        await response(scope, receive, send)


def install(app: FastAPI, require_login: bool) -> None:
    """The LoginRequired handler, and the gate when ``web.require_login`` is on (the gate
    reads ``app.state.accounts``, set at start-up)."""

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Any:
        if wants_html(request.url.path) and request.method == "GET":
            return login_redirect(request.url.path, request.url.query)
        return error_response(exc.status, exc.code, exc.message)

    if require_login:
        app.add_middleware(RequireLogin)


def page_context(request: Request) -> dict[str, Any]:
    """What every page template may use: ``user`` (or None) and ``csrf_token`` (for forms,
    e.g. the log-out button: ``<input type="hidden" name="csrf_token" value="...">``)."""
    a = auth(request)
    token = accounts_of(request).signer.csrf_token(a.session) if a.session else ""
    return {"request": request, "user": a.user, "csrf_token": token}
