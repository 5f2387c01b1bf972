"""Acknowledging many event-loop waiters from a writer thread with one wake-up per loop.

A writer thread (the embedded store's, an ingest worker's log writer) settles a whole group
of batches at once: one ``call_soon_threadsafe`` per event loop instead of a thread-safe
future and a call into the loop per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any


class Waiter:
    """An event loop's future waiting on a writer thread."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self.loop, self.future = loop, future

    @classmethod
    def here(cls) -> Waiter:
        """A waiter for the running event loop."""
        loop = asyncio.get_running_loop()
        return cls(loop, loop.create_future())


def settle(outcomes: list[tuple[Any, Any, BaseException | None]]) -> None:
    """Resolve waiters (thread-safe futures, or :class:`Waiter`) with a value or an error;
    the event-loop ones in one call per loop."""
    per_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for waiter, value, error in outcomes:
        if isinstance(waiter, Waiter):
            per_loop.setdefault(waiter.loop, []).append((waiter.future, value, error))
        else:
            resolve(waiter, value, error)
    for loop, items in per_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_in_loop, items)


def resolve(future: concurrent.futures.Future, value: Any, error: BaseException | None) -> None:
    """Resolve a thread-safe future from a writer thread. One its waiter gave up on (cancelled:
    the request timed out, the client went away) is left as it is: raising here would kill the
    writer thread, and with it every later write."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _settle_in_loop(items: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, value, error in items:
        if future.done():  # cancelled: the client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
