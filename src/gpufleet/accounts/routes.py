"""Log in and out, the admin page (hosts, agent tokens), and the users admin API.

- ``GET/POST /login``, ``POST /logout``: forms with CSRF tokens; ``POST /login`` with a JSON
  body is for scripts (it answers JSON, with the CSRF token to send as ``X-CSRF-Token``).
- ``GET /admin`` (admin role): hosts with their agent's version and last contact, agent tokens
  with create and revoke forms; ``/admin?format=json`` is its JSON twin.
- ``/api/v1/admin/users``: list, create, change and delete users with the local admin key
  (what ``gpufleet user ...`` uses while the server runs).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from gpufleet.accounts.admin import TOKEN_NAME, token_view
from gpufleet.accounts.passwords import (
    MIN_PASSWORD_LENGTH,
    check_password_policy,
    dummy_verify,
    hash_password,
    needs_rehash,
    verify_password,
)
from gpufleet.accounts.sessions import SESSION_COOKIE, Session
from gpufleet.accounts.users import ROLES, USER_NAME, new_user, user_view
from gpufleet.accounts.web import (
    Accounts,
    accounts_of,
    auth,
    csrf_protected,
    form_data,
    page_context,
    require_role,
)
from gpufleet.http.auth import check_admin, new_token
from gpufleet.http.context import Context
from gpufleet.http.errors import ApiError
from gpufleet.http.templates import request_language
from gpufleet.i18n import translate
from gpufleet.store import StoreError, UserRecord

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1/admin/users", tags=["admin"])
api_me = APIRouter()


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


def _set_session(request: Request, response: Response, session: Session, acc: Accounts) -> None:
    response.set_cookie(
        SESSION_COOKIE, acc.signer.dumps(session), max_age=int(session.expires_at - acc.clock()),
        httponly=True, samesite="lax", secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    request.scope["gpufleet.auth"] = None  # recomputed from the new cookie on the next request


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no ``//evil.example`` or ``https://...``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _render(request: Request, name: str, status: int = 200, **data: Any) -> Response:
    # The web UI's templates (base.html with its filters); login.html and admin.html extend it.
    from gpufleet.http.templates import templates

    context = {**page_context(request), **data}
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- log in and out ----------------------------------------------------------------------------


def _login_page(
    request: Request, status: int = 200, error: str | None = None, **kw: str | None
) -> Response:
    acc = accounts_of(request)
    session = auth(request).session
    fresh = None
    if session is None:  # the form needs a session to bind its CSRF token to
        fresh = Session.anonymous(acc.clock(), acc.max_age)
        session = fresh
    context = {
        "csrf_token": acc.signer.csrf_token(session), "error": error,
        "next": _safe_next(request.query_params.get("next") or kw.pop("next", None)),
        "username": kw.pop("username", ""),
    }  # fmt: skip
    response = _render(request, "login.html", status, title="Log in", **context)
    if fresh is not None:
        _set_session(request, response, fresh, acc)
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    if auth(request).user is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
    return _login_page(request)


def _login_error(request: Request, exc: ApiError) -> str:
    """A failed login's message on the page, in the page's language (the API's stays English)."""
    lang = request_language(request)
    if m := re.fullmatch(r"too many failed logins; try again in (\d+) s", exc.message):
        return translate("too many failed logins; try again in {n} s", lang, n=m.group(1))
    if m := re.fullmatch(r"wrong user name or password(?:; too many failures, locked out for "
                         r"(\d+) s)?", exc.message):  # fmt: skip
        text = translate("wrong user name or password", lang)
        if m.group(1):
            text += translate("; too many failures, locked out for {n} s", lang, n=m.group(1))
        return text
    return exc.message


async def _check_login(request: Request, username: str, password: str) -> UserRecord:
    """The user when the password is right; ApiError 401 or 429 (locked out) otherwise."""
    acc = accounts_of(request)
    ip = request.client.host if request.client else "unknown"
    wait = acc.limiter.retry_after(ip, username)
    if wait > 0:
        raise ApiError(
            429, "too_many_attempts",
            f"too many failed logins; try again in {int(wait) + 1} s",
            headers={"Retry-After": str(int(wait) + 1)},
        )  # fmt: skip
    user = acc.users.get(username)
    if user is None:
        ok = await asyncio.to_thread(dummy_verify, password)
    else:
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
    if not ok or user is None:
        locked = acc.limiter.failed(ip, username)
        extra = f"; too many failures, locked out for {int(locked)} s" if locked else ""
        raise ApiError(401, "login_failed", "wrong user name or password" + extra)
    acc.limiter.succeeded(ip, username)
    changes: dict[str, Any] = {"last_login": time.time()}
    if needs_rehash(user.password_hash):
        changes["password_hash"] = await asyncio.to_thread(hash_password, password)
    return await asyncio.to_thread(acc.users.update, user.name, **changes)


@router.post("/login")
async def login(request: Request) -> Response:
    acc = accounts_of(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        # Scripts: a JSON body cannot be sent cross-site without CORS, so no CSRF token here.
        try:
            body = await request.json()
            username, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                400, "invalid_request", 'send {"username": "...", "password": "..."}'
            ) from None
        user = await _check_login(request, username, password)
        session = Session.for_user(user.name, user.password_hash, acc.clock(), acc.max_age)
        response: Response = JSONResponse(
            {"user": user_view(user), "csrf_token": acc.signer.csrf_token(session)}
        )
        _set_session(request, response, session, acc)
        return response

    form = await form_data(request)
    username, nxt = form.get("username", "").strip(), form.get("next")
    if not acc.signer.check_csrf(auth(request).session, form.get("csrf_token")):
        request.scope["gpufleet.auth"] = None
        return _login_page(
            request, 403,
            translate("the login form expired; please log in again", request_language(request)),
            next=nxt, username=username,
        )  # fmt: skip
    try:
        user = await _check_login(request, username, form.get("password", ""))
    except ApiError as exc:
        response = _login_page(
            request, exc.status, _login_error(request, exc), next=nxt, username=username
        )
        response.headers.update(exc.headers or {})
        return response
    session = Session.for_user(user.name, user.password_hash, acc.clock(), acc.max_age)
    response = RedirectResponse(_safe_next(nxt), 303)
    _set_session(request, response, session, acc)
    return response


@router.post("/logout", dependencies=[Depends(csrf_protected)])
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@api_me.get("/api/v1/me", tags=["accounts"], summary="The logged-in user and CSRF token")
def me(request: Request, user: Annotated[UserRecord, Depends(require_role("viewer"))]) -> dict:
    """The logged-in user, and the CSRF token to send as ``X-CSRF-Token`` with changes."""
    acc, session = accounts_of(request), auth(request).session
    assert session is not None
    return {"user": user_view(user), "csrf_token": acc.signer.csrf_token(session)}


# -- the admin page ----------------------------------------------------------------------------


def admin_data(ctx: Context, acc: Accounts, now: float) -> dict[str, Any]:
    """What the admin page shows (and ``/admin?format=json`` returns)."""
    hosts = [
        {k: h.get(k) for k in (
            "name", "status", "source", "agent_version", "last_received",
            "seconds_since_contact", "token_name", "reason",
        )}
        for h in ctx.host_summaries(now)
    ]  # fmt: skip
    return {
        "hosts": hosts,
        "tokens": [token_view(t) for t in ctx.store.tokens()],
        "users": [user_view(u) for u in acc.users.all()],
        "now": now,
    }


def _admin_page(
    request: Request, status: int = 200, created: dict | None = None, error: str | None = None,
    message: str | None = None,
) -> Response:  # fmt: skip
    data = admin_data(_ctx(request), accounts_of(request), time.time())
    if request.query_params.get("format") == "json" and request.method == "GET":
        return JSONResponse(data, headers={"Cache-Control": "no-store"})
    return _render(
        request, "admin.html", status, title="Admin", created=created, error=error,
        message=message, **data,
    )  # fmt: skip


@router.get("/admin", dependencies=[Depends(require_role("admin"))])
def admin_page(request: Request) -> Response:
    revoked = request.query_params.get("revoked")
    lang = request_language(request)
    message = translate("revoked token {name!r}", lang, name=revoked) if revoked else None
    return _admin_page(request, message=message)


@router.post(
    "/admin/tokens", dependencies=[Depends(require_role("admin")), Depends(csrf_protected)]
)
async def admin_create_token(request: Request) -> Response:
    ctx = _ctx(request)
    name = (await form_data(request)).get("name", "").strip()
    if not re.fullmatch(TOKEN_NAME, name):
        return _admin_page(
            request, 400, error=translate(
                "invalid token name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)",
                request_language(request), name=name,
            ),
        )  # fmt: skip
    token, record = new_token(name)
    try:
        await asyncio.to_thread(ctx.store.create_token, record)
    except StoreError as exc:
        return _admin_page(
            request, 409,
            error=translate("{error}; revoke it or pick another name", request_language(request),
                            error=exc),
        )  # fmt: skip
    ctx.tokens.put(record)
    return _admin_page(request, 201, created={**token_view(record), "token": token})


@router.post(
    "/admin/tokens/{name}/revoke",
    dependencies=[Depends(require_role("admin")), Depends(csrf_protected)],
)
async def admin_revoke_token(request: Request, name: str) -> Response:
    ctx = _ctx(request)
    try:
        record = await asyncio.to_thread(ctx.store.revoke_token, name, time.time())
    except StoreError as exc:
        return _admin_page(request, 404, error=str(exc))
    ctx.tokens.put(record)
    return RedirectResponse(f"/admin?revoked={name}", 303)


# -- users admin API (local admin key) ---------------------------------------------------------


class UserCreate(BaseModel):
    name: Annotated[str, Field(pattern=USER_NAME)]
    password: Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)]
    role: Annotated[str, Field(pattern="^(" + "|".join(ROLES) + ")$")] = "viewer"


