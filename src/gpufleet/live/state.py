"""Live state: the latest sample of every host, in memory, and each host's status.

``host_status`` is a pure function of the last contact time and the clock, so the API, the
dashboard and alerts agree on what "stale" and "offline" mean.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufleet.store import HostRecord
from gpufleet.wire import Sample, gpu_is_free


def host_status(
    last_received: float,
    interval_seconds: float,
    now: float,
    *,
    stale_after_intervals: float = 3.0,
    offline_after_seconds: float = 60.0,
) -> str:
    age = now - last_received
    stale_after = max(stale_after_intervals * interval_seconds, 10.0)
    offline_after = max(offline_after_seconds, 2 * stale_after)
    if age <= stale_after:
        return "online"
    if age <= offline_after:
        return "stale"
    return "offline"


@dataclass
class HostState:
    name: str
    source: str
    token_name: str | None
    first_seen: float
    last_seen: float  # the newest sample's timestamp (agent clock)
    last_received: float  # when the server last heard from this host (server clock)
    interval_seconds: float
    agent_version: str | None
    clock_skew_seconds: float | None
    sample: Sample

    def summary(self, now: float, status_cfg: dict[str, float]) -> dict[str, Any]:
        gpus = self.sample.gpus
        free = sum(1 for g in gpus if gpu_is_free(g, self.sample.processes))
        return {
            "name": self.name,
            "status": host_status(self.last_received, self.interval_seconds, now, **status_cfg),
            "last_seen": self.last_seen,
            "last_received": self.last_received,
            "seconds_since_contact": round(max(now - self.last_received, 0.0), 3),
            "source": self.source,
            "token_name": self.token_name,
            "agent_version": self.agent_version,
            "interval_seconds": self.interval_seconds,
            "gpu_count": len(gpus),
            "free_gpu_count": free,
            "gpu_models": sorted({g.name for g in gpus if g.name}),
            "clock_skew_seconds": self.clock_skew_seconds,
            "errors": list(self.sample.errors),
            "reason": None,  # why the host is not reporting, when known
        }


@dataclass
class LiveState:
    status_cfg: dict[str, float] = field(default_factory=dict)
    hosts: dict[str, HostState] = field(default_factory=dict)
    listeners: list[Callable[[HostState], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, records: list[HostRecord]) -> None:
        for r in records:
            self.hosts[r.name] = HostState(
                r.name, r.source, r.token_name, r.first_seen, r.last_seen, r.last_received,
                r.interval_seconds, r.agent_version, r.clock_skew_seconds,
                Sample.model_validate(r.last_sample),
            )  # fmt: skip

    def update(
        self,
        sample: Sample,
        *,
        source: str,
        token_name: str | None,
        received_at: float,
        agent_version: str | None,
        clock_skew_seconds: float | None,
    ) -> HostState:
        with self._lock:
            st = self.hosts.get(sample.host)
            if st is None:
                st = HostState(
                    sample.host, source, token_name, sample.ts, sample.ts, received_at,
                    sample.interval_seconds, agent_version, clock_skew_seconds, sample,
                )  # fmt: skip
                self.hosts[sample.host] = st
            else:
                st.last_received = max(st.last_received, received_at)
                st.source, st.token_name = source, token_name
                st.agent_version, st.clock_skew_seconds = agent_version, clock_skew_seconds
                st.first_seen = min(st.first_seen, sample.ts)
                if sample.ts >= st.last_seen:  # a late (spooled) sample never hides a newer one
                    st.last_seen, st.sample = sample.ts, sample
                    st.interval_seconds = sample.interval_seconds
        for listener in list(self.listeners):
            listener(st)
        return st

    def summaries(
        self, now: float, polls: dict[str, dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Every host's summary. ``polls`` is the SSH poller's status: an agent-less host that
        cannot be reached is listed (offline) with the reason, even before its first sample."""
        out = {n: st.summary(now, self.status_cfg) for n, st in self.hosts.items()}
        for name, poll in (polls or {}).items():
            reason = None if poll.get("ok") or poll.get("last_poll") is None else poll.get("reason")
            if name in out:
                out[name]["reason"] = reason
            else:
                out[name] = unseen_summary(name, "ssh", reason or "waiting for the first poll")
        return [out[n] for n in sorted(out)]


def unseen_summary(name: str, source: str, reason: str) -> dict[str, Any]:
    """A configured host that has never delivered a sample."""
    return {
        "name": name, "status": "offline", "last_seen": None, "last_received": None,
        "seconds_since_contact": None, "source": source, "token_name": None,
        "agent_version": None, "interval_seconds": None, "gpu_count": 0, "free_gpu_count": 0,
        "gpu_models": [], "clock_skew_seconds": None, "errors": [], "reason": reason,
    }  # fmt: skip
