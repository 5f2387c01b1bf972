"""The report API's answers, kept while the tiers they were read from stay the same.

A report over closed days reads tiers that do not change once rolled up, unless late samples
arrive for those days or retention drops them (or a user mapping changes who is who). Each
such write notes the span of time it changed and bumps the tiers' version in the store's
warehouse state (``gpufleet.store.warehouse.note_tiers_changed``); an answer is kept with
the version and the span it read, and handed out again only while no change since touched
that span (``tiers_changed_since``). The state is the store's, so a rollup by another
process sharing the database invalidates as well. What moves on while a closed period's
figures stay (the watermark, the late hours waiting, ``query_ms``) is not kept: it is
written into each answer as it is sent (``answer``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gpufleet.store.warehouse import tiers_changed_since, tiers_version

MAX_BYTES = 64 << 20  # all answers kept together; the least recently asked go first
VOLATILE = ("rolled_up_until", "late_hours_waiting", "query_ms")


@dataclass
class Entry:
    version: int  # the tiers' version the answer was read at (or found unchanged since)
    span: tuple[float, float]  # [lo, hi) Unix seconds: the buckets it read
    body: bytes  # the answer without its VOLATILE members (JSON), or the CSV text
    media_type: str
    headers: dict[str, str]


class ReportCache:
    """Answers by request key, at most ``max_bytes`` of them; safe across threads."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, state: Mapping[str, str]) -> Entry | None:
        """The answer kept for ``key`` if no change to the tiers since touched its span
        (``state``: the warehouse state read now)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if tiers_changed_since(dict(state), entry.version, *entry.span):
                self._drop(key)
                return None
            entry.version = tiers_version(dict(state))  # still true at the newer version
            self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        size = len(entry.body)
        if size > self.max_bytes // 4:  # one huge answer would push out every other
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: Hashable) -> None:
        self._bytes -= len(self._entries.pop(key).body)


def split(report: Mapping[str, Any]) -> bytes:
    """A report as JSON without its VOLATILE members (what a cache keeps)."""
    return orjson.dumps({k: v for k, v in report.items() if k not in VOLATILE})


def answer(body: bytes, volatile: Mapping[str, Any]) -> bytes:
    """A kept JSON answer with the VOLATILE members of now (they come first)."""
    head = orjson.dumps(dict(volatile))
    if body == b"{}" or head == b"{}":
        return head if body == b"{}" else body
    return head[:-1] + b"," + body[1:]