class UserChange(BaseModel):
    role: Annotated[str | None, Field(pattern="^(" + "|".join(ROLES) + ")$")] = None
    password: Annotated[str | None, Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)] = None


def _admin_key(request: Request, authorization: str | None) -> Accounts:
    check_admin(authorization, _ctx(request).admin_key)
    return accounts_of(request)


@api.get("", summary="List web users (never their password hashes)")
def list_users(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    acc = _admin_key(request, authorization)
    return {"users": [user_view(u) for u in acc.users.all()]}


@api.post(
    "",
    status_code=201,
    summary="Create a web user",
    responses={409: {"description": "a user of that name exists"}},
)
def create_user(
    request: Request, body: UserCreate, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    acc = _admin_key(request, authorization)
    try:
        record = new_user(body.name, body.password, body.role)
    except ValueError as exc:
        raise ApiError(422, "invalid_user", str(exc)) from None
    try:
        acc.users.create(record)
    except StoreError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return user_view(record)


@api.patch("/{name}", summary="Change a web user's role or password")
def change_user(
    request: Request, name: str, body: UserChange,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:  # fmt: skip
    acc = _admin_key(request, authorization)
    changes: dict[str, Any] = {"role": body.role}
    if body.password is not None:
        try:
            check_password_policy(body.password)
        except ValueError as exc:
            raise ApiError(422, "invalid_user", str(exc)) from None
        changes["password_hash"] = hash_password(body.password)
    try:
        return user_view(acc.users.update(name, **changes))
    except StoreError as exc:
        raise ApiError(404, "unknown_user", str(exc)) from None


@api.delete("/{name}", summary="Delete a web user (their sessions end at once)")
def delete_user(
    request: Request, name: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    acc = _admin_key(request, authorization)
    try:
        acc.users.delete(name)
    except StoreError as exc:
        raise ApiError(404, "unknown_user", str(exc)) from None
    return {"deleted": name}


__all__ = ["admin_data", "api", "api_me", "router"]
