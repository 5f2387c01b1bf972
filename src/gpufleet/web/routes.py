"""Page routes. Each page's data comes from the function that serves its JSON twin:
the overview from ``/api/v1/stream`` / ``/api/v1/overview``, a host page from
``/api/v1/hosts/{name}`` (the same ``api.host`` function)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gpufleet.accounts.web import page_context
from gpufleet.http.errors import ApiError
from gpufleet.http.templates import VENDOR_ECHARTS, templates
from gpufleet.i18n import N_
from gpufleet.web import api

router = APIRouter(include_in_schema=False)

SORTS = {"name": N_("name"), "free": N_("free GPUs"), "util": N_("GPU utilisation")}


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    q = request.query_params
    filters: dict[str, Any] = {
        "q": q.get("q", ""),
        "free": q.get("free") in ("1", "on", "true"),
        "model": q.get("model", ""),
        "user": q.get("user", ""),
        "group": q.get("group", ""),
        "source": q.get("source", ""),
        "status": q.get("status", ""),
        "sort": q.get("sort", "name") if q.get("sort") in SORTS else "name",
    }
    ctx = request.app.state.ctx
    return templates.TemplateResponse(
        request,
        "overview.html",
        {
            **page_context(request),
            "filters": filters,
            "sorts": SORTS,
            "idle_gpu_minutes": ctx.settings.web.idle_gpu_minutes,
            "page": "overview",
        },
    )


@router.get("/hosts/{name}", response_class=HTMLResponse)
def host_page(request: Request, name: str) -> HTMLResponse:
    try:
        data = api.host(request, name)  # the JSON API's own function: the page cannot drift
    except ApiError as exc:
        return templates.TemplateResponse(
            request,
            "not_found.html",
            {**page_context(request), "message": exc.message, "page": "host"},
            status_code=404,
        )
    rng = request.query_params.get("range", "1h")
    return templates.TemplateResponse(
        request,
        "host.html",
        {
            **page_context(request),
            "host": data,
            "host_json": orjson.dumps(data).decode().replace("</", "<\\/"),
            "sample": data["sample"],
            "range": rng if rng in ("1h", "6h", "1d", "1w") else "1h",
            "has_echarts": VENDOR_ECHARTS.exists(),
            "page": "host",
        },
    )
