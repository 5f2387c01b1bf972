"""``GET /api/v1/reports``: the report as JSON, or its rows as CSV. Parses, calls the
service, serialises; the figures come from gpufleet.reports.core."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gpufleet.reports.cache import Entry, ReportCache, answer, split
from gpufleet.reports.core import BY
from gpufleet.reports.service import (
    DATE_PATTERN,
    ReportError,
    ReportPlan,
    parse_date,
    parse_fields,
    parse_keys,
    plan_report,
    report_from_plan,
    report_options,
    to_csv,
    volatile_meta,
)
from gpufleet.store import StoreError
from gpufleet.store.warehouse import tiers_version
from gpufleet.warehouse.calendar import PERIODS

log = logging.getLogger(__name__)
router = APIRouter()
# Says how an answer was made: "hit" (kept, the tiers it read unchanged since), "miss" (read
# now, and kept), "off" (read now, never kept: the raw tier); a request with
# ``Cache-Control: no-cache`` is always read now (and kept).
CACHE_HEADER = "X-Report-Cache"
DATE: dict[str, Any] = {"pattern": DATE_PATTERN}  # empty: not given; a wrong day: 400


@router.get(
    "/api/v1/reports",
    tags=["reports"],
    summary="Usage report: GPU-hours, utilisation, memory, energy, idle-held hours, long tail",
    description=(
        f"period: {', '.join(PERIODS)}; by: {', '.join(BY)}. from/to are local dates "
        "(YYYY-MM-DD, both included) in the configured warehouse.timezone; without them the "
        "last few periods. Rows carry the change against the previous period. "
        "p95_util is within p95_error_bound_percent (5 points) of the exact value. "
        "Answers are kept while the tiers they read are unchanged (header X-Report-Cache: "
        "hit, miss, off); a request with Cache-Control: no-cache is read anew."
    ),
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        400: {
            "description": "a range the report cannot cover (from after to, over 20 "
            "years, a custom period without both dates), or unknown keys or fields"
        },
    },
)
def reports(
    request: Request,
    period: Annotated[str, Query(json_schema_extra={"enum": list(PERIODS)})] = "month",
    by: Annotated[str, Query(json_schema_extra={"enum": list(BY)})] = "fleet",
    from_: Annotated[
        str | None, Query(alias="from", description="YYYY-MM-DD", json_schema_extra=DATE)
    ] = None,
    to: Annotated[
        str | None, Query(description="YYYY-MM-DD (included)", json_schema_extra=DATE)
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    tier: Annotated[
        Literal["auto", "day", "hour", "raw"],
        Query(description="auto: the day tier; raw: straight from raw samples (slow, checks)"),
    ] = "auto",
    key: Annotated[
        str | None,
        Query(min_length=1, description="only these keys, comma-separated (e.g. key=alice,bob)"),
    ] = None,
    fields: Annotated[
        str | None,
        Query(
            min_length=1, description="only these row columns, comma-separated (e.g. key,gpu_hours)"
        ),
    ] = None,
) -> Any:
    from gpufleet.http.errors import ApiError

    clock = time.perf_counter()
    ctx = request.app.state.ctx
    wh = ctx.settings.warehouse
    try:
        plan = plan_report(
            period=period, by=by, first=parse_date(from_, "from"), last=parse_date(to, "to"),
            tz=wh.timezone, tier=tier, busy_util_percent=wh.busy_util_percent,
            keys=parse_keys(key), host_groups=ctx.settings.hosts.groups,
        )  # fmt: skip
        wanted = parse_fields(fields) if fields is not None else None
    except ReportError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    # the state first: an answer is kept with the tiers' version it was read at (or older)
    state = ctx.store.warehouse_state()
    cache = _cache(request.app)
    request_key = (_plan_key(plan), tuple(wanted) if wanted is not None else None, format)
    fresh = "no-cache" in request.headers.get("cache-control", "").lower()
    kept = plan.tier != "raw"  # raw samples change with every batch: never kept
    entry = cache.get(request_key, state) if kept and not fresh else None
    said = "hit"
    if entry is None:
        said = "miss" if kept else "off"
        report = report_from_plan(ctx.store, plan, state=state, fields=wanted)
        query_ms = report["query_ms"]
        if format == "csv":
            name = f"gpufleet-{period}-by-{by}-{report['from']}-{report['to']}.csv"
            entry = Entry(
                tiers_version(state), plan.span, to_csv(report).encode(),
                "text/csv; charset=utf-8",
                {"Content-Disposition": f'attachment; filename="{name}"'},
            )  # fmt: skip
        else:
            entry = Entry(tiers_version(state), plan.span, split(report), "application/json", {})
        if kept:
            cache.put(request_key, entry)
    else:
        query_ms = round((time.perf_counter() - clock) * 1000, 1)
    body = entry.body
    if format != "csv":
        # the kept bytes (orjson) with the members of now in front: no re-encoding
        body = answer(body, {**volatile_meta(state, plan.tier), "query_ms": query_ms})
    return Response(
        body, media_type=entry.media_type, headers={**entry.headers, CACHE_HEADER: said}
    )


def _cache(app: Any) -> ReportCache:
    cache = getattr(app.state, "report_cache", None)
    if cache is None:
        cache = app.state.report_cache = ReportCache()
    return cache


def _plan_key(plan: ReportPlan) -> tuple[Any, ...]:
    """What the answer depends on besides the tiers (the buckets follow from these)."""
    return (plan.period, plan.by, plan.first, plan.last, plan.tz, plan.tier,
            plan.busy_util_percent, plan.keys, plan.host_groups)  # fmt: skip


@router.get(
    "/api/v1/reports/options",
    tags=["reports"],
    summary="What a report can be asked for: periods, groupings (by), formats, time zone",
)
def options(request: Request) -> dict[str, Any]:
    return report_options(request.app.state.ctx.settings.warehouse.timezone)


async def rollup_forever(ctx: Any) -> None:
    """The server's incremental rollup: completed hours and late samples, then tier retention."""
    cfg = ctx.settings.warehouse
    unsupported_said = False
    while True:
        now = time.time()
        try:
            done = await asyncio.to_thread(
                ctx.store.rollup, now=now, tz=cfg.timezone, busy_util_percent=cfg.busy_util_percent
            )
            if done["hours"]:
                log.info("rollup: %s", done)
            await asyncio.to_thread(
                ctx.store.prune_tiers,
                now - cfg.retention_minute_days * 86400,
                now - cfg.retention_hour_days * 86400,
            )
        except StoreError as exc:  # e.g. the warehouse is not on this backend yet: say it once
            if not unsupported_said:
                log.warning("rollup: %s; reports stay empty on this store", exc)
                unsupported_said = True
        except Exception:
            log.exception("rollup failed; will try again")
        await asyncio.sleep(cfg.rollup_interval_seconds)
