"""Read API: hosts, one host's latest sample, recent history, health."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from gpufleet import __version__
from gpufleet.http.context import Context
from gpufleet.http.errors import ApiError
from gpufleet.live.state import HostState
from gpufleet.store.base import SERIES_METRICS

router = APIRouter()


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


def parse_time(text: str | None, now: float, default: float) -> float:
    """Unix seconds, an ISO 8601 time, or a relative span like ``-1h``, ``-30m``, ``-7d``."""
    if text is None or text == "":
        return default
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhdw])", text)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - float(m.group(1)) * mult
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_time", f"cannot read time {text!r}: use Unix seconds, ISO 8601 or -1h"
        ) from None
    if dt.tzinfo is None:
        raise ApiError(400, "invalid_time", f"time {text!r} has no time zone; add Z or +08:00")
    return dt.timestamp()


@router.get("/healthz", tags=["meta"], summary="Liveness and basic state")
def healthz(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.time() - ctx.started_at, 3),
        "store": {
            "url": ctx.settings.database_url_redacted,
            "schema_version": ctx.store.schema_version(),
        },
        "writer_queue": ctx.queue_depth(),
        "hosts": len(ctx.live.hosts),
        "ingest_workers": ctx.ingest_workers_status(),
    }


@router.get("/api/v1/hosts", tags=["hosts"], summary="Every known host with its status")
def hosts(request: Request) -> dict[str, Any]:
    ctx = _ctx(request)
    return {"hosts": ctx.host_summaries(time.time())}


def _host(ctx: Context, name: str) -> HostState:
    st = ctx.live.hosts.get(name)
    if st is None:
        raise ApiError(404, "unknown_host", f"no host named {name!r}; GET /api/v1/hosts lists them")
    return st


@router.get(
    "/api/v1/hosts/{name}", tags=["hosts"], summary="A host's status and latest full sample"
)
def host(request: Request, name: str) -> dict[str, Any]:
    ctx = _ctx(request)
    st = _host(ctx, name)
    out = st.summary(time.time(), ctx.live.status_cfg)
    out["sample"] = st.sample.model_dump(mode="json")
    return out


@router.get(
    "/api/v1/hosts/{name}/series",
    tags=["hosts"],
    summary="Recent raw history of one metric (GPU metrics: one series per GPU)",
    responses={400: {"description": "an unknown metric, or since after until"}},
)
def series(
    request: Request,
    name: str,
    metric: Annotated[
        str,
        Query(
            description="e.g. gpu.utilization_gpu_percent, host.cpu_percent",
            json_schema_extra={"enum": sorted(SERIES_METRICS)},
        ),
    ],
    since: Annotated[
        str | None, Query(description="Unix s, ISO 8601, or -1h (default -1h)")
    ] = None,
    until: Annotated[
        str | None, Query(description="Unix s, ISO 8601, or -5m (default now)")
    ] = None,
    max_points: Annotated[int, Query(ge=10, le=10000)] = 1000,
) -> dict[str, Any]:
    ctx = _ctx(request)
    _host(ctx, name)
    if metric not in SERIES_METRICS:
        raise ApiError(
            400, "unknown_metric",
            f"unknown metric {metric!r}; one of: {', '.join(sorted(SERIES_METRICS))}",
        )  # fmt: skip
    now = time.time()
    t0, t1 = parse_time(since, now, now - 3600), parse_time(until, now, now)
    if t0 > t1:
        raise ApiError(400, "invalid_range", "since is after until")
    data = ctx.store.series(name, metric, t0, t1, max_points)
    _, _, unit = SERIES_METRICS[metric]
    return {
        "host": name,
        "metric": metric,
        "unit": unit,
        "since": t0,
        "until": t1,
        "series": [{"gpu": s.key, "points": s.points} for s in data],
    }
