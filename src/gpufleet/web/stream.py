"""``GET /api/v1/stream``: live host updates over Server-Sent Events.

A listener on ``LiveState`` marks a host dirty on every stored sample (and feeds the per-GPU
idle tracker); one flush task coalesces: it wakes on the first change, sends every changed host
in one message, then waits ``flush_interval_seconds`` before the next, so 500 hosts reporting
every 5 s cost a few encodes a second whatever the number of browsers. Each message is encoded
once and queued to every client. A client that falls behind is dropped; its EventSource
reconnects and gets a full snapshot, as after a server restart.

Messages (``event:`` name, ``data:`` JSON):
- ``snapshot``: ``{now, hosts: [view...], totals}``, first on every connection;
- ``hosts``: ``{now, hosts: [changed views], totals}``;
- ``host`` (a client that asked for ``?host=NAME``): ``{now, view, summary, sample}``;
- other events other parts publish (:meth:`StreamHub.publish`; e.g. ``alerts``: badge counts,
  gpufleet.alerts.service), to every client, and sent after the first message on connecting;
- ``ping``: ``{now}`` after ``KEEPALIVE_SECONDS`` of quiet (the page reconnects when even
  these stop: a half-open connection after a network drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from gpufleet.http.context import Context
from gpufleet.http.errors import ApiError
from gpufleet.live.state import HostState
from gpufleet.web.view import IdleTracker, fleet_totals, host_view

router = APIRouter()

RETRY_MILLISECONDS = 1000
KEEPALIVE_SECONDS = 15.0
CLIENT_QUEUE = 256


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass(eq=False)
class Client:
    host: str | None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    dropped: bool = False

    def put(self, message: bytes | None) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:  # too slow: end it; the browser reconnects and resyncs
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class StreamHub:
    def __init__(
        self,
        ctx: Context,
        *,
        flush_interval_seconds: float = 0.25,
        status_interval_seconds: float = 2.0,
    ) -> None:
        self.ctx = ctx
        web = ctx.settings.web
        self.idle = IdleTracker(web.idle_util_percent)
        self.idle_after_seconds = web.idle_gpu_minutes * 60
        self.flush_interval_seconds = flush_interval_seconds
        self.status_interval_seconds = status_interval_seconds
        self.clients: set[Client] = set()
        self.views: dict[str, dict[str, Any]] = {}
        self.messages_sent = 0
        self.flushes = 0
        # CPU time (of the event loop's thread) spent building and encoding updates
        self.busy_seconds = 0.0
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._seq = 0
        self.queue_gpus: Any = None  # () -> {host: [GPU indices running queued jobs]}
        # event name -> its current data: sent after the first message of every connection
        self.extra_snapshots: dict[str, Callable[[], Any]] = {}
        for st in list(ctx.live.hosts.values()):
            self.idle.observe(st.sample)

    # -- fed by LiveState (any thread) -------------------------------------------------------
    def on_sample(self, st: HostState) -> None:
        t0 = time.thread_time()
        with self._lock:
            self.idle.observe(st.sample)
            first = not self._dirty
            self._dirty.add(st.name)
            self.busy_seconds += time.thread_time() - t0
        if first and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- views -------------------------------------------------------------------------------
    def _summaries(self, now: float, names: set[str] | None) -> dict[str, dict[str, Any]]:
        live = self.ctx.live
        if self.ctx.poller is None and names is not None:  # cheap path: only the changed hosts
            return {
                n: live.hosts[n].summary(now, live.status_cfg) for n in names if n in live.hosts
            }
        return {s["name"]: s for s in self.ctx.host_summaries(now)}

    def _view(self, summary: dict[str, Any]) -> dict[str, Any]:
        st = self.ctx.live.hosts.get(summary["name"])
        sample = st.sample if st is not None else None
        with self._lock:
            idle = self.idle.of_host(summary["name"])
        view = host_view(summary, sample, idle, idle_after_seconds=self.idle_after_seconds)
        if self.queue_gpus is not None:
            view["queue_gpus"] = sorted(self.queue_gpus().get(summary["name"], []))
        return view

    def on_queue_change(self, job_ids: list[int]) -> None:
        """The job queue changed: overview clients hear ``queue`` (the queue page re-reads
        /api/v1/jobs) and every host's bars are redrawn with the GPUs queued jobs hold."""
        self._seq += 1
        message = sse("queue", {"now": time.time(), "jobs": job_ids}, self._seq)
        for c in list(self.clients):
            if c.host is None:
                c.put(message)
        with self._lock:
            self._dirty |= set(self.ctx.live.hosts)
        if self._wake is not None:
            self._wake.set()

    def overview(self, now: float | None = None) -> dict[str, Any]:
        """Every host's view and the fleet totals (the snapshot and ``/api/v1/overview``)."""
        now = time.time() if now is None else now
        views = [self._view(s) for s in self.ctx.host_summaries(now)]
        self.views = {v["name"]: v for v in views}
        return {"now": now, "hosts": views, "totals": fleet_totals(views)}

    def host_detail(self, name: str, now: float) -> dict[str, Any] | None:
        st = self.ctx.live.hosts.get(name)
        if st is None:
            return None
        summary = self._summaries(now, {name}).get(name) or st.summary(
            now, self.ctx.live.status_cfg
        )
        return {
            "now": now,
            "view": self._view(summary),
            "summary": summary,
            "sample": st.sample.model_dump(mode="json"),
        }

    # -- clients -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "flushes": self.flushes,
            "messages_sent": self.messages_sent,
            "busy_seconds": round(self.busy_seconds, 6),
        }

    def subscribe(self, host: str | None) -> tuple[Client, bytes]:
        t0 = time.thread_time()
        try:
            return self._subscribe(host)
        finally:
            self.busy_seconds += time.thread_time() - t0

    def _subscribe(self, host: str | None) -> tuple[Client, bytes]:
        client = Client(host)
        now = time.time()
        self._seq += 1
        if host is None:
            first = sse("snapshot", self.overview(now), self._seq)
        else:
            first = sse("host", self.host_detail(host, now), self._seq)
        for event, current in self.extra_snapshots.items():
            first += sse(event, current(), self._seq)
        self.clients.add(client)
        return client, first

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    def close_all(self) -> None:
        for c in list(self.clients):
            c.put(None)

    def publish(self, event: str, data: Any) -> None:
        """Send one event to every client (call on the event loop's thread)."""
        if not self.clients:
            return
        self._seq += 1
        message = sse(event, data, self._seq)
        for c in list(self.clients):
            c.put(message)
            self.messages_sent += 1

    # -- the coalescing flush ----------------------------------------------------------------
    def flush(self) -> int:
        """Send the hosts that changed since the last flush; returns how many."""
        t0 = time.thread_time()
        try:
            return self._flush()
        finally:
            self.busy_seconds += time.thread_time() - t0

    def _flush(self) -> int:
        with self._lock:
            names, self._dirty = self._dirty, set()
        if not names or not self.clients:
            return 0
        now = time.time()
        summaries = self._summaries(now, names)
        changed = []
        for name in sorted(names):
            if name in summaries:
                view = self._view(summaries[name])
                self.views[name] = view
                changed.append(view)
        self._seq += 1
        self.flushes += 1
        message = None
        if any(c.host is None for c in self.clients):
            totals = fleet_totals(self.views.values())
            message = sse("hosts", {"now": now, "hosts": changed, "totals": totals}, self._seq)
        for c in list(self.clients):
            if c.host is None:
                c.put(message)
            elif c.host in names:
                c.put(sse("host", self.host_detail(c.host, now), self._seq))
            else:
                continue
            self.messages_sent += 1
        return len(changed)

    def mark_status_changes(self, now: float) -> None:
        """Hosts whose status or reason changed with no new sample (stale, offline)."""
        if not self.clients:
            return
        changed = {
            name
            for name, s in self._summaries(now, None).items()
            if (v := self.views.get(name)) is None
            or (v["status"], v["reason"]) != (s["status"], s["reason"])
        }
        if changed:
            with self._lock:
                self._dirty |= changed
            if self._wake is not None:
                self._wake.set()

    async def _flush_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep streaming; the next change or reconnect resyncs
                import logging

                logging.getLogger(__name__).exception("stream: flush failed")
            await asyncio.sleep(self.flush_interval_seconds)

    async def _status_forever(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_seconds)
            t0 = time.thread_time()
            with contextlib.suppress(Exception):
                self.mark_status_changes(time.time())
            self.busy_seconds += time.thread_time() - t0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._flush_forever()),
            asyncio.create_task(self._status_forever()),
        ]

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.close_all()


