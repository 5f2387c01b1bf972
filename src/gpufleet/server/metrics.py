"""``GET /metrics``: the server's own counters and the fleet's live state, Prometheus text format.

The fleet part is the same exposition an agent serves on ``--metrics-port``, for every host's
latest sample, plus the status the server alone knows (up, free GPUs, time since contact).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse

from gpufleet import __version__
from gpufleet.agent.prom import XidTotals, sample_families
from gpufleet.http.context import Context, Histogram
from gpufleet.promtext import CONTENT_TYPE, Family, exposition
from gpufleet.wire import gpu_is_free

router = APIRouter()


def _histogram(fam: Family, h: Histogram) -> Family:
    cumulative = 0
    for bound, count in zip(h.BUCKETS, h.counts, strict=False):
        cumulative += count
        fam.add((("le", repr(bound)),), cumulative, "_bucket")
    fam.add((("le", "+Inf"),), h.n, "_bucket")
    fam.add((), h.total, "_sum")
    fam.add((), h.n, "_count")
    return fam


def attach(app: FastAPI, ctx: Context) -> XidTotals:
    """Count every host's newest sample's XID events as they arrive (the live-state
    listener), for the ``gpu_xid_events_total`` counter."""
    xids = XidTotals()
    ctx.live.listeners.append(lambda st: xids.observe(st.sample))
    app.state.xid_totals = xids
    return xids


def server_families(ctx: Context, now: float, xids: XidTotals | None = None) -> list[Family]:
    info = Family("server_info", "Server version; the value is always 1.")
    info.add((("version", __version__),), 1)
    batches = Family("server_ingest_batches_total", "Ingest requests by result.", "counter")
    for result in ("stored", "duplicate", "rejected"):
        batches.add((("result", result),), ctx.counters[result])
    latency = _histogram(
        Family("server_ingest_latency_seconds",
               "Time from receiving a batch to acknowledging it (after commit).", "histogram"),
        ctx.latency,
    )  # fmt: skip
    queue = Family("server_writer_queue", "Batches waiting for the store's writer.")
    queue.add((), ctx.queue_depth())
    pool = ctx.ingest_workers_status()
    workers = Family("server_ingest_workers_up", "Ingest worker processes taking connections.")
    workers.add((), pool["up"])
    backlog = Family(
        "server_ingest_workers_backlog",
        "Batches the ingest workers acknowledged that are not in the store yet.",
    )
    backlog.add((), pool["backlog"])

    up = Family("host_up", "1 when the host is online, 0 when stale or offline.")
    contact = Family("host_seconds_since_contact", "Seconds since the host last reported.")
    gpus = Family("host_gpus", "GPUs on the host.")
    free = Family("host_free_gpus", "GPUs on the host that no process holds.")
    for s in ctx.host_summaries(now):
        host = (("host", s["name"]),)
        up.add((*host, ("status", s["status"]), ("source", s["source"])), s["status"] == "online")
        contact.add(host, s["seconds_since_contact"])
        gpus.add(host, s["gpu_count"])
        free.add(host, s["free_gpu_count"])
    gpu_free = Family("gpu_free", "1 when no process holds the GPU.")
    samples = [st.sample for _, st in sorted(ctx.live.hosts.items())]
    for sample in samples:
        for g in sample.gpus:
            gpu_free.add((("host", sample.host), ("gpu", str(g.index))),
                         gpu_is_free(g, sample.processes))  # fmt: skip
    return [info, batches, latency, queue, workers, backlog, up, contact, gpus, free, gpu_free,
            *sample_families(samples, xids)]  # fmt: skip


@router.api_route(
    "/metrics", methods=["GET", "HEAD"], tags=["meta"], summary="Prometheus metrics",
    response_class=PlainTextResponse,
)  # fmt: skip
def metrics(request: Request) -> PlainTextResponse:
    from gpufleet.queue.api import families as queue_families

    xids = getattr(request.app.state, "xid_totals", None)
    families = server_families(request.app.state.ctx, time.time(), xids)
    text = exposition([*families, *queue_families(request.app)])
    return PlainTextResponse(text, media_type=CONTENT_TYPE)
