"""The narrow interface every store backend implements (DuckDB embedded; PostgreSQL later).

Ingest, the API, reports and the UI talk to this interface only, never to a driver.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import queue
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.wire import Batch

# Metrics a series can be asked for: name -> (table, column, unit). GPU metrics are per GPU.
HOST_SERIES = {
    "cpu_percent": "percent",
    "load1": "",
    "load5": "",
    "load15": "",
    "memory_used_bytes": "bytes",
    "memory_available_bytes": "bytes",
    "swap_used_bytes": "bytes",
    "disk_used_bytes": "bytes",
    "net_rx_bytes_per_second": "bytes/s",
    "net_tx_bytes_per_second": "bytes/s",
}
GPU_SERIES = {
    "utilization_gpu_percent": "percent",
    "utilization_memory_percent": "percent",
    "memory_used_bytes": "bytes",
    "temperature_celsius": "celsius",
    "power_watts": "watts",
    "fan_percent": "percent",
    "sm_clock_hertz": "hertz",
}
SERIES_METRICS: dict[str, tuple[str, str, str]] = {
    **{f"host.{k}": ("host_samples", k, u) for k, u in HOST_SERIES.items()},
    **{f"gpu.{k}": ("gpu_samples", k, u) for k, u in GPU_SERIES.items()},
}


@dataclass(frozen=True)
class IngestItem:
    batch: Batch
    token_name: str
    received_at: float
    clock_skew_seconds: float
    raw: bytes | None = None  # the batch's JSON as received, when there is one (saves a dump)


@dataclass(frozen=True)
class HostRecord:
    name: str
    source: str
    token_name: str | None
    first_seen: float
    last_seen: float
    last_received: float
    interval_seconds: float
    agent_version: str | None
    clock_skew_seconds: float | None
    last_sample: dict[str, Any]

    @classmethod
    def from_row(cls, row: Sequence[Any], last_sample: dict[str, Any]) -> HostRecord:
        """From the ``hosts`` table's first nine columns (in field order) and the sample."""
        return cls(*row[:9], last_sample=last_sample)  # type: ignore[misc]


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    secret_sha256: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str  # a gpufleet.accounts.passwords string, never the password
    role: str  # viewer | user | admin
    created_at: float
    last_login: float | None


@dataclass(frozen=True)
class SeriesPoints:
    key: int | None  # GPU index for GPU metrics, None for host metrics
    points: list[tuple[float, float | None]]


class StoreError(RuntimeError):
    """The store cannot do what was asked (and nothing was changed)."""


STOP: Any = object()  # the last item a writer's queue takes: the writer finishes and exits


