"""``GET /api/v1/reports``: the report as JSON, or its rows as CSV. Parses, calls the
service, serialises; the figures come from gpufleet.reports.core."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gpufleet.reports.core import BY
from gpufleet.reports.service import (
    DATE_PATTERN,
    ReportError,
    compute_report,
    parse_date,
    parse_keys,
    report_options,
    select_fields,
    to_csv,
)
from gpufleet.store import StoreError
from gpufleet.warehouse.calendar import PERIODS

log = logging.getLogger(__name__)
router = APIRouter()
DATE: dict[str, Any] = {"pattern": DATE_PATTERN}  # empty: not given; a wrong day: 400


@router.get(
    "/api/v1/reports",
    tags=["reports"],
    summary="Usage report: GPU-hours, utilisation, memory, energy, idle-held hours, long tail",
    description=(
        f"period: {', '.join(PERIODS)}; by: {', '.join(BY)}. from/to are local dates "
        "(YYYY-MM-DD, both included) in the configured warehouse.timezone; without them the "
        "last few periods. Rows carry the change against the previous period. "
        "p95_util is within p95_error_bound_percent (5 points) of the exact value."
    ),
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        400: {"description": "a range the report cannot cover (from after to, over 20 "
                      "years, a custom period without both dates), or unknown keys or fields"},
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
        Query(min_length=1, description="only these row columns, comma-separated (e.g. key,gpu_hours)"),
    ] = None,
) -> Any:
    from gpufleet.http.errors import ApiError

    ctx = request.app.state.ctx
    wh = ctx.settings.warehouse
    try:
        report = compute_report(
            ctx.store, period=period, by=by, first=parse_date(from_, "from"),
            last=parse_date(to, "to"), tz=wh.timezone, tier=tier,
            busy_util_percent=wh.busy_util_percent, keys=parse_keys(key),
            host_groups=ctx.settings.hosts.groups,
        )  # fmt: skip
        if fields is not None:
            report = select_fields(report, fields)
    except ReportError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    if format == "csv":
        name = f"gpufleet-{period}-by-{by}-{report['from']}-{report['to']}.csv"
        return Response(
            to_csv(report), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )  # fmt: skip
    return report


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
