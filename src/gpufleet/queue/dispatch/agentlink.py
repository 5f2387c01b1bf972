"""One live channel to a host's supervisor agent (``supervisor.py agent``): requests and their
replies, exit events pushed by the agent, and reconnection when the channel drops.

The channel itself comes from an *opener* (a local subprocess, or a process on an SSH
connection); the link only speaks the agent's JSON-lines protocol over it. While the link is
down it retries with backoff; once it has been down for ``host_down_after_seconds`` it calls
``on_host_down`` once per outage (the dispatcher's documented host-down rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gpufleet.queue.dispatch.base import DispatchError

log = logging.getLogger(__name__)

Json = dict[str, Any]


class AgentChannel(Protocol):
    """A byte pipe to one running agent."""

    async def send(self, data: bytes) -> None: ...

    async def readline(self) -> bytes:
        """One line, or ``b""`` once the agent has gone."""
        ...

    async def error_text(self) -> str:
        """What the agent or its transport printed on stderr (for a failed start)."""
        ...

    def close(self) -> None: ...


Opener = Callable[[], Awaitable[AgentChannel]]


class AgentLink:
    """Requests to one agent; its exit events go to ``on_event(link, message)``."""

    def __init__(
        self,
        name: str,
        opener: Opener,
        *,
        on_event: Callable[[AgentLink, Json], None],
        on_up: Callable[[AgentLink], None],
        on_host_down: Callable[[AgentLink, str], None],
        request_timeout_seconds: float = 60.0,
        connect_timeout_seconds: float = 15.0,
        host_down_after_seconds: float = 60.0,
        retry_max_seconds: float = 10.0,
    ) -> None:
        self.name = name
        self._opener = opener
        self._on_event = on_event
        self._on_up = on_up
        self._on_host_down = on_host_down
        self.request_timeout_seconds = request_timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.host_down_after_seconds = host_down_after_seconds
        self.retry_max_seconds = retry_max_seconds
        self.connects = 0  # agent channels opened (tests check reuse)
        self.last_error = ""
        self.down_since: float | None = None  # monotonic time of the outage's start
        self._channel: AgentChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[Json]] = {}
        self._next_id = 0
        self._closed = False
        self._failed_at: float | None = None

    @property
    def up(self) -> bool:
        return self._channel is not None

    async def ensure(self) -> None:
        """Open the channel unless it is open; raise :class:`DispatchError` saying why not."""
        if self._channel is not None:
            return
        asked = time.monotonic()
        async with self._lock:
            if self._channel is not None:
                return
            if self._closed:
                raise DispatchError(f"host {self.name}: the dispatcher is closed")
            if self._failed_at is not None and self._failed_at >= asked:
                # An attempt made while we waited has just failed: say so, do not queue up
                # behind one more connect timeout per waiting request.
                raise DispatchError(f"host {self.name} down: {self.last_error}")
            try:
                async with asyncio.timeout(self.connect_timeout_seconds):
                    channel = await self._opener()
                    try:
                        hello = await self._hello(channel)
                    except BaseException:
                        channel.close()
                        raise
            except DispatchError as exc:
                self._mark_down(str(exc))
                raise
            except TimeoutError:
                why = f"no answer within {self.connect_timeout_seconds:g} s"
                self._mark_down(why)
                raise DispatchError(f"host {self.name} down: {why}") from None
            if not hello.startswith(b'{"hello"'):
                detail = (hello.decode(errors="replace") + await channel.error_text()).strip()
                channel.close()
                why = f"the supervisor agent did not start: {detail[:500] or 'no output'}"
                self._mark_down(why)
                raise DispatchError(f"host {self.name}: {why}")
            self._channel = channel
            self.connects += 1
            self.down_since = None
            self._reader = asyncio.create_task(self._read(channel), name=f"agent:{self.name}")
        self._on_up(self)

    @staticmethod
    async def _hello(channel: AgentChannel) -> bytes:
        """The agent's first line, past what a chatty login shell may print before it."""
        noise = b""
        for _ in range(100):
            line = await channel.readline()
            if not line or line.startswith(b'{"hello"'):
                return line or noise
            noise += line
        return noise

    async def request(self, op: str, **fields: Any) -> Json:
        """Send one request and wait for its reply (a failed one raises DispatchError)."""
        await self.ensure()
        channel = self._channel
        if channel is None:
            raise DispatchError(f"host {self.name} down: {self.last_error}")
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await channel.send((json.dumps({"id": rid, "op": op, **fields}) + "\n").encode())
            async with asyncio.timeout(self.request_timeout_seconds):
                reply = await future
        except TimeoutError:
            self._lost(channel, f"no reply to {op} within {self.request_timeout_seconds:g} s")
            raise DispatchError(f"host {self.name}: no reply to {op}") from None
        except (OSError, ConnectionError) as exc:
            self._lost(channel, f"send failed: {exc}")
            raise DispatchError(f"host {self.name} down: {exc}") from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise DispatchError(f"host {self.name}: {op} failed: {reply.get('error')}")
        return reply

    async def _read(self, channel: AgentChannel) -> None:
        why = "the agent's channel closed"
        try:
            while True:
                line = await channel.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("agent on %s said: %r", self.name, line[:200])
                    continue
                if "event" in message:
                    self._on_event(self, message)
                    continue
                future = self._pending.get(message.get("id"))
                if future is not None and not future.done():
                    future.set_result(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a transport error is a lost channel, never a crash
            why = f"{type(exc).__name__}: {exc}"
        self._lost(channel, why)

    def _lost(self, channel: AgentChannel, why: str) -> None:
        if self._channel is not channel:
            return
        self._channel = None
        channel.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DispatchError(f"host {self.name} down: {why}"))
        self._mark_down(why)
        log.info("agent channel to %s lost: %s", self.name, why)

    def _mark_down(self, why: str) -> None:
        self.last_error = why
        self._failed_at = time.monotonic()
        if self.down_since is None:
            self.down_since = time.monotonic()
        if not self._closed and (self._retry is None or self._retry.done()):
            self._retry = asyncio.create_task(self._reconnect(), name=f"agent-retry:{self.name}")

    async def _reconnect(self) -> None:
        delay = 0.2
        reported = False
        while not self._closed and self._channel is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_seconds)
            try:
                await self.ensure()
                return
            except DispatchError:
                pass
            since = self.down_since
            if not reported and since is not None and self.down_long(since):
                reported = True
                self._on_host_down(self, self.last_error)

    def down_long(self, since: float) -> bool:
        """Whether an outage that began at ``since`` has passed the host-down grace."""
        return time.monotonic() - since >= self.host_down_after_seconds

    async def close(self) -> None:
        self._closed = True
        for task in (self._retry, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DispatchError(f"host {self.name}: dispatcher closed"))
