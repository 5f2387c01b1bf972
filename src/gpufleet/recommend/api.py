"""``POST /api/v1/recommendations`` and the ``/recommend`` page. Both call ``recommend_json``:
the page shows exactly what the API answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from gpufleet.http.errors import ApiError, summarise, validation_details
from gpufleet.recommend.request import RecommendRequest
from gpufleet.recommend.service import service_of
from gpufleet.recommend.speeds import known_models

router = APIRouter()
pages = APIRouter(include_in_schema=False)

EXAMPLE = {"gpus": 2, "gpu_mem_gib": 40, "hours": 6, "model": "resnet50"}
# the body's schema, inlined: the handler validates it itself (a 422 naming the field)
REQUEST_SCHEMA = RecommendRequest.model_json_schema()


def recommend_json(request: Request, body: Any) -> dict[str, Any]:
    """Validate ``body`` against the live fleet and rank; ApiError 422 names the field."""
    svc = service_of(request.app)
    try:
        req, snap, index = svc.parse(body, time.time())
    except ValidationError as exc:
        details = validation_details(exc)
        raise ApiError(422, "invalid_request", summarise(details), details) from None
    return svc.answer(req, snap, index)


@router.post(
    "/api/v1/recommendations",
    tags=["recommend"],
    summary="Where to run now: ranked GPU sets with reasons (or when something frees up)",
    description=(
        "Body: `gpus` (>= 1), `gpu_mem_gib` (per GPU, GiB = 2^30 bytes), `hours`, optional "
        '`gpu_models` (any of, e.g. ["A100"]), `model` (e.g. resnet50, bert, lstm), `data_gib` (GiB) '
        "and `data_host` (where the data is now), `multi_host` (may span hosts), `limit`. "
        "Numbers must be numbers (`true` is refused). "
        "Answer: `recommendations` (in the listed order: host, gpus, `hosts` (every host of the "
        "answer), score, `order` (why it is at its place: 'safe band' or 'score'), "
        "p_free_for_duration, reasons (English), reasons_i18n (the same as messages: `id` = the "
        "English template, `params`, for a client that shows them in another language), "
        "command), and when nothing fits now a `note` naming the limit (`note_i18n`) and `eta` "
        "(median `in_hours` with an 80% range `low_hours`-`high_hours`). "
        "Errors: 422 with the field path, also for a request that can never fit on this fleet."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"example": EXAMPLE, "schema": REQUEST_SCHEMA}},
        },
        "responses": {
            "400": {"description": "the body is not JSON"},
            "422": {"description": "a field is invalid, or the request can never fit this fleet"},
        },
    },
)
async def recommendations(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(
            422, "invalid_request", "(body): send a JSON object like " + orjson.dumps(EXAMPLE).decode(),
            [{"loc": "(body)", "msg": "expected a JSON object", "type": "dict_type"}],
        )  # fmt: skip
    # off the event loop: a fresh snapshot of a large fleet takes tens of milliseconds
    return await asyncio.to_thread(recommend_json, request, body)


FORM_FIELDS = ("gpus", "gpu_mem_gib", "hours", "gpu_models", "model", "data_gib", "data_host")


def form_body(q: Any) -> dict[str, Any]:
    """The page's query string as an API body (empty fields left out, lists split on commas)."""
    body: dict[str, Any] = {}
    for key in FORM_FIELDS:
        v = (q.get(key) or "").strip()
        if not v:
            continue
        body[key] = [x.strip() for x in v.split(",") if x.strip()] if key == "gpu_models" else v
    if q.get("multi_host") in ("1", "on", "true"):
        body["multi_host"] = True
    return body


@pages.get("/recommend", response_class=HTMLResponse)
def recommend_page(request: Request) -> HTMLResponse:
    from gpufleet.accounts.web import page_context
    from gpufleet.http.templates import templates

    q = request.query_params
    body = form_body(q)
    answer, error = None, None
    if body:
        try:
            answer = recommend_json(request, body)
        except ApiError as exc:
            error = exc
    svc = service_of(request.app)
    snap, _ = svc.current(time.time())
    return templates.TemplateResponse(
        request,
        "recommend.html",
        {
            **page_context(request),
            "page": "recommend",
            "form": {k: q.get(k, "") for k in FORM_FIELDS} | {"multi_host": "multi_host" in body},
            "answer": answer,
            "error": error,
            "gpu_names": sorted(snap.gpu_names()),
            "host_names": sorted(snap.host_names()),
            "models": known_models(),
            "api_body": orjson.dumps(body).decode() if body else "",
        },
        status_code=422 if error is not None and error.status == 422 else 200,
    )
