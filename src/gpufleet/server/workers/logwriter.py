"""An ingest worker's store: each batch appended to the worker's own ingest log, fsync'd, and
only then acknowledged; the server moves the log into its store (``pool.Tailer``).

The log is the embedded store's format (gpufleet.store.ingestlog), one folder per worker
slot. A new file is started every ``ROTATE_SECONDS`` while batches come, so the server can
delete what it has moved. A batch id acknowledged by this worker in the last few minutes is
acknowledged again as a duplicate and not logged; a copy sent through another worker is
logged by both and stored once (the store's primary key), its second acknowledgement then
saying "stored". The server tells every worker the ids of the batches it stored lately
(``remember``), so a batch re-sent through another worker, or after a restart, is answered
"duplicate" too, unless it comes within the few milliseconds before the server has moved
the first copy. A batch older than that memory (a spool drained after days) is logged and
the store's primary key keeps it once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpufleet.store import IngestItem, StoreError, groupcommit, ingestlog
from gpufleet.store.base import STOP
from gpufleet.store.recent import RecentKeys
from gpufleet.store.rows import batch_key
from gpufleet.store.waiters import Waiter, settle

log = logging.getLogger(__name__)

MAX_GROUP = 512  # batches in one append
LOG_WINDOW_SECONDS = 0.005  # a group gathers for at most this long after the last fsync
ROTATE_SECONDS = 1.0
_KEYS = object()


def lock_folder(folder: Path, wait: float = 30.0) -> int:
    """Hold ``folder/lock`` (an open descriptor; closing it lets go): the worker writing to
    ``folder`` holds it for its life, so a successor, or the server moving what is left,
    waits for a predecessor to be gone. Raises ``TimeoutError`` after ``wait`` seconds."""
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"{folder}/lock is still held by another process") from None
            time.sleep(0.05)


class LogWriter:
    """``ingest(item)`` -> True (logged) or False (a duplicate); one writer thread."""

    def __init__(self, folder: Path, on_logged: Callable[[], None] | None = None) -> None:
        self._on_logged = on_logged  # called (on the writer thread) after each append
        self._log = ingestlog.IngestLog(folder)  # its leftovers are the server's to move
        self._queue: queue.Queue[Any] = queue.Queue()
        self._recent = RecentKeys()
        # rotated files the server has not moved (deleted) yet, with their record counts:
        # with the current file's, the back-pressure figure (``queue_depth``)
        self._unmoved_files: dict[Path, int] = {}
        self._unmoved = 0
        self._thread = threading.Thread(target=self._run, name="worker-log", daemon=True)
        self._thread.start()

    async def ingest(self, item: IngestItem) -> bool:
        waiter = Waiter.here()
        self._queue.put((item, waiter))
        return await waiter.future

    def remember(self, keys: list[bytes]) -> None:
        """Batch keys the server has stored: a re-sent copy is a duplicate."""
        self._queue.put((_KEYS, keys))

    def queue_depth(self) -> int:
        """Batches acknowledged or waiting here that are not in the store yet (ingest answers
        503 past ``ingest.max_queue``, as the server does for its own writer): a server that
        falls behind slows its workers' agents down instead of filling the disk."""
        return self._queue.qsize() + self._unmoved + self._log.records

    def close(self) -> None:
        """Log what is queued, close the log (a file with nothing in it is removed)."""
        self._queue.put(STOP)
        self._thread.join()

    def _run(self) -> None:
        opened = time.monotonic()

        def rotate_when_due() -> None:
            nonlocal opened
            if time.monotonic() - opened < ROTATE_SECONDS:
                return
            records = self._log.records
            old = self._log.rotate()  # the server deletes it once it has moved it
            if old is not None:
                self._unmoved_files[old] = records
            opened = time.monotonic()
            self._unmoved_files = {p: n for p, n in self._unmoved_files.items() if p.exists()}
            self._unmoved = sum(self._unmoved_files.values())

        groupcommit.run(
            self._queue,
            is_item=lambda task: task[0] is not _KEYS,
            commit=self._append,
            run_task=lambda task: self._recent.add(task[1]),
            splits=lambda task: False,  # news of stored keys need not wait for the group
            window=lambda: LOG_WINDOW_SECONDS,
            max_group=MAX_GROUP,
            idle_seconds=lambda: ROTATE_SECONDS,
            on_idle=rotate_when_due,
            after_round=rotate_when_due,
        )
        self._log.close()

    def _append(self, group: list[tuple[IngestItem, Waiter]]) -> None:
        now = time.time()
        fresh, seen = [], set()
        for item, _ in group:
            key = batch_key(item.batch.batch_id).bytes
            fresh.append(key not in self._recent and key not in seen)
            seen.add(key)
        try:
            records = [
                ingestlog.encode(item) for (item, _), f in zip(group, fresh, strict=True) if f
            ]
            if records:
                self._log.append(records)
                if self._on_logged is not None:
                    self._on_logged()
        except Exception as exc:
            log.exception("ingest log append failed; %d batch(es) not acknowledged", len(group))
            failure = StoreError(f"ingest log write failed: {exc}")
            settle([(waiter, None, failure) for _, waiter in group])
            try:
                self._log.restart()
            except OSError:
                log.exception("cannot start a new ingest log file")
            return
        self._recent.add(seen, now)
        settle([(waiter, f, None) for (_, waiter), f in zip(group, fresh, strict=True)])
