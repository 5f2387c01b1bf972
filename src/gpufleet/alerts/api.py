"""Alert routes: the JSON API and the /alerts page (built from the same functions).

- ``GET /api/v1/alerts``: firing and pending alerts (each with ``muted``: silenced/inhibited),
  counts, rule and channel errors; ``GET /api/v1/alerts/history?q=&rule=&host=&since=``.
- ``POST /api/v1/alerts/{fingerprint}/ack``: a person acknowledges (no more repeats).
- ``GET|POST /api/v1/silences``, ``DELETE /api/v1/silences/{id}`` (expire it now).
- ``GET /api/v1/rules``; ``PUT /api/v1/rules/{name}`` (a built-in rule: the fields to tune;
  another: the whole rule), ``DELETE /api/v1/rules/{name}`` (back to the config's).
- ``GET /alerts``: the page.

Reads follow ``web.require_login``; changes need the local admin key (``gpufleet silence``)
or a logged-in admin (with the CSRF token); an acknowledgement any logged-in user.
Every path is also served under ``/api/v1/admin/...`` for the CLI (admin key).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from gpufleet.alerts.channels import Channel
from gpufleet.alerts.notify import Silence
from gpufleet.alerts.quality import rule_quality
from gpufleet.alerts.rules import (
    BUILTIN_TUNABLE,
    RuleError,
    builtin_rules,
    parse_rule,
    tuned,
)
from gpufleet.alerts.service import AlertService
from gpufleet.http.errors import ApiError

router = APIRouter(tags=["alerts"])
pages = APIRouter(include_in_schema=False)


def service_of(request: Request) -> AlertService:
    svc = getattr(request.app.state, "alerts", None)
    if svc is None:
        raise ApiError(503, "alerts_off", "alerts are not running (alerts.enabled is false)")
    return svc


async def _who(request: Request, authorization: str | None, role: str) -> str:
    from gpufleet.accounts.web import csrf_protected, require_role
    from gpufleet.http.auth import check_admin

    if authorization is not None:
        check_admin(authorization, request.app.state.ctx.admin_key)
        return "admin (CLI)"
    user = require_role(role)(request)
    await csrf_protected(request)
    return user.name


def _paths(path: str) -> list[str]:
    return [f"/api/v1{path}", f"/api/v1/admin{path}"]


def _get(path: str, summary: str) -> Any:
    def deco(fn: Any) -> Any:
        router.get(_paths(path)[1], summary=summary, include_in_schema=False)(fn)
        return router.get(_paths(path)[0], summary=summary)(fn)

    return deco


def _route(method: str, path: str, summary: str) -> Any:
    def deco(fn: Any) -> Any:
        router.api_route(_paths(path)[1], methods=[method], summary=summary,
                         include_in_schema=False)(fn)  # fmt: skip
        return router.api_route(_paths(path)[0], methods=[method], summary=summary)(fn)

    return deco


# -- alerts ------------------------------------------------------------------------------------


def alerts_json(request: Request) -> dict[str, Any]:
    svc = service_of(request)
    out = svc.view(time.time())
    out["channels"] = [c.public() for c in svc.channels]
    return out


@_get("/alerts", "Firing and pending alerts, with what mutes them")
def list_alerts(request: Request) -> dict[str, Any]:
    return alerts_json(request)


@_get("/alerts/stats", "The alert engine's own CPU time and work since the server started")
def alert_stats(request: Request) -> dict[str, Any]:
    return service_of(request).stats()


@_get("/alerts/history", "Alert state changes, newest first, with search")
def alert_history(
    request: Request,
    q: Annotated[str | None, Query(max_length=200, description="text in summary/rule/host")] = None,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    host: Annotated[str | None, Query(max_length=253)] = None,
    since: Annotated[float, Query(ge=0, description="Unix seconds")] = 0.0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> dict[str, Any]:
    svc = service_of(request)
    return {"events": svc.db.history(since=since, rule=rule, host=host, text=q, limit=limit)}


@_get("/alerts/quality", "Per rule: alerts per week, flapping, time to acknowledge")
def alert_quality(
    request: Request, days: Annotated[float, Query(gt=0, le=400)] = 28.0
) -> dict[str, Any]:
    return quality_json(service_of(request), days)


def quality_json(svc: AlertService, days: float) -> dict[str, Any]:
    now = time.time()
    events = svc.db.history(since=now - days * 86400, limit=200_000)
    return {"days": days, "rules": rule_quality(events, now, days)}


@_route("POST", "/alerts/{fingerprint}/ack", "Acknowledge an alert (no more repeats)")
async def ack_alert(
    request: Request, fingerprint: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    who = await _who(request, authorization, "user")
    a = service_of(request).acknowledge(fingerprint, who)
    if a is None:
        raise ApiError(404, "unknown_alert", f"no pending or firing alert {fingerprint!r}")
    return a


# -- silences ----------------------------------------------------------------------------------


class SilenceBody(BaseModel):
    matchers: dict[str, str] = Field(description="label -> pattern, e.g. {host: dgx-0*}")
    reason: str = Field(description="Why (shown with the silence).")
    duration_seconds: Annotated[float, Field(gt=0, le=90 * 86400)] | None = None
    starts_at: float | None = None
    ends_at: float | None = None


def _details(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    return [{"loc": prefix + ".".join(str(p) for p in e["loc"]),
             "msg": e["msg"].removeprefix("Value error, ")} for e in exc.errors()]  # fmt: skip


@_get("/silences", "Active silences (add ?all=1 for expired ones too)")
def list_silences(request: Request, all: bool = False) -> dict[str, Any]:
    svc = service_of(request)
    now = time.time()
    return {"silences": [s.model_dump() for s in
                         svc.db.silences(include_expired=all, now=now)]}  # fmt: skip


@_route("POST", "/silences", "Add a silence")
async def add_silence(
    request: Request, body: SilenceBody, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    who = await _who(request, authorization, "admin")
    now = time.time()
    start = body.starts_at or now
    end = body.ends_at or (start + body.duration_seconds if body.duration_seconds else None)
    if end is None:
        raise ApiError(
            422,
            "invalid_silence",
            "give duration_seconds or ends_at",
            [{"loc": "body.duration_seconds", "msg": "required (or ends_at)"}],
        )
    try:
        s = Silence(matchers=body.matchers, starts_at=start, ends_at=end, reason=body.reason,
                    created_by=who, created_at=now)  # fmt: skip
    except ValidationError as exc:
        details = _details(exc, "body.")
        raise ApiError(422, "invalid_silence", f"{details[0]['loc']}: {details[0]['msg']}",
                       details) from None  # fmt: skip
    return service_of(request).db.add_silence(s).model_dump()


@_route("DELETE", "/silences/{silence_id}", "Expire a silence now")
async def expire_silence(
    request: Request, silence_id: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    await _who(request, authorization, "admin")
    s = service_of(request).db.expire_silence(silence_id, time.time())
    if s is None:
        raise ApiError(404, "unknown_silence", f"no silence {silence_id!r}")
    return s.model_dump()


# -- rules -------------------------------------------------------------------------------------


def rules_json(svc: AlertService) -> dict[str, Any]:
    builtin = {r.name for r in builtin_rules()}
    edits = svc.db.rule_edits()
    return {
        "rules": [r.model_dump() | {"builtin": r.name in builtin, "edited": r.name in edits}
                  for r in svc.all_rules],
        "errors": svc.rule_errors,
        "tunable_builtin_fields": list(BUILTIN_TUNABLE),
    }  # fmt: skip


@_get("/rules", "Every rule in effect, and the rules left out with the reason")
def list_rules(request: Request) -> dict[str, Any]:
    return rules_json(service_of(request))


@_route("PUT", "/rules/{name}", "Set a rule (built-in: the fields to tune)")
async def put_rule(
    request: Request, name: str, body: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:  # fmt: skip
    await _who(request, authorization, "admin")
    svc = service_of(request)
    base = {r.name: r for r in builtin_rules()}
    if name in base:
        bad = [k for k in body if k not in BUILTIN_TUNABLE]
        if bad:
            raise ApiError(422, "invalid_rule", f"{name}: {bad[0]}: a built-in rule's "
                           f"{bad[0]} cannot be changed",
                           [{"loc": f"body.{bad[0]}", "msg": "not tunable"}])  # fmt: skip
        candidate = tuned(base[name], body)
    else:
        if body.get("name", name) != name:
            raise ApiError(422, "invalid_rule", "name: must match the path",
                           [{"loc": "body.name", "msg": "must match the path"}])  # fmt: skip
        candidate = {**body, "name": name}
    try:
        parse_rule(candidate, "rule")
    except RuleError as exc:
        field = str(exc).split(": ")[1] if ": " in str(exc) else ""
        raise ApiError(422, "invalid_rule", str(exc),
                       [{"loc": f"body.{field}", "msg": str(exc)}]) from None  # fmt: skip
    svc.db.put_rule_edit(name, body if name in base else candidate)
    svc.reload_rules()
    return rules_json(svc)


@_route("DELETE", "/rules/{name}", "Forget the web edit of a rule (back to the config's)")
async def delete_rule(
    request: Request, name: str, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    await _who(request, authorization, "admin")
    svc = service_of(request)
    if not svc.db.delete_rule_edit(name):
        raise ApiError(404, "unknown_rule", f"rule {name!r} was not edited on the web")
    svc.reload_rules()
    return rules_json(svc)


# -- page --------------------------------------------------------------------------------------


@pages.get("/alerts", response_class=HTMLResponse)
def alerts_page(
    request: Request, q: Annotated[str | None, Query(max_length=200)] = None
) -> HTMLResponse:
    from gpufleet.accounts.web import page_context
    from gpufleet.http.templates import templates

    svc = service_of(request)
    view = alerts_json(request)
    now = time.time()
    return templates.TemplateResponse(
        request,
        "alerts.html",
        {
            **page_context(request),
            "page": "alerts",
            "view": view,
            "now": now,
            "silences": [s.model_dump() for s in svc.db.silences(now=now)],
            "history": svc.db.history(text=q, limit=100),
            "rules": rules_json(svc),
            "messages": svc.db.messages(20),
            "quality": quality_json(svc, 28.0),
            "q": q or "",
        },
    )


def public_channels(channels: list[Channel]) -> list[dict[str, Any]]:
    return [c.public() for c in channels]
