"""The server's side of the ingest workers: start and supervise them, hand them agents'
connections, move their logs into the store.

Handing over: the server's HTTP protocol (``protocol_class``) looks at the first bytes of
each new connection. One that starts with ``POST /api/v1/ingest`` goes, socket and the bytes
already read, to a worker (round robin among those up); everything else, and every
connection while no worker is up, is served by the server as before. An agent keeps its
connection open, so this happens once per agent, not once per batch. A connection the server
kept for ingest (made before any worker was up, e.g. by agents that start with the server, or
while the only worker was being restarted) would stay with it for as long as the agent
pushes; so once a worker is up (``takes_connections``), the server answers an ingest request
on it with ``Connection: close`` (``server/ingest.py``) and the agent's next batch comes on a
new connection, which is handed over.

Moving: a ``Tailer`` per worker folder reads the records a worker has fsync'd (complete ones
only; the last file may be mid-write), publishes them to live state, and hands them to the
store as durable already (``Store.apply_durable``): the worker validated them (they are read
back with ``wire.trusted_batch``, not validated again), logged them (the store does not log
them a second time) and checked their ids (the store's ``batches`` primary key is the only
other check, and makes the move exactly once). A file is deleted once the worker has moved
on to a newer one and everything in it is committed to the database. At start-up, whatever
a previous run's workers left is moved first, each folder's lock held so no old worker can
still be writing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gpufleet.http.context import Context
from gpufleet.server import ingest
from gpufleet.server.workers import channel
from gpufleet.server.workers.logwriter import lock_folder
from gpufleet.server.workers.worker import SETTINGS_ENV
from gpufleet.store import IngestItem, ingestlog
from gpufleet.store.recent import RecentKeys
from gpufleet.store.rows import batch_key

log = logging.getLogger("gpufleet.server.workers")

INGEST_REQUEST = (b"POST /api/v1/ingest ", b"POST /api/v1/ingest?")
# The workers' logs are read when a worker says it logged something, at most every
# TAIL_GAP_SECONDS (so a pass takes what a busy worker logged meanwhile), and at least every
# TAIL_SECONDS. Live state and the store lag acknowledgements by about that gap.
TAIL_GAP_SECONDS = 0.02
TAIL_SECONDS = 1.0
SUPERVISE_SECONDS = 0.5
RESTART_SECONDS = 1.0
STOP_SECONDS = 20.0
TOKEN_SYNC_SECONDS = 3.0
NICE = 10  # how much lower the server's background threads run than its workers


@dataclass
class _Worker:
    slot: int
    folder: Path
    proc: subprocess.Popen | None = None
    channel: channel.Channel | None = None
    up: bool = False
    restarts: int = 0
    backlog: int = 0  # acknowledged batches not in the store yet, as it last said (STATS)
    token_waits: dict[int, asyncio.Future] = field(default_factory=dict)


class Tailer:
    """Moves one worker folder's log into the store (see the module's doc)."""

    def __init__(
        self,
        ctx: Context,
        folder: Path,
        on_moved: Callable[[list[bytes]], None] | None = None,
        published: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.ctx, self.folder = ctx, folder
        self.on_moved = on_moved  # called with the keys of each pass's batches
        # whether live state has a batch already (by key): the server's memory of the batches
        # stored lately, which the workers are told (WorkerPool.recent)
        self.published = published
        self.offsets: dict[Path, int] = {}
        # per file, the store's commits of what was read from it (``Store.apply_durable``)
        self.commits: dict[Path, list[asyncio.Future]] = {}
        self.moved = 0

    async def move(self, final: bool = False) -> int:
        """One pass; ``final`` when no worker writes here any more (then it waits until
        everything read is committed). Raises, when ``final``, if the store fails; otherwise
        a failed commit has its file read again from the start at the next pass (the
        store's primary key keeps what was committed once). Nothing is lost either way: a
        file goes only once all of it is committed."""
        # One pass's commit in flight at a time, as when the store logged the batches itself:
        # a pass every TAIL_GAP_SECONDS while the last one is still being written made many
        # small passes at a steady rate, each with its fixed costs and a KEYS frame to every
        # worker (docs/benchmarks.md, "One ingest path").
        inflight = [c for cs in self.commits.values() for c in cs if not c.done()]
        if inflight:
            await asyncio.wait(inflight)
        files = sorted(self.folder.glob("*.log"))
        moved = 0
        for n, path in enumerate(files):
            finished = final or n < len(files) - 1  # the worker opens a new file last
            commits = self.commits.setdefault(path, [])
            if self._failed(path, commits):
                self.offsets[path] = 0
                commits.clear()
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            payloads, used = ingestlog.complete_records(data)
            items = ingestlog.decode_records(path, payloads)
            if items:
                commits.append(self.ctx.store.apply_durable(items))
                self._publish(items)
                moved += len(items)
            self.offsets[path] = offset + used
            if not finished:
                break
            if final:
                await asyncio.gather(*commits)
            elif not all(c.done() for c in commits) or self._failed(path, commits):
                continue  # deleted at a later pass, once committed
            if used < len(data):
                log.warning(
                    "ingest worker log %s: dropped a torn record at byte %d (written when its "
                    "worker died, never acknowledged)", path, offset + used,
                )  # fmt: skip
            path.unlink()
            del self.offsets[path], self.commits[path]
        self.moved += moved
        return moved

    @staticmethod
    def _failed(path: Path, commits: list[asyncio.Future]) -> bool:
        for c in commits:
            if c.done() and (c.cancelled() or c.exception() is not None):
                log.warning(
                    "ingest: storing batches from %s failed (%s); reading it again",
                    path, "cancelled" if c.cancelled() else c.exception(),
                )  # fmt: skip
                return True
        return False

    def _publish(self, items: list[IngestItem]) -> None:
        """Live state learns the batches it has not had yet (one logged by two workers, or
        read again after a failed commit or a restart, is published once), and the workers
        their ids."""
        keys = [batch_key(item.batch.batch_id).bytes for item in items]
        seen: set[bytes] = set()
        for item, key in zip(items, keys, strict=True):
            if key in seen or (self.published is not None and self.published(key)):
                continue
            seen.add(key)
            ingest.publish(
                self.ctx, item.batch, item.token_name, item.received_at, item.clock_skew_seconds
            )
        if self.on_moved is not None:
            self.on_moved(keys)


async def move_leftovers(
    ctx: Context,
    root: Path,
    on_moved: Callable[[list[bytes]], None] | None = None,
    published: Callable[[bytes], bool] | None = None,
) -> int:
    """Move what a previous run's workers logged under ``root`` (any slot, also when this run
    starts none), each folder locked so no old worker is still writing there."""
    total = 0
    if not root.is_dir():
        return total
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(folder.glob("*.log")):
            continue
        fd = await asyncio.to_thread(lock_folder, folder)
        try:
            moved = await Tailer(ctx, folder, on_moved, published).move(final=True)
        finally:
            os.close(fd)
        total += moved
        log.info("ingest: moved %d batch(es) a previous run's worker left in %s", moved, folder)
    return total


class WorkerPool:
    def __init__(self, ctx: Context, count: int, root: Path, log_level: str = "INFO") -> None:
        self.ctx, self.count, self.root, self.log_level = ctx, count, root, log_level
        self.workers = [_Worker(slot, root / str(slot)) for slot in range(count)]
        self.recent = RecentKeys()  # batches stored lately, which every worker is told
        self.tailers = [
            Tailer(ctx, w.folder, self._moved, self.recent.__contains__) for w in self.workers
        ]
        self.handed_over = 0
        self._next = 0
        self._seq = 0
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._reniced: set[int] = set()  # thread ids given a lower priority
        self._here: list[bytes] = []  # keys of batches the server stored itself, to tell
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.root.mkdir(parents=True, exist_ok=True)
        since = time.time() - self.recent.window
        self.recent.add(await asyncio.to_thread(self.ctx.store.batch_keys_since, since))
        await move_leftovers(self.ctx, self.root, self._moved, self.recent.__contains__)
        for w in self.workers:
            w.folder.mkdir(parents=True, exist_ok=True)
            self._spawn(w)
        self.ctx.tokens.listeners.append(self._tokens_changed)
        self._tasks = [
            asyncio.create_task(self._tail_forever()),
            asyncio.create_task(self._supervise_forever()),
        ]
        log.info("ingest: %d worker process(es) take agents' connections", self.count)

    async def stop(self) -> None:
        """Stop the workers (they finish what is in flight), then move the rest of their logs."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for w in self.workers:
            w.up = False
            if w.channel is not None:
                w.channel.send(channel.STOP)
        deadline = time.monotonic() + STOP_SECONDS
        for w in self.workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                log.warning("ingest worker %d did not stop in time; killing it", w.slot)
                w.proc.kill()
                await asyncio.to_thread(w.proc.wait)
            await asyncio.sleep(0)  # its last frames (counters)
            if w.channel is not None:
                w.channel.close()
        for tailer in self.tailers:
            try:
                await tailer.move(final=True)
            except Exception:
                log.exception(
                    "ingest: moving %s failed; it is moved at the next start", tailer.folder
                )
        moved = sum(t.moved for t in self.tailers)
        log.info("ingest: workers stopped; %d batch(es) came through them", moved)

    def _spawn(self, w: _Worker) -> None:
        assert self.loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, SETTINGS_ENV: self.ctx.settings.ingest.model_dump_json()}
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet.server.workers.worker", str(w.slot), str(w.folder),
             str(theirs.fileno()), self.log_level],
            pass_fds=[theirs.fileno()], env=env,
        )  # fmt: skip
        theirs.close()
        w.up = False
        w.channel = channel.Channel(
            ours, self.loop, functools.partial(self._on_frame, w), functools.partial(self._lost, w)
        )
        w.channel.send(channel.TOKENS, self._tokens_payload())  # before any connection
        w.channel.send(channel.KEYS, b"".join(self.recent.keys()))

    def _yield_to_workers(self) -> None:
        """Run the server's threads but the event loop's (the store's writer and applier,
        DuckDB's, the thread pool's) at a lower CPU priority than the workers: moving data
        into the database may lag by seconds, an acknowledgement should not wait for it."""
        loop_thread = threading.get_native_id()
        try:
            threads = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:  # not Linux: no per-thread priorities
            return
        for tid in threads:
            if tid == loop_thread or tid in self._reniced:
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
            except OSError:
                continue
            self._reniced.add(tid)

    async def _supervise_forever(self) -> None:
        while True:
            self._yield_to_workers()
            await asyncio.sleep(SUPERVISE_SECONDS)
            for w in self.workers:
                if w.proc is None or w.proc.poll() is None or self._stopping:
                    continue
                w.up = False
                if w.channel is not None:
                    w.channel.close()
                w.restarts += 1
                log.warning(
                    "ingest worker %d (pid %d) exited with status %s; the server takes its "
                    "agents until it is restarted", w.slot, w.proc.pid, w.proc.returncode,
                )  # fmt: skip
                await asyncio.sleep(RESTART_SECONDS)
                if not self._stopping:
                    self._spawn(w)

    async def _tail_forever(self) -> None:
        failures = 0
        while True:
            try:
                for tailer in self.tailers:
                    await tailer.move()
                failures = 0
            except Exception:
                failures += 1
                if failures == 1:
                    log.exception(
                        "ingest: moving the workers' logs into the store failed; retrying"
                    )
            if failures:
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            await asyncio.sleep(TAIL_GAP_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TAIL_SECONDS)
            self._wake.clear()

    def _moved(self, keys: list[bytes]) -> None:
        self.recent.add(keys)
        payload = b"".join(keys)
        for w in self.workers:
            if w.channel is not None:
                w.channel.send(channel.KEYS, payload)

    def stored_here(self, batch_id: str) -> None:
        """The server stored a batch itself (a connection it kept: one made before the
        workers were up, or while one was down): the workers learn its key, in one frame per
        turn of the event loop, so a re-send through them is answered "duplicate"."""
        self._here.append(batch_key(batch_id).bytes)
        if len(self._here) == 1 and self.loop is not None:
            self.loop.call_soon(self._send_here)

    def _send_here(self) -> None:
        keys, self._here = self._here, []
        self._moved(keys)

    # -- frames --------------------------------------------------------------------------

    def _on_frame(self, w: _Worker, kind: int, payload: bytes, fd: int | None) -> None:
        if kind == channel.LOGGED:
            self._wake.set()
        elif kind == channel.HELLO:
            w.up = not self._stopping
            log.info("ingest worker %d is up (pid %s)", w.slot, orjson.loads(payload)["pid"])
        elif kind == channel.STATS:
            stats = orjson.loads(payload)
            w.backlog = stats.get("backlog", w.backlog)
            self._merge_stats(stats)
        elif kind == channel.TOKENS_OK:
            waiter = w.token_waits.pop(orjson.loads(payload)["seq"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == channel.BYE:
            w.up = False
        if fd is not None:  # workers never send descriptors
            os.close(fd)

    def _lost(self, w: _Worker) -> None:
        w.up = False
        for waiter in w.token_waits.values():
            if not waiter.done():
                waiter.set_result(None)
        w.token_waits.clear()

    def _merge_stats(self, stats: dict[str, Any]) -> None:
        self.ctx.counters.update(Counter(stats["counters"]))
        latency = self.ctx.latency
        for i, count in enumerate(stats["latency"]):
            latency.counts[i] += count
        latency.total += stats["total"]
        latency.n += stats["n"]

    # -- tokens --------------------------------------------------------------------------

    def _tokens_payload(self) -> bytes:
        self._seq += 1
        tokens = [asdict(t) for t in self.ctx.tokens.records()]
        return orjson.dumps({"seq": self._seq, "tokens": tokens})

    def _tokens_changed(self) -> None:
        """A token was made or revoked: every worker knows before this returns (when called
        off the event loop, as the admin API's handlers are), so a revoked token is refused
        everywhere from then on."""
        assert self.loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.loop.create_task(self._sync_tokens())
            return
        future = asyncio.run_coroutine_threadsafe(self._sync_tokens(), self.loop)
        try:
            future.result(timeout=TOKEN_SYNC_SECONDS + 1)
        except Exception:
            log.warning("ingest: a worker did not confirm the new token list in time")

    async def _sync_tokens(self) -> None:
        payload = self._tokens_payload()
        seq = self._seq
        waits = []
        for w in self.workers:
            if w.channel is None or w.channel.closed:
                continue
            w.channel.send(channel.TOKENS, payload)
            waiter = asyncio.get_running_loop().create_future()
            w.token_waits[seq] = waiter
            waits.append(waiter)
        if waits:
            await asyncio.wait(waits, timeout=TOKEN_SYNC_SECONDS)

    # -- connections ---------------------------------------------------------------------

    def hand_over(self, transport: Any, data: bytes) -> bool:
        """Give a new connection (its first bytes ``data``) to a worker; False if none took it."""
        up = [w for w in self.workers if w.up and w.channel is not None]
        if not up:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        for _ in range(len(up)):
            w = up[self._next % len(up)]
            self._next += 1
            assert w.channel is not None
            if w.channel.send_conn(sock.fileno(), data):
                self.handed_over += 1
                return True
        return False

    def takes_connections(self) -> bool:
        """Whether a new connection would be handed to a worker (one is up)."""
        return any(w.up and w.channel is not None for w in self.workers)

    def status(self) -> dict[str, Any]:
        return {
            "configured": self.count,
            "up": sum(w.up for w in self.workers),
            "restarts": sum(w.restarts for w in self.workers),
            "connections_handed_over": self.handed_over,
            "backlog": sum(w.backlog for w in self.workers if w.up),
        }


def protocol_class(app: Any) -> type:
    """uvicorn's HTTP protocol, handing agents' ingest connections to ``app.state.ingest_workers``
    (a started :class:`WorkerPool`) when there is one."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HandsOverIngest(HttpToolsProtocol):
        _first = True

        def data_received(self, data: bytes) -> None:
            if self._first:
                self._first = False
                pool = getattr(app.state, "ingest_workers", None)
                if (
                    pool is not None
                    and data.startswith(INGEST_REQUEST)
                    and pool.hand_over(self.transport, data)
                ):
                    self.transport.close()
                    return
            super().data_received(data)

    return HandsOverIngest


__all__ = ["WorkerPool", "move_leftovers", "protocol_class"]
