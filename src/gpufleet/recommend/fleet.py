"""A snapshot of the fleet as the recommender sees it: plain frozen data, no I/O.

The server builds one from its live state (``gpufleet.recommend.service.snapshot_from_live``);
the evaluation harness builds one from its simulated fleet; tests build them by hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

GIB = 2**30
DRIVER_RESERVE_BYTES = GIB  # the most of a card's memory counted as never available

GpuStateName = Literal["free", "taken", "reserved", "error"]


@dataclass(frozen=True, slots=True)
class GpuSnap:
    index: int
    name: str  # GPU model as NVML reports it
    memory_total_bytes: int | None
    state: GpuStateName
    memory_used_bytes: int | None = None
    util_percent: float | None = None
    temperature_celsius: float | None = None
    held_since: float | None = None  # the oldest process on it started then (taken GPUs)
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSnap:
    name: str
    gpus: tuple[GpuSnap, ...]
    status: str = "online"  # online | stale | offline (gpufleet.live.state.host_status)
    load1: float | None = None
    cpu_count: int | None = None
    disk_free_bytes: int | None = None  # the largest data mount's free space
    alerts: tuple[str, ...] = ()  # open problems on the host (collection errors, ...)

    @property
    def online(self) -> bool:
        return self.status == "online"

    def free_count(self) -> int:
        return sum(1 for g in self.gpus if g.state == "free")


@dataclass(frozen=True)
class FleetSnap:
    now: float
    hosts: tuple[HostSnap, ...]

    def host_names(self) -> set[str]:
        return set(self.shapes)

    def gpu_names(self) -> set[str]:
        return {name for kinds in self.shapes.values() for name, _ in kinds if name}

    @cached_property
    def shapes(self) -> dict[str, Counter[tuple[str, int | None]]]:
        """Per host, how many GPUs of each (model, total memory): what request validation
        needs, computed once per snapshot."""
        return {h.name: Counter((g.name, g.memory_total_bytes) for g in h.gpus) for h in self.hosts}

    @cached_property
    def floor_used(self) -> dict[tuple[str, int | None], int]:
        """Per GPU shape, what a request can never have of that card: the least memory in use
        on any such GPU now (driver and context), counted up to ``DRIVER_RESERVE_BYTES`` (more
        than that is a job's, which ends)."""
        out: dict[tuple[str, int | None], int] = {}
        for h in self.hosts:
            for g in h.gpus:
                key = (g.name, g.memory_total_bytes)
                used = min(g.memory_used_bytes or 0, DRIVER_RESERVE_BYTES)
                out[key] = min(out.get(key, used), used)
        return out

    def largest_gpu_bytes(self) -> int:
        return max((g.memory_total_bytes or 0 for h in self.hosts for g in h.gpus), default=0)

    def most_gpus_on_a_host(self) -> int:
        return max((len(h.gpus) for h in self.hosts), default=0)

    def total_gpus(self) -> int:
        return sum(len(h.gpus) for h in self.hosts)


def with_reserved(fleet: FleetSnap, reserved: set[tuple[str, int]]) -> FleetSnap:
    """The snapshot with these free GPUs marked ``reserved`` (answers given moments ago whose
    job has not started yet); hosts without any are shared, not copied."""
    if not reserved:
        return fleet
    hosts = []
    for h in fleet.hosts:
        if any((h.name, g.index) in reserved and g.state == "free" for g in h.gpus):
            gpus = tuple(replace(g, state="reserved")
                         if (h.name, g.index) in reserved and g.state == "free" else g
                         for g in h.gpus)  # fmt: skip
            hosts.append(replace(h, gpus=gpus))
        else:
            hosts.append(h)
    return FleetSnap(fleet.now, tuple(hosts))


@dataclass
class RecentAnswers:
    """The recommender's memory of its own answers: the GPUs it sent someone to a moment ago
    are not offered to the next asker until that job had time to start (set-up plus the data
    copy) or shows up as held. Only what the live system knows: its own answers."""

    held: dict[tuple[str, int], float] = field(default_factory=dict)  # (host, gpu) -> until

    def add(self, host: str, gpus: tuple[int, ...], until: float) -> None:
        for g in gpus:
            self.held[(host, g)] = until

    def active(self, now: float) -> set[tuple[str, int]]:
        for key in [k for k, t in self.held.items() if t <= now]:
            del self.held[key]
        return set(self.held)
