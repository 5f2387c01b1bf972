"""What the routes share: settings, the store, live state, token cache and counters."""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gpufleet.config import Settings
from gpufleet.http.auth import TokenCache
from gpufleet.live.state import LiveState
from gpufleet.store import Store


class Histogram:
    """A cumulative latency histogram (Prometheus buckets, seconds)."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass
class Context:
    settings: Settings
    store: Store
    live: LiveState
    tokens: TokenCache
    admin_key: str
    started_at: float = field(default_factory=time.time)
    counters: Counter = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)
    poller: Any = None  # gpufleet.poller.service.SshPoller when ssh.hosts is configured
    ingest_workers: Any = None  # gpufleet.server.workers.pool.WorkerPool when started

    def host_summaries(self, now: float) -> list[dict[str, Any]]:
        polls = self.poller.status() if self.poller is not None else None
        return self.live.summaries(now, polls)

    def queue_depth(self) -> int:
        return self.store.queue_depth()

    def ingest_workers_status(self) -> dict[str, Any]:
        """The ingest workers (gpufleet.server.workers): configured, up, restarts, connections
        handed over, backlog (batches they acknowledged that are not in the store yet)."""
        if self.ingest_workers is None:
            return {
                "configured": 0, "up": 0, "restarts": 0, "connections_handed_over": 0,
                "backlog": 0,
            }  # fmt: skip
        return self.ingest_workers.status()
