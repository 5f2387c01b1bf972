"""The batch ids acknowledged in the last few minutes, in memory: the embedded store's
dedupe check for a batch that cannot be older than that.

Why: asking the database whether a batch id is already stored costs a query in the ingest
writer's path for every group, and that query waits while the ingest log is being moved into
the same table (measured: the writer stalled up to a second behind the move, and every
acknowledgement with it). A batch *made* within the last ``window`` seconds can only have
been received before within that window, so if its id is not in this memory it is new; only
a batch that looks older (a spool drained after an outage) is checked against the database.

"Made" is the batch's oldest sample time. That is the agent's clock: the server cannot tell a
clock that runs behind from a batch that waited in a spool (the agent stamps ``sent_at`` once,
when it makes the batch). An agent whose clock runs behind only sends its batches down the
slower database check; one whose clock runs ahead by more than ``margin`` could have a batch
re-sent after the window taken for new. Either way the database stores a batch once (its id
is the primary key): at worst that acknowledgement says "stored" for a duplicate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from gpufleet.store.base import IngestItem

RECENT_SECONDS = 300.0  # how long an acknowledged batch id is remembered
RECENT_MARGIN_SECONDS = 120.0  # a batch made this close to the window's edge is checked


class RecentKeys:
    """Keys (16-byte batch keys) added in the last ``window`` seconds, kept in buckets of
    ``bucket`` seconds so that forgetting is cheap. Not thread-safe: one owner thread."""

    def __init__(self, window: float = RECENT_SECONDS, bucket: float = 30.0) -> None:
        self.window, self.bucket = window, bucket
        self._buckets: deque[tuple[float, set[bytes]]] = deque()  # (bucket start, keys)

    def __contains__(self, key: bytes) -> bool:
        return any(key in keys for _, keys in self._buckets)

    def __len__(self) -> int:
        return sum(len(keys) for _, keys in self._buckets)

    def keys(self) -> list[bytes]:
        return [key for _, keys in self._buckets for key in keys]

    def add(self, keys: Iterable[bytes], now: float | None = None) -> None:
        now = time.time() if now is None else now
        while self._buckets and self._buckets[0][0] + self.bucket < now - self.window:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] + self.bucket <= now:
            self._buckets.append((now, set()))
        self._buckets[-1][1].update(keys)

    def made_within(self, item: IngestItem, now: float, margin: float) -> bool:
        """Whether every sample of ``item`` was made recently enough that any earlier copy
        of it was received within the window (see the module's doc)."""
        return min(s.ts for s in item.batch.samples) >= now - self.window + margin
