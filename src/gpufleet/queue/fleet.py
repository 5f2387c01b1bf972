"""The fleet as the live queue sees it: plain data built from live state at the server's edge, and
the ``ClusterSpec`` of the scheduling core made from it.

A GPU is *busy* when its last sample shows a process or memory in use (``wire.gpu_is_free``, the
rule the overview and the recommender use); the queue never places a job on a busy GPU that is
not its own, so the memory a GPU already holds is never overcommitted. A host that is not
online has all its GPUs busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.sched.cluster import ClusterSpec, Host
from gpufleet.sched.gpumodels import default_table


@dataclass(frozen=True)
class FleetGpu:
    index: int
    memory_total_bytes: int
    memory_used_bytes: int | None = None
    busy: bool = False


@dataclass(frozen=True)
class FleetHost:
    name: str
    gpu_model: str  # the table's name where known ("a100"), else the reported name normalised
    gpus: tuple[FleetGpu, ...]
    online: bool = True


def model_name(reported: str) -> str:
    """``"NVIDIA A100-SXM4-80GB"`` -> the GPU table's name for it, else the reported name."""
    found = default_table().find(reported) if reported else None
    if found is not None:
        return found.name
    return reported.strip().lower() or "gpu"


def speed_of(gpu_model: str) -> float:
    """Throughput relative to a V100 (the GPU table; 1.0 for a model it does not know)."""
    found = default_table().find(gpu_model)
    return found.speed_vs_v100 if found is not None and found.speed_vs_v100 > 0 else 1.0


def fleet_from_live(hosts: Mapping[str, Any], statuses: Mapping[str, str]) -> list[FleetHost]:
    """From the server's live state (``LiveState.hosts``: name -> HostState with ``.sample``)
    and each host's status (online/stale/offline)."""
    from gpufleet.wire import gpu_is_free

    out = []
    for name in sorted(hosts):
        sample = hosts[name].sample
        if not sample.gpus:
            continue
        gpus = tuple(
            FleetGpu(
                g.index,
                int(g.memory_total_bytes or 0),
                g.memory_used_bytes,
                not gpu_is_free(g, sample.processes),
            )
            for g in sorted(sample.gpus, key=lambda g: g.index)
        )
        first = next((g.name for g in sample.gpus if g.name), "")
        out.append(FleetHost(name, model_name(first), gpus, statuses.get(name) == "online"))
    return out


def cluster_spec(fleet: Iterable[FleetHost]) -> ClusterSpec:
    """One ``Host`` per fleet host (in the given order); its GPU memory is its smallest GPU's."""
    hosts: list[Host] = []
    for host in fleet:
        memory = min((g.memory_total_bytes for g in host.gpus), default=0)
        hosts.append(Host(len(hosts), host.name, host.gpu_model, len(host.gpus), memory))
    return ClusterSpec(tuple(hosts))


def shape(fleet: Iterable[FleetHost]) -> tuple[tuple[str, str, int, int], ...]:
    """What the cluster spec depends on (a change means a new spec)."""
    return tuple(
        (h.name, h.gpu_model, len(h.gpus), min((g.memory_total_bytes for g in h.gpus), default=0))
        for h in fleet
    )
