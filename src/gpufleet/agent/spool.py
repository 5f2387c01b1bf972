"""Durable spool: every batch is on local disk before it is sent, and leaves only when the
server acknowledged it (or rejected it for good, when it is moved to ``rejected/``).

One file per batch, ``<seq>-<batch_id>.json[.gz]``, written to a temporary name, fsynced and
renamed, so a crash leaves either the whole file or none. Files are sent oldest first. The
spool is bounded by size and age: past a bound the oldest batches are dropped, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{16})-([A-Za-z0-9._:-]+)\.json$")


class Spool:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 256 * 2**20,
        max_age_seconds: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = Path(directory)
        self.rejected_dir = self.dir / "rejected"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self.dropped = 0  # batches dropped past the bounds since start
        self._lock = threading.Lock()
        self.changed = threading.Event()
        for stale in self.dir.glob("*.tmp"):  # a crash mid-write: the batch was never spooled
            stale.unlink(missing_ok=True)
        # name -> (size, mtime) of every spooled file, oldest first
        self._files: dict[str, tuple[int, float]] = {}
        for p in sorted(self.dir.iterdir()):
            if _NAME.match(p.name):
                st = p.stat()
                self._files[p.name] = (st.st_size, st.st_mtime)
        self._seq = int(next(reversed(self._files))[:16]) if self._files else 0
        self._bytes = sum(size for size, _ in self._files.values())

    def __len__(self) -> int:
        return len(self._files)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, batch_id: str, payload: bytes) -> Path:
        """Write one batch durably; returns its path once it is safely on disk."""
        with self._lock:
            self._seq += 1
            name = f"{self._seq:016d}-{batch_id}.json"
            final = self.dir / name
            tmp = self.dir / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self.dir)
            self._files[name] = (len(payload), self.clock())
            self._bytes += len(payload)
            self._enforce_bounds()
        self.changed.set()
        return final

    def oldest(self) -> tuple[Path, bytes] | None:
        with self._lock:
            for name in self._files:
                path = self.dir / name
                try:
                    return path, path.read_bytes()
                except FileNotFoundError:  # removed behind our back: forget it
                    self._forget(name)
                    break
        return None

    def ack(self, path: Path) -> None:
        """The server has the batch: remove it."""
        with self._lock:
            path.unlink(missing_ok=True)
            self._forget(path.name)

    def reject(self, path: Path, reason: str) -> None:
        """The server will never accept this batch: keep it aside for a human, stop resending."""
        with self._lock:
            self.rejected_dir.mkdir(exist_ok=True)
            os.replace(path, self.rejected_dir / path.name)
            (self.rejected_dir / (path.name + ".reason")).write_text(reason + "\n")
            self._forget(path.name)
        log.error("spool: the server rejected %s for good (%s); kept in %s",
                  path.name, reason, self.rejected_dir)  # fmt: skip

    def _forget(self, name: str) -> None:
        size, _ = self._files.pop(name, (0, 0.0))
        self._bytes -= size

    def _enforce_bounds(self) -> None:
        now = self.clock()
        dropped = []
        while len(self._files) > 1:
            name, (_size, mtime) = next(iter(self._files.items()))
            if self._bytes <= self.max_bytes and now - mtime <= self.max_age_seconds:
                break
            (self.dir / name).unlink(missing_ok=True)
            self._forget(name)
            dropped.append(name)
        if dropped:
            self.dropped += len(dropped)
            log.warning(
                "spool: over its bound (%d bytes max, %.0f s max age): dropped the %d oldest "
                "batch(es), %s .. %s; is the server reachable?",
                self.max_bytes, self.max_age_seconds, len(dropped), dropped[0], dropped[-1],
            )  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