def attach(app: FastAPI, ctx: Context) -> StreamHub:
    """Create the hub for a started app and listen to its live state (call in the lifespan)."""
    hub = StreamHub(ctx)
    ctx.live.listeners.append(hub.on_sample)
    hub.start()
    app.state.stream_hub = hub
    return hub


def hub_of(request: Request) -> StreamHub:
    hub = getattr(request.app.state, "stream_hub", None)
    if hub is None:  # an app whose lifespan did not attach one (tests building their own)
        hub = attach(request.app, request.app.state.ctx)
    return hub


def _server_exiting() -> bool:
    """True once uvicorn got SIGTERM/SIGINT: open streams end so shutdown is not held up.
    (uvicorn waits for every open response before it exits; an event stream never ends.)"""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


# Not in the OpenAPI document: an event stream never ends, which schema-driven clients and
# fuzzers cannot read; the messages are described in this module's docstring.
@router.get("/api/v1/stream", include_in_schema=False)
async def stream(
    request: Request,
    host: Annotated[str | None, Query(description="Only this host (full sample)")] = None,
) -> StreamingResponse:
    hub = hub_of(request)
    if host is not None and host not in hub.ctx.live.hosts:
        raise ApiError(404, "unknown_host", f"no host named {host!r}; GET /api/v1/hosts lists them")
    client, first = hub.subscribe(host)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield f"retry: {RETRY_MILLISECONDS}\n\n".encode() + first
            idle = 0.0
            while True:
                try:
                    message = await asyncio.wait_for(client.queue.get(), 1.0)
                except TimeoutError:
                    if _server_exiting():
                        return
                    idle += 1.0
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield sse("ping", {"now": time.time()})
                    continue
                if message is None:
                    return
                idle = 0.0
                yield message
        finally:
            hub.unsubscribe(client)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/api/v1/overview",
    tags=["hosts"],
    summary="What the overview page shows: every host's view and the fleet totals",
)
async def overview(request: Request) -> dict[str, Any]:
    return hub_of(request).overview()


@router.get(
    "/api/v1/stream/stats",
    tags=["meta"],
    summary="The live stream's clients, messages and time spent building updates",
)
async def stream_stats(request: Request) -> dict[str, Any]:
    return hub_of(request).stats()
