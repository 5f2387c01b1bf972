"""``POST /api/v1/ingest``: authenticate, validate, hand to the store's writer, acknowledge
after commit. Nothing partial is ever stored: a batch is validated whole before it is queued,
and stored in one transaction.

This is the hot path (every agent, every few seconds), so it is a plain Starlette route: it
reads and validates its body itself, and FastAPI's per-request dependency machinery (a
quarter of the CPU per batch, measured) is skipped. Its OpenAPI entry is ``OPENAPI``.
"""

from __future__ import annotations

import gzip
import time
import zlib

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.routing import Route

from gpufleet.server.context import Context
from gpufleet.server.errors import ApiError, summarise, validation_details
from gpufleet.store import IngestItem, StoreError
from gpufleet.wire import Batch, IngestAck


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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(bytes(body), limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise ApiError(400, "bad_encoding", f"body is not valid gzip: {exc}") from None
        if len(out) > limit:
            raise ApiError(413, "too_large", f"decoded body exceeds the limit of {limit} bytes")
        return out
    if encoding != "identity":
        raise ApiError(415, "bad_encoding", f"unsupported Content-Encoding {encoding!r}; use gzip")
    return bytes(body)


async def ingest(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    token = ctx.tokens.check(request.headers.get("authorization"))
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise ApiError(
            415, "bad_content_type", f"Content-Type must be application/json, not {ctype!r}"
        )
    body = await _read_body(request, ctx.settings.ingest.max_batch_bytes)
    received_at = time.time()
    try:
        batch = Batch.model_validate_json(body)
    except ValidationError as exc:
        ctx.counters["rejected"] += 1
        details = validation_details(exc)
        raise ApiError(422, "invalid_batch", summarise(details), details) from None
    if ctx.queue_depth() >= ctx.settings.ingest.max_queue:
        raise ApiError(
            503, "busy", "the store is behind; retry later", headers={"Retry-After": "5"}
        )
    ack = await accept(ctx, batch, token.name, received_at, raw=body)
    return Response(ack.model_dump_json(), media_type="application/json")


async def accept(
    ctx: Context, batch: Batch, token_name: str, received_at: float, raw: bytes | None = None
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
    if stored:
        for sample in batch.samples:
            ctx.live.update(
                sample,
                source=batch.source,
                token_name=token_name,
                received_at=received_at,
                agent_version=batch.agent_version or sample.facts.agent_version or None,
                clock_skew_seconds=skew,
            )
    return IngestAck(
        batch_id=batch.batch_id,
        status="stored" if stored else "duplicate",
        samples=len(batch.samples),
        clock_skew_seconds=round(skew, 3),
        warnings=warnings,
    )


ROUTE = Route("/api/v1/ingest", ingest, methods=["POST"], name="ingest")
