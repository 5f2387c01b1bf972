"""``POST /api/v1/ingest``: authenticate, validate, hand to the store's writer, acknowledge
once the batch is durable. Nothing partial is ever stored: a batch is validated whole before
it is queued, and stored in one transaction.

This is the hot path (every agent, every few seconds), so it is plain ASGI: the application
(``app.GpufleetAPI``) hands ``POST /api/v1/ingest`` to ``serve`` before FastAPI's middleware
stack and router, and ``serve`` reads the headers and body itself. Measured at saturation,
that stack (body-limit, telemetry, error and exception middleware, the exit stack, routing,
``Request``) took more of the event loop's time than the ingest work itself. The answers are
the same as the rest of the API's: one JSON error shape (``errors.error_body``), 500 with
the error logged for a bug. Its OpenAPI entry is ``OPENAPI``; ``ROUTE`` serves the same code
through the router for any request that reaches it there.
"""

from __future__ import annotations

import gzip
import logging
import time
import zlib
from collections import Counter
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.routing import Route

from gpufleet.config import Settings
from gpufleet.http.auth import TokenCache
from gpufleet.http.context import Histogram
from gpufleet.http.errors import ApiError, error_body, summarise, validation_details
from gpufleet.store import IngestItem, StoreError
from gpufleet.wire import Batch, IngestAck, future_timestamps

log = logging.getLogger(__name__)

PATH = "/api/v1/ingest"


class IngestSink(Protocol):
    """Where an accepted batch goes: the store's writer, or an ingest worker's log."""

    async def ingest(self, item: IngestItem) -> bool: ...


