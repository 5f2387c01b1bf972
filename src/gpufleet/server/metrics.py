"""``GET /metrics``: the server's own counters and the fleet's live state, Prometheus text format."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from gpufleet import __version__
from gpufleet.server.context import Context, Histogram
from gpufleet.wire import gpu_is_free

router = APIRouter()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    inner = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def value(self, name: str, value: float | None, **labels: object) -> None:
        if value is not None:
            self.lines.append(f"{name}{_labels(**labels)} {float(value)!r}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _histogram(w: _Writer, name: str, h: Histogram, help_text: str) -> None:
    w.family(name, "histogram", help_text)
    cumulative = 0
    for bound, count in zip(h.BUCKETS, h.counts, strict=False):
        cumulative += count
        w.value(f"{name}_bucket", cumulative, le=repr(bound))
    w.value(f"{name}_bucket", h.n, le="+Inf")
    w.value(f"{name}_sum", h.total)
    w.value(f"{name}_count", h.n)


GPU_GAUGES = (
    ("utilization_gpu_percent", "gpufleet_gpu_utilization_percent", "GPU utilisation"),
    ("memory_used_bytes", "gpufleet_gpu_memory_used_bytes", "GPU memory in use"),
    ("memory_total_bytes", "gpufleet_gpu_memory_total_bytes", "GPU memory size"),
    ("temperature_celsius", "gpufleet_gpu_temperature_celsius", "GPU temperature"),
    ("power_watts", "gpufleet_gpu_power_watts", "GPU power draw"),
)


def render(ctx: Context, now: float) -> str:
    w = _Writer()
    w.family("gpufleet_server_info", "gauge", "Server version")
    w.value("gpufleet_server_info", 1, version=__version__)
    w.family("gpufleet_server_ingest_batches_total", "counter", "Ingest requests by result")
    for result in ("stored", "duplicate", "rejected"):
        w.value("gpufleet_server_ingest_batches_total", ctx.counters[result], result=result)
    _histogram(
        w,
        "gpufleet_server_ingest_latency_seconds",
        ctx.latency,
        "Time from receiving a batch to acknowledging it (after commit)",
    )
    w.family("gpufleet_server_writer_queue", "gauge", "Batches waiting for the store's writer")
    w.value("gpufleet_server_writer_queue", ctx.queue_depth())

    summaries = ctx.host_summaries(now)
    w.family("gpufleet_host_up", "gauge", "1 when the host is online, 0 when stale or offline")
    for s in summaries:
        w.value(
            "gpufleet_host_up",
            1 if s["status"] == "online" else 0,
            host=s["name"],
            status=s["status"],
            source=s["source"],
        )
    w.family("gpufleet_host_seconds_since_contact", "gauge", "Seconds since the host last reported")
    for s in summaries:
        w.value("gpufleet_host_seconds_since_contact", s["seconds_since_contact"], host=s["name"])
    w.family("gpufleet_host_gpus", "gauge", "GPUs on the host")
    for s in summaries:
        w.value("gpufleet_host_gpus", s["gpu_count"], host=s["name"])
    w.family("gpufleet_host_free_gpus", "gauge", "GPUs on the host that no process holds")
    for s in summaries:
        w.value("gpufleet_host_free_gpus", s["free_gpu_count"], host=s["name"])

    hosts = [ctx.live.hosts[s["name"]] for s in summaries if s["name"] in ctx.live.hosts]
    for attr, name, help_text in GPU_GAUGES:
        w.family(name, "gauge", help_text)
        for st in hosts:
            for g in st.sample.gpus:
                w.value(name, getattr(g, attr), host=st.name, gpu=g.index, model=g.name)
    w.family("gpufleet_gpu_free", "gauge", "1 when no process holds the GPU")
    for st in hosts:
        for g in st.sample.gpus:
            w.value(
                "gpufleet_gpu_free",
                int(gpu_is_free(g, st.sample.processes)),
                host=st.name,
                gpu=g.index,
            )
    w.family("gpufleet_gpu_process_memory_bytes", "gauge", "GPU memory held, by user and GPU")
    for st in hosts:
        per_user: dict[tuple[int, str], int] = {}
        for p in st.sample.processes:
            key = (p.gpu_index, p.user or (str(p.uid) if p.uid is not None else "unknown"))
            per_user[key] = per_user.get(key, 0) + (p.gpu_memory_bytes or 0)
        for (gpu, user), used in sorted(per_user.items()):
            w.value("gpufleet_gpu_process_memory_bytes", used, host=st.name, gpu=gpu, user=user)
    return w.text()


@router.get(
    "/metrics", tags=["meta"], summary="Prometheus metrics", response_class=PlainTextResponse
)
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(render(request.app.state.ctx, time.time()), media_type=CONTENT_TYPE)
