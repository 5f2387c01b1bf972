"""Read a dispatcher's events into a list, and wait for one with a generous deadline (no
wall-clock assertion: the deadline only stops a test that would otherwise hang). The same
interface as ``tests/queue/dispatch_helpers.py`` (written in parallel for the SSH and local
dispatchers: ``Recorder.wait``/``wait_end``/``of``/``kinds``, ``drive``), so either serves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gpufleet.queue.dispatch.base import DispatchEvent, EventKind

DEADLINE_SECONDS = 180.0


class Recorder:
    """The one consumer of ``dispatcher.events()``, started by ``async with``."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.events: list[DispatchEvent] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _read(self) -> None:
        async for event in self.dispatcher.events():
            self.events.append(event)
            self._changed.set()

    def of(self, job_id: str) -> list[DispatchEvent]:
        return [e for e in self.events if e.job_id == job_id]

    def kinds(self, job_id: str) -> list[EventKind]:
        return [e.kind for e in self.of(job_id)]

    async def wait(self, job_id: str, kind: EventKind) -> DispatchEvent:
        """The first ``kind`` event of ``job_id``."""
        return await self._first(job_id, lambda e: e.kind is kind, kind.value)

    async def wait_end(self, job_id: str) -> DispatchEvent:
        """The ending of ``job_id``: its first event other than STARTED."""
        return await self._first(job_id, lambda e: e.kind is not EventKind.STARTED, "ending")

    async def _first(
        self, job_id: str, match: Callable[[DispatchEvent], bool], what: str
    ) -> DispatchEvent:
        async def seen() -> DispatchEvent:
            while True:
                for event in self.of(job_id):
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(seen(), DEADLINE_SECONDS)
        except TimeoutError:
            raise AssertionError(
                f"no {what} event for {job_id} within {DEADLINE_SECONDS:.0f} s; "
                f"saw {self.of(job_id)}"
            ) from None


def drive(make: Callable[[], Any], body: Callable[[Any, Recorder], Awaitable[None]]) -> None:
    """Run ``body(dispatcher, recorder)`` in a fresh event loop between ``start`` and ``close``."""

    async def main() -> None:
        dispatcher = make()
        await dispatcher.start()
        try:
            async with Recorder(dispatcher) as rec:
                await body(dispatcher, rec)
        finally:
            await dispatcher.close()

    asyncio.run(main())