class WriterQueue(queue.Queue):
    """A writer thread's work queue that refuses work once ``STOP`` is in it.

    Without this, a write queued after the stop (a rollup or prune still running on a thread
    when the server shuts down) waits forever for a writer that has exited, and so does
    whatever joins that thread. Putting ``STOP`` closes the queue in the same step, under the
    queue's own lock, so every put lands before the stop (and is done) or raises."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def _put(self, item: Any) -> None:  # called by put() under the queue's lock
        if self.closed:
            raise StoreError("the store is closed (the server is stopping)")
        if item is STOP:
            self.closed = True
        super()._put(item)


class Store(abc.ABC):
    """All writes go through one writer (``submit``/``write``); reads may run on any thread."""

    @abc.abstractmethod
    def submit(self, item: IngestItem) -> concurrent.futures.Future[bool]:
        """Queue a batch; the future resolves after commit: True stored, False a duplicate."""

    async def ingest(self, item: IngestItem) -> bool:
        """``submit`` for a caller on an event loop: True stored, False a duplicate."""
        return await asyncio.wrap_future(self.submit(item))

    def apply_durable(self, items: Sequence[IngestItem]) -> asyncio.Future[Any]:
        """Store batches that are durable elsewhere already (an ingest worker's fsync'd log,
        where they stay until this resolves), for a caller on an event loop; queued at once.
        Unlike ``ingest``, no dedupe memory is asked and nothing is logged again: the
        ``batches`` primary key keeps each batch once. Resolves (None) once they are in the
        database; raises if the store fails (nothing partial: the caller tries again)."""
        return asyncio.gather(*(asyncio.wrap_future(self.submit(item)) for item in items))

    _queue: WriterQueue  # the writer's work queue; every backend has one writer thread

    def queue_depth(self) -> int:
        """Writes waiting for the writer (ingest answers 503 past ``ingest.max_queue``)."""
        return self._queue.qsize()

    @abc.abstractmethod
    def hosts(self) -> list[HostRecord]: ...

    @abc.abstractmethod
    def series(
        self, host: str, metric: str, since: float, until: float, max_points: int = 1000
    ) -> list[SeriesPoints]: ...

    @abc.abstractmethod
    def create_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    def tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def revoke_token(self, name: str, at: float) -> TokenRecord:
        """Revoke by name; raises StoreError when there is no such live token."""

    @abc.abstractmethod
    def prune(self, raw_before: float, batches_before: float) -> dict[str, int]:
        """Drop raw rows older than ``raw_before`` and dedupe keys older than ``batches_before``."""

    @abc.abstractmethod
    def batch_keys_since(self, since: float) -> list[bytes]:
        """The keys (16 bytes) of the batches received since ``since`` (ingest workers'
        dedupe memory at start-up)."""

    @abc.abstractmethod
    def count(self, table: str) -> int: ...

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- web accounts (gpufleet.accounts) -------------------------------------------------------

    @abc.abstractmethod
    def users(self) -> list[UserRecord]: ...

    @abc.abstractmethod
    def create_user(self, user: UserRecord) -> None:
        """Raises StoreError when a user of that name exists."""

    @abc.abstractmethod
    def update_user(
        self,
        name: str,
        *,
        role: str | None = None,
        password_hash: str | None = None,
        last_login: float | None = None,
    ) -> UserRecord:
        """Change the given fields; raises StoreError when there is no such user."""

    @abc.abstractmethod
    def delete_user(self, name: str) -> None:
        """Raises StoreError when there is no such user."""

    # -- usage warehouse (gpufleet.reports; docs/warehouse.md) ------------------------------------
    # Not abstract: a backend without a warehouse says so with a StoreError.

    def rollup(
        self,
        *,
        now: float,
        tz: str,
        busy_util_percent: float,
        from_ts: float | None = None,
        to_ts: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Roll raw samples up into the tiers: without a range, every completed hour since the
        watermark plus the hours late samples touched; with one, those hours (a backfill).
        Idempotent. ``progress(done_hours, total_hours)`` is called after each chunk."""
        raise StoreError("this store has no usage warehouse")

    def insert_raw(self, columns: Mapping[str, Mapping[str, Any]]) -> int:
        """Bulk-write raw-tier rows given as columns (a backfill; see DuckDBStore)."""
        raise StoreError("this store has no bulk path for raw samples")

    def prune_tiers(self, minute_before: float, hour_before: float) -> dict[str, int]:
        """Drop minute and hour tier rows older than the given times (the day tier stays)."""
        raise StoreError("this store has no usage warehouse")

    def report_facts(
        self,
        *,
        tier: str,
        by: str,
        buckets: list[tuple[int, str]],
        busy_util_percent: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Additive fact rows (period_start, key, facts...) for a report. tier 'day': buckets
        are local day starts; 'hour' and 'raw': UTC hour starts; each mapped to a period label."""
        raise StoreError("this store has no usage warehouse")

    def warehouse_state(self) -> dict[str, str]:
        """Rollup state: watermark_ts, raw_kept_from_ts, day_tz, and when late samples wait
        for the next rollup late_from_ts (the first such hour) and late_hours (as text)."""
        raise StoreError("this store has no usage warehouse")

    def user_mapping(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(Unix user, person, group, e-mail address) for every mapped user."""
        raise StoreError("this store has no usage warehouse")

    def set_user_mapping(
        self, user_name: str, person: str | None, group_name: str | None, email: str | None = None
    ) -> None:
        """Map a Unix user to a person, a group and an e-mail address (all None: forget)."""
        raise StoreError("this store has no usage warehouse")
