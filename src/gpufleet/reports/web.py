"""The reports' pages and the e-mail subscriptions' API.

- ``GET /reports``: choices (from ``GET /api/v1/reports/options``' function), charts and
  tables drawn by static/reports.js from ``GET /api/v1/reports`` (one source of truth).
- ``GET /me/usage``: the logged-in user's own usage: their account name as a Unix user plus
  the Unix users an admin mapped to them (``user_mapping.person`` = the account name); the
  page asks the API with ``by=user&key=...``. Without a login (``web.require_login`` off)
  it offers a Unix-user picker; an admin may pick anyone.
- ``GET /admin/reports`` (admin): e-mail subscriptions with add / delete / send-now forms.
- ``/api/v1/reports/subscriptions`` (admin session; changes need ``X-CSRF-Token``): the same
  as JSON.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from gpufleet.accounts.web import auth, csrf_protected, form_data, page_context, require_role
from gpufleet.http.errors import ApiError
from gpufleet.http.templates import request_language
from gpufleet.i18n import translate
from gpufleet.reports.mail import SCHEDULES, ReportMailer, SubscriptionError
from gpufleet.reports.service import report_options
from gpufleet.store import UserRecord

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1/reports/subscriptions", tags=["reports"])
UNIX_USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _templates() -> Any:
    from gpufleet.http.templates import templates

    return templates


def _has_echarts() -> bool:
    from gpufleet.http.templates import VENDOR_ECHARTS

    return VENDOR_ECHARTS.exists()


def _json(data: Any) -> str:
    return orjson.dumps(data).decode().replace("</", "<\\/")


def _mailer(request: Request) -> ReportMailer:
    mailer = getattr(request.app.state, "report_mailer", None)
    if mailer is None:
        raise ApiError(503, "unavailable", "the report mailer is not running")
    return mailer


def _choice(value: str | None, allowed: list[str], default: str) -> str:
    return value if value in allowed else default


def _date(value: str | None) -> str:
    return value if value and DATE.match(value) else ""


# -- pages -------------------------------------------------------------------------------------


@router.get("/reports", response_class=HTMLResponse)
def reports_page(request: Request) -> Response:
    ctx = request.app.state.ctx
    options = report_options(ctx.settings.warehouse.timezone)
    q = request.query_params
    choice = {
        "period": _choice(q.get("period"), options["periods"], "month"),
        "by": _choice(q.get("by"), options["by"], "user"),
        "from": _date(q.get("from")),
        "to": _date(q.get("to")),
    }
    user = auth(request).user
    return _templates().TemplateResponse(
        request,
        "reports.html",
        {
            **page_context(request),
            "options": options,
            "options_json": _json(options),
            "choice": choice,
            "has_echarts": _has_echarts(),
            "is_admin": user is not None and user.role == "admin",
            "page": "reports",
        },
    )


def unix_users_of(store: Any, account: str) -> list[str]:
    """The Unix users whose usage is ``account``'s: the same name, and those an admin mapped
    to the person ``account``."""
    users = {account}
    try:
        users |= {row[0] for row in store.user_mapping() if row[1] == account}
    except Exception:  # a store without the warehouse: the account name alone
        pass
    return sorted(users)


@router.get("/me/usage", response_class=HTMLResponse)
def my_usage_page(request: Request) -> Response:
    ctx = request.app.state.ctx
    q = request.query_params
    user: UserRecord | None = auth(request).user
    picked = q.get("user", "").strip()
    note = None
    can_pick = user is None or user.role == "admin"
    lang = request_language(request)
    if picked and not UNIX_USER.match(picked):
        note = translate("{name!r} is not a Unix user name", lang, name=picked[:64])
        picked = ""
    if user is not None and not can_pick and picked and picked != user.name:
        note = translate("you can see only your own usage", lang)
    who = picked if (can_pick and picked) else (user.name if user is not None else "")
    keys = unix_users_of(ctx.store, who) if who else []
    options = report_options(ctx.settings.warehouse.timezone)
    return _templates().TemplateResponse(
        request,
        "my-usage.html",
        {
            **page_context(request),
            "who": who,
            "keys": keys,
            "can_pick": can_pick,
            "note": note,
            "options": options,
            "options_json": _json(options),
            "choice": {
                "period": _choice(q.get("period"), options["periods"], "month"),
                "by": "user",
                "from": _date(q.get("from")),
                "to": _date(q.get("to")),
            },
            "require_login": ctx.settings.web.require_login,
            "has_echarts": _has_echarts(),
            "page": "my-usage",
        },
    )


@router.get("/admin/reports", response_class=HTMLResponse)
def admin_reports_page(
    request: Request, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> Response:
    mailer = _mailer(request)
    q = request.query_params
    subs = mailer.subscriptions.items()
    last_sent: dict[str, dict[str, Any]] = {}
    for x in mailer.subscriptions.sent():
        if x["sent_at"] >= last_sent.get(x["subscription"], {}).get("sent_at", -1):
            last_sent[x["subscription"]] = x
    response = _templates().TemplateResponse(
        request,
        "admin-reports.html",
        {
            **page_context(request),
            "subscriptions": subs,
            "last_sent": last_sent,
            "schedules": list(SCHEDULES),
            "by_options": report_options(request.app.state.ctx.settings.warehouse.timezone)["by"],
            "mail": mailer.settings.mail,
            "message": q.get("message"),
            "error": q.get("error"),
            "page": "admin-reports",
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _back(message: str | None = None, error: str | None = None) -> RedirectResponse:
    q = f"?message={quote(message)}" if message else f"?error={quote(error or '')}"
    return RedirectResponse("/admin/reports" + q, status_code=303)


@router.post("/admin/reports/subscriptions", dependencies=[Depends(csrf_protected)])
async def add_subscription_form(
    request: Request, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> Response:
    form = await form_data(request)
    mailer = _mailer(request)
    try:
        sub = mailer.subscriptions.add(
            form.get("email", ""), form.get("schedule", ""), form.get("by", ""), mailer.clock(),
            form.get("language") or None,
        )  # fmt: skip
    except SubscriptionError as exc:
        return _back(error=str(exc))
    return _back(translate("{email} gets the {schedule} report by {by}",
                           request_language(request), email=sub.email, schedule=sub.schedule,
                           by=sub.by))  # fmt: skip


@router.post("/admin/reports/subscriptions/{sub_id}/delete", dependencies=[Depends(csrf_protected)])
def delete_subscription_form(
    request: Request, sub_id: str, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> Response:
    try:
        sub = _mailer(request).subscriptions.delete(sub_id)
    except SubscriptionError as exc:
        return _back(error=str(exc))
    return _back(translate("{email} no longer gets the {schedule} report by {by}",
                           request_language(request), email=sub.email, schedule=sub.schedule,
                           by=sub.by))  # fmt: skip


@router.post("/admin/reports/subscriptions/{sub_id}/send", dependencies=[Depends(csrf_protected)])
async def send_subscription_form(
    request: Request, sub_id: str, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> Response:
    try:
        done = await asyncio.to_thread(_mailer(request).send_now, sub_id)
    except Exception as exc:
        return _back(error=translate("not sent: {error}", request_language(request), error=exc))
    return _back(translate("sent the report for the period from {start} to {email}",
                           request_language(request), start=done["period_start"],
                           email=done["email"]))  # fmt: skip


# -- the subscriptions' API --------------------------------------------------------------------


class SubscriptionIn(BaseModel):
    email: str = Field(description="Who gets the report")
    schedule: str = Field(description=" | ".join(SCHEDULES))
    by: str = Field("user", description="The report's grouping (as in GET /api/v1/reports)")
    language: Literal["en", "zh-CN"] | None = Field(
        None, description="The e-mail's language; default: the server's ui.language"
    )


def _view(sub: Any) -> dict[str, Any]:
    return {"id": sub.id, "email": sub.email, "schedule": sub.schedule, "by": sub.by,
            "period": sub.period, "created_at": sub.created_at,
            "language": sub.language}  # fmt: skip


def _api_error(exc: SubscriptionError) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


@api.get("", summary="E-mail report subscriptions, and what was sent")
def list_subscriptions(
    request: Request, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> dict[str, Any]:
    mailer = _mailer(request)
    return {
        "subscriptions": [_view(s) for s in mailer.subscriptions.items()],
        "sent": mailer.subscriptions.sent(),
        "mail_enabled": mailer.enabled,
        "schedules": list(SCHEDULES),
    }


@api.post(
    "", status_code=201, dependencies=[Depends(csrf_protected)],
    summary="Subscribe an e-mail address to the weekly, monthly or yearly report",
)  # fmt: skip
def add_subscription(
    request: Request, body: SubscriptionIn,
    _: Annotated[UserRecord, Depends(require_role("admin"))],
) -> dict[str, Any]:  # fmt: skip
    mailer = _mailer(request)
    try:
        return _view(
            mailer.subscriptions.add(
                body.email, body.schedule, body.by, mailer.clock(), body.language
            )
        )
    except SubscriptionError as exc:
        raise _api_error(exc) from None


@api.delete("/{sub_id}", dependencies=[Depends(csrf_protected)], summary="Unsubscribe")
def delete_subscription(
    request: Request, sub_id: str, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> dict[str, Any]:
    try:
        return {"deleted": _view(_mailer(request).subscriptions.delete(sub_id))}
    except SubscriptionError as exc:
        raise _api_error(exc) from None


@api.post(
    "/{sub_id}/send", dependencies=[Depends(csrf_protected)],
    summary="Send a subscription's latest complete period now (one-off, not recorded)",
)  # fmt: skip
async def send_subscription(
    request: Request, sub_id: str, _: Annotated[UserRecord, Depends(require_role("admin"))]
) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(_mailer(request).send_now, sub_id)
    except SubscriptionError as exc:
        raise _api_error(exc) from None
    except Exception as exc:
        raise ApiError(502, "mail_failed", f"the report was not sent: {exc}") from None


def install(app: Any) -> None:
    app.include_router(api)
    app.include_router(router)
