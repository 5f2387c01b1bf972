"""One ingest worker process: ``python -m gpufleet.server.workers.worker SLOT FOLDER FD``.

It serves the client connections the server hands it over the channel (file descriptor
``FD``, see ``channel``): ``POST /api/v1/ingest`` with the same code as the server
(gpufleet.server.ingest), its batches logged to its own ingest log in ``FOLDER``
(``logwriter``). Any other request on such a connection is answered ``307`` to the same
URL with ``Connection: close``, so the client asks again on a new connection, which the
server keeps. Agent tokens come from the server (``TOKENS`` frames), counters go back to it
(``STATS``) for ``/metrics``.

It stops on ``STOP`` (finishing the requests in flight) or as soon as the server is gone
(the channel closes): what it acknowledged is in its log, which the next server moves into
the store. It holds ``FOLDER/lock`` while it runs, so a successor waits for it to be gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gpufleet.config import IngestSection, Settings
from gpufleet.http.auth import TokenCache
from gpufleet.http.context import Histogram
from gpufleet.server import ingest
from gpufleet.server.workers import channel
from gpufleet.server.workers.logwriter import LogWriter, lock_folder
from gpufleet.store import TokenRecord

log = logging.getLogger("gpufleet.server.workers")

SETTINGS_ENV = "GPUFLEET_WORKER_SETTINGS"  # the server's ``ingest`` settings, as JSON
STATS_SECONDS = 0.5
STOP_GRACE_SECONDS = 10.0
LOCK_WAIT_SECONDS = 30.0


@dataclass
class WorkerContext:
    """What ``gpufleet.server.ingest`` needs, in a worker: live state stays in the server."""

    settings: Settings
    store: LogWriter
    tokens: TokenCache
    counters: Counter = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    live: Any = None
    ingest_workers: Any = None  # a worker runs none

    def queue_depth(self) -> int:
        return self.store.queue_depth()


def make_app(ctx: WorkerContext) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"] == ingest.PATH:
            await ingest.serve(ctx, scope, receive, send)
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        await send({
            "type": "http.response.start", "status": 307,
            "headers": [(b"location", target), (b"connection", b"close"),
                        (b"content-length", b"0")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    return app


class Worker:
    def __init__(self, slot: int, folder: Path, channel_fd: int, settings: Settings) -> None:
        import uvicorn
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        from uvicorn.server import ServerState

        self.slot, self.folder = slot, folder
        self.loop = asyncio.get_running_loop()
        self._told = False  # a LOGGED frame is on its way
        self.ctx = WorkerContext(settings, LogWriter(folder, self._logged), TokenCache.of([]))
        self.config = uvicorn.Config(
            make_app(self.ctx), lifespan="off", http="httptools", proxy_headers=False,
            access_log=False, log_level="warning", timeout_keep_alive=30,
        )  # fmt: skip
        self.config.load()
        self.state = ServerState()
        self.protocol_class = HttpToolsProtocol
        self.stopping = asyncio.Event()
        # what was last reported: counters, latency bucket counts, latency total, count
        self.sent: tuple[Counter[str], list[int], float, int] = (
            Counter(),
            [0] * len(self.ctx.latency.counts),
            0.0,
            0,
        )
        self.backlog = 0
        sock = socket.socket(fileno=channel_fd)
        self.channel = channel.Channel(sock, self.loop, self.on_frame, self.stopping.set)

    def _logged(self) -> None:
        """(writer thread) New records are in the log: tell the server, which moves them into
        the store at once rather than at its next poll; one frame per loop turn at most."""
        if not self._told:
            self._told = True
            self.loop.call_soon_threadsafe(self._tell)

    def _tell(self) -> None:
        self._told = False
        self.channel.send(channel.LOGGED)

    def on_frame(self, kind: int, payload: bytes, fd: int | None) -> None:
        if kind == channel.CONN and fd is not None:
            if self.stopping.is_set():
                os.close(fd)
                return
            self.loop.create_task(self.serve(fd, payload))
        elif kind == channel.TOKENS:
            data = orjson.loads(payload)
            self.ctx.tokens.replace([TokenRecord(**t) for t in data["tokens"]])
            self.channel.send(channel.TOKENS_OK, orjson.dumps({"seq": data["seq"]}))
        elif kind == channel.KEYS:
            self.ctx.store.remember([payload[i : i + 16] for i in range(0, len(payload), 16)])
        elif kind == channel.STOP:
            self.stopping.set()

    async def serve(self, fd: int, prefix: bytes) -> None:
        sock = socket.socket(fileno=fd)
        config, state, base = self.config, self.state, self.protocol_class

        def handed_over() -> asyncio.Protocol:
            protocol = base(config=config, server_state=state, app_state={})
            connection_made = protocol.connection_made

            def made(transport: Any) -> None:
                connection_made(transport)
                if prefix:  # the bytes the server read before it handed the connection over
                    protocol.data_received(prefix)

            protocol.connection_made = made  # type: ignore[method-assign]
            return protocol

        try:
            await self.loop.connect_accepted_socket(handed_over, sock)
        except OSError as exc:
            log.debug("ingest worker %d: a handed-over connection failed: %s", self.slot, exc)
            sock.close()

    def send_stats(self) -> None:
        counters, counts, total, n = self.sent
        lat = self.ctx.latency
        grown = self.ctx.counters - counters
        backlog = self.ctx.queue_depth()
        if lat.n - n or grown or backlog != self.backlog:
            delta = {
                "counters": dict(grown),
                "latency": [c - s for c, s in zip(lat.counts, counts, strict=True)],
                "total": lat.total - total,
                "n": lat.n - n,
                "backlog": backlog,
            }
            self.channel.send(channel.STATS, orjson.dumps(delta))
        self.sent = (Counter(self.ctx.counters), list(lat.counts), lat.total, lat.n)
        self.backlog = backlog

    async def run(self) -> None:
        self.channel.send(channel.HELLO, orjson.dumps({"slot": self.slot, "pid": os.getpid()}))
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), STATS_SECONDS)
            except TimeoutError:
                pass
            self.send_stats()
        gone = self.channel.closed  # the server died: stop at once, answer what is in flight
        for connection in list(self.state.connections):
            connection.shutdown()
        deadline = time.monotonic() + (1.0 if gone else STOP_GRACE_SECONDS)
        while self.state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self.ctx.store.close)
        self.send_stats()
        self.channel.send(channel.BYE)
        await asyncio.sleep(0)  # let the channel write


def main(argv: list[str]) -> None:
    slot, folder, channel_fd = int(argv[0]), Path(argv[1]), int(argv[2])
    level = argv[3] if len(argv) > 3 else "INFO"
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {slot}]: %(message)s",
    )
    # The server stops its workers itself (STOP, or the channel closing when it dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        lock = lock_folder(folder, LOCK_WAIT_SECONDS)
    except TimeoutError as exc:
        raise SystemExit(f"ingest worker {slot}: {exc}") from None
    settings = Settings(ingest=IngestSection.model_validate_json(os.environ[SETTINGS_ENV]))

    async def run() -> None:
        await Worker(slot, folder, channel_fd, settings).run()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        asyncio.run(run())
    os.close(lock)


if __name__ == "__main__":
    main(sys.argv[1:])