class IngestContext(Protocol):
    """What ingest needs: the server's Context, or an ingest worker's (which has no live
    state and no workers of its own: the server tails the worker's log)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store(self) -> IngestSink: ...
    @property
    def tokens(self) -> TokenCache: ...
    @property
    def counters(self) -> Counter: ...
    @property
    def latency(self) -> Histogram: ...
    @property
    def live(self) -> Any: ...
    @property
    def ingest_workers(self) -> Any: ...
    def queue_depth(self) -> int: ...


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


_ERROR = {"content": _json("Error")}
OPENAPI = {
    "post": {
        "tags": ["ingest"],
        "summary": "Store one batch of samples (idempotent by batch_id)",
        "operationId": "ingest",
        "security": [{"agentToken": []}],
        "requestBody": {"required": True, "content": _json("Batch")},
        "responses": {
            "200": {
                "description": "stored, or a duplicate of a stored batch",
                "content": _json("IngestAck"),
            },
            "400": {"description": "body is not valid gzip", **_ERROR},
            "401": {"description": "missing or unknown agent token", **_ERROR},
            "403": {"description": "revoked agent token", **_ERROR},
            "413": {"description": "body too large", **_ERROR},
            "415": {"description": "not JSON, or an unsupported Content-Encoding", **_ERROR},
            "422": {"description": "the batch is invalid; the message says where", **_ERROR},
            "503": {"description": "the store is busy or failing; retry later", **_ERROR},
        },
    }
}


class _ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    wanted = (b"authorization", b"content-type", b"content-length", b"content-encoding")
    return {k: v for k, v in scope["headers"] if k in wanted}


async def _read_body(headers: dict[bytes, bytes], receive: Any, limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "too_large", f"request body is {declared.decode()} bytes; the limit is {limit}"
        )
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding == "gzip":
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise ApiError(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
        if len(out) > limit:
            raise ApiError(413, "too_large", f"decoded body exceeds the limit of {limit} bytes")
        return out
    if encoding not in ("identity", ""):
        raise ApiError(415, "bad_encoding", f"unsupported Content-Encoding {encoding!r}; use gzip")
    return body


async def _ingest(ctx: IngestContext, scope: dict[str, Any], receive: Any) -> bytes:
    headers = _headers(scope)
    auth = headers.get(b"authorization")
    token = ctx.tokens.check(auth.decode("latin-1") if auth is not None else None)
    ctype = headers.get(b"content-type", b"application/json").decode("latin-1")
    ctype = ctype.split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise ApiError(
            415, "bad_content_type", f"Content-Type must be application/json, not {ctype!r}"
        )
    body = await _read_body(headers, receive, ctx.settings.ingest.max_batch_bytes)
    received_at = time.time()
    try:
        batch = Batch.model_validate_json(body)
    except ValidationError as exc:
        ctx.counters["rejected"] += 1
        details = validation_details(exc)
        raise ApiError(422, "invalid_batch", summarise(details), details) from None
    future = future_timestamps(batch, received_at, ctx.settings.ingest.max_future_seconds)
    if future:
        ctx.counters["rejected"] += 1
        raise ApiError(422, "invalid_batch", summarise(future), future)
    if ctx.queue_depth() >= ctx.settings.ingest.max_queue:
        raise ApiError(
            503, "busy", "the store is behind; retry later", headers={"Retry-After": "5"}
        )
    ack = await accept(ctx, batch, token.name, received_at, raw=body)
    return ack.model_dump_json().encode()


async def serve(ctx: IngestContext, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer one ``POST /api/v1/ingest`` (an ASGI HTTP scope)."""
    extra: dict[str, str] = {}
    try:
        status, body = 200, await _ingest(ctx, scope, receive)
    except _ClientGone:
        return
    except ApiError as exc:
        status, extra = exc.status, exc.headers or {}
        body = error_body(exc.status, exc.code, exc.message, exc.details)
    except Exception:
        log.exception("unhandled error on POST %s", PATH)
        status = 500
        body = error_body(500, "internal_error", "internal server error; see the server log")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
    ]
    pool = ctx.ingest_workers  # the server's (a worker has none)
    if pool is not None and pool.takes_connections():
        # a connection the server kept while no worker was up: the agent's next batch comes
        # on a new connection, which is handed to a worker (see workers/pool.py)
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Endpoint:
    """The same handler behind the router, as a plain ASGI endpoint (for a request the
    application's fast path did not take, e.g. when the app is mounted under another)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await serve(scope["app"].state.ctx, scope, receive, send)


async def accept(
    ctx: IngestContext, batch: Batch, token_name: str, received_at: float, raw: bytes | None = None
) -> IngestAck:
    """Store a validated batch (from an agent or the SSH poller) and update live state.
    ``raw``: the batch's JSON as received, if any (the store may keep it as is)."""
    skew = received_at - batch.sent_at
    warnings = []
    if abs(skew) > ctx.settings.ingest.clock_skew_warn_seconds:
        warnings.append(
            f"clock skew: the agent's clock is {-skew:+.1f} s off the server's; fix NTP on the host"
        )
    item = IngestItem(batch, token_name, received_at, skew, raw)
    try:
        stored = await ctx.store.ingest(item)
    except StoreError as exc:
        raise ApiError(503, "store_failed", str(exc), headers={"Retry-After": "5"}) from None
    ctx.counters["stored" if stored else "duplicate"] += 1
    ctx.latency.observe(time.time() - received_at)
    if stored and ctx.live is not None:  # an ingest worker has none: the server tails its log
        publish(ctx, batch, token_name, received_at, skew)
    if stored and ctx.ingest_workers is not None:  # so a re-send through a worker is a duplicate
        ctx.ingest_workers.stored_here(batch.batch_id)
    return IngestAck(
        batch_id=batch.batch_id,
        status="stored" if stored else "duplicate",
        samples=len(batch.samples),
        clock_skew_seconds=round(skew, 3),
        warnings=warnings,
    )


def publish(
    ctx: IngestContext, batch: Batch, token_name: str, received_at: float, skew: float
) -> None:
    """Live state (the dashboard, /api/v1/hosts) learns a stored batch's samples."""
    for sample in batch.samples:
        ctx.live.update(
            sample,
            source=batch.source,
            token_name=token_name,
            received_at=received_at,
            agent_version=batch.agent_version or sample.facts.agent_version or None,
            clock_skew_seconds=skew,
        )


ROUTE = Route(PATH, _Endpoint(), methods=["POST"], name="ingest")
