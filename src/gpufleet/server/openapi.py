"""``/openapi.json``: FastAPI's schema, made to say what the server really does.

FastAPI documents a route's parameters, body and the 422 of its own validation. What the
handlers add is read from the routes here, in one place, so that the file stays true as routes
are added (schemathesis checks it in tests/web/test_openapi_conformance.py):

- an ``Authorization`` header parameter means the local admin key (``adminKey``); the header
  leaves the parameter list for the security requirement, and 401 is documented;
- a ``require_<role>`` dependency means a login session (``session``): 401, and 403 for a role
  too low; ``csrf_protected`` adds the ``X-CSRF-Token`` header (``csrfToken``) and 403;
- the routers in ``SESSION_TOO`` take the admin key or a logged-in admin (their handlers decide);
- a path parameter names a thing that may not exist: 404;
- the routers in ``MAY_BE_OFF`` answer 503 while their capability is off in the config;
- every error answer has the one shape of gpufleet.http.errors (``Error``), the 422 included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from gpufleet.accounts.sessions import SESSION_COOKIE
from gpufleet.http.errors import ERROR_SCHEMA
from gpufleet.server import ingest
from gpufleet.wire import Batch, IngestAck

# handlers that check "the admin key, or a logged-in admin (with the CSRF token for a change)"
SESSION_TOO = ("gpufleet.alerts.api", "gpufleet.usermap.api", "gpufleet.queue.api")
# routers of a capability that can be switched off: 503 while it is (the job queue)
MAY_BE_OFF = ("gpufleet.queue.api",)

SECURITY_SCHEMES = {
    "agentToken": {"type": "http", "scheme": "bearer", "description": "agent token (gft_...)"},
    "adminKey": {
        "type": "http", "scheme": "bearer",
        "description": "the local admin key (the file admin.key in the server's data dir)",
    },
    "session": {
        "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
        "description": "a web login (POST /login)",
    },
    "csrfToken": {
        "type": "apiKey", "in": "header", "name": "X-CSRF-Token",
        "description": "the session's CSRF token (GET /api/v1/me), for changes",
    },
}  # fmt: skip

REASONS = {
    400: "the request cannot be read or answered as asked; the message says why",
    401: "no or wrong credentials",
    403: "the role is too low, or the CSRF token is missing or wrong",
    404: "no such thing",
    422: "a parameter or the body is invalid; the message and details name the field",
    503: "this capability is switched off in the config (the message names the setting)",
}


def _error(status: int) -> dict[str, Any]:
    return {
        "description": REASONS.get(status, "error"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _dependencies(route: Any) -> Iterator[Callable[..., Any]]:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            yield dep.call
        stack.extend(dep.dependencies)


def _contract(route: Any, op: dict[str, Any]) -> None:
    params = op.get("parameters", [])
    key = any(p["in"] == "header" and p["name"].lower() == "authorization" for p in params)
    if key:
        op["parameters"] = [p for p in params if p["name"].lower() != "authorization"]
        if not op["parameters"]:
            del op["parameters"]
    names = {getattr(call, "__name__", "") for call in _dependencies(route)}
    session = any(n.startswith("require_") for n in names)
    csrf = "csrf_protected" in names
    statuses: set[int] = set()
    security: list[dict[str, list]] = []
    if key:
        security.append({"adminKey": []})
        statuses.add(401)
        if route.endpoint.__module__ in SESSION_TOO:
            session = True
            csrf = csrf or op.get("requestBody") is not None or route.methods != {"GET"}
    if session:
        security.append({"session": [], "csrfToken": []} if csrf else {"session": []})
        statuses |= {401, 403}
    elif csrf:
        statuses.add(403)
    if security:
        op["security"] = security
    if "{" in route.path_format:
        statuses.add(404)
    if route.endpoint.__module__ in MAY_BE_OFF:
        statuses.add(503)
    if op.get("requestBody") is not None:
        statuses.add(400)  # a body that cannot be parsed as its content type
    responses = op.setdefault("responses", {})
    for status in sorted(statuses):
        responses.setdefault(str(status), _error(status))
    for status, answer in responses.items():
        if status.startswith(("4", "5")):  # FastAPI's 422 says {"detail": ...}; ours {"error"}
            answer["content"] = _error(int(status))["content"]


def build(app: FastAPI) -> dict[str, Any]:
    """The schema of ``app``: FastAPI's, the hot ingest path, and the contract above."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for route in iter_route_contexts(app.routes):  # routes of included routers, as served
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            op = schema["paths"].get(route.path_format, {}).get(method.lower())
            if op is not None:
                _contract(route, op)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    batch = Batch.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(batch.pop("$defs", {}))
    components["Batch"] = batch
    components["IngestAck"] = IngestAck.model_json_schema()
    components["Error"] = ERROR_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    schema["paths"][ingest.PATH] = ingest.OPENAPI
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    return schema
