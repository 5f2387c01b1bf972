"""The group-commit loop every writer thread runs: the embedded store's, PostgreSQL's, and each
ingest worker's log writer.

A writer takes tasks from its queue one at a time. Batches (*items*) are gathered into a group
and committed together (one transaction, or one fsync'd log append), so that many agents
sending at once cost one commit, not one each. A group gathers for at most ``window`` seconds
after the previous commit (an item that comes after a quiet spell is committed at once), and
at most ``max_group`` items. Any other task (a write, a read's sync, a shutdown) runs in its
turn: items queued before it are committed first, unless the task says it need not wait for
them (``splits``). ``STOP`` ends the loop after what is gathered is committed.

The writer's own work lives in its hooks: ``commit(group)``, ``run(task)``, and optionally
``idle_seconds()`` (how long to wait for a task before ``on_idle()`` is due; None: wait for
ever) and ``after_round()`` (after each group or run of tasks: hand-offs, flushes, rotation).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

from gpufleet.store.base import STOP

Task = tuple[Any, ...]


def _nothing() -> None:
    return None


def run(
    tasks: queue.Queue,
    *,
    is_item: Callable[[Task], bool],
    commit: Callable[[list[Task]], None],
    run_task: Callable[[Task], None],
    window: Callable[[], float],
    max_group: int,
    splits: Callable[[Task], bool] = lambda task: True,
    idle_seconds: Callable[[], float | None] = _nothing,
    on_idle: Callable[[], None] = _nothing,
    after_round: Callable[[], None] = _nothing,
) -> None:
    """Run the loop on this thread until ``STOP`` is taken from ``tasks``."""
    next_commit = 0.0  # monotonic time before which the next group keeps gathering
    while True:
        wait = idle_seconds()
        try:
            task = tasks.get() if wait is None else tasks.get(timeout=wait)
        except queue.Empty:
            on_idle()
            continue
        group: list[Task] = []
        stop = False
        while True:
            if task is STOP:
                stop = True
                break
            if is_item(task):
                group.append(task)
                if len(group) >= max_group:
                    break
            else:
                if group and splits(task):
                    commit(group)
                    group = []
                run_task(task)
            left = next_commit - time.monotonic() if group else 0.0
            try:
                task = tasks.get(timeout=left) if left > 0 else tasks.get_nowait()
            except queue.Empty:
                break
        if group:
            next_commit = time.monotonic() + window()
            commit(group)
        after_round()
        if stop:
            return
