"""One JSON error shape for the whole API, produced by one set of handlers:

{"error": {"status": 422, "code": "invalid_batch", "message": "...", "details": [...]}}
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message", "details"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers


def error_body(status: int, code: str, message: str, details: list | None = None) -> bytes:
    body = {"error": {"status": status, "code": code, "message": message, "details": details or []}}
    return orjson.dumps(body)


def error_response(
    status: int, code: str, message: str, details: list | None = None, headers: dict | None = None
) -> Response:
    return Response(
        error_body(status, code, message, details), status, headers, media_type="application/json"
    )


def location(loc: tuple | list) -> str:
    """``('samples', 0, 'gpus', 2, 'power_watts')`` -> ``samples[0].gpus[2].power_watts``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


def validation_details(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        where = location([p for p in err.get("loc", ()) if p != "body"])
        msg = err.get("msg", "").removeprefix("Value error, ")
        # A model-level check names the field it is about ("processes[0].gpu_index: ..."):
        # fold that into the location so the client sees one precise path.
        inner = re.match(r"^([A-Za-z_][\w.\[\]]*): (.+)$", msg, re.S)
        if inner and err.get("type") == "value_error":
            where = f"{where}.{inner.group(1)}" if where != "(body)" else inner.group(1)
            msg = inner.group(2)
        details.append({"loc": where, "msg": msg, "type": err.get("type")})
    return details


def summarise(details: list[dict[str, Any]]) -> str:
    first = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:3])
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return first + more


def allowed_methods(request: Request) -> list[str]:
    """The methods served at the request's path (one path may have many routes)."""
    from fastapi.routing import iter_route_contexts

    exact: set[str] = set()  # as in OpenAPI, /x/import is not /x/{name} with name="import"
    templated: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods = exact if route.path_format == request.url.path else templated
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(exact or templated)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        details = validation_details(exc)
        return error_response(422, "invalid_request", summarise(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:  # Starlette names the methods of one route of the path
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")
