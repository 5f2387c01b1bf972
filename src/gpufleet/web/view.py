"""What the overview shows, as plain data: pure functions over a host summary and its sample.

``host_view`` turns ``Context.host_summaries()``'s summary of a host plus its latest sample
into the compact record the overview page draws (and ``/api/v1/overview`` returns, and the
SSE stream pushes): one source of truth for the page, its JSON twin and the live updates.
Quantities keep their base units (bytes, watts, percent); the browser converts for display.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from gpufleet.wire import Gpu, GpuProcess, Sample, gpu_is_free


def gpu_held(gpu: Gpu, processes: list[GpuProcess]) -> bool:
    """A GPU is held when something keeps memory on it (the complement of free, errors aside)."""
    return not gpu.error and not gpu_is_free(gpu, processes)


def next_idle_since(
    idle_since: float | None,
    gpu: Gpu,
    processes: list[GpuProcess],
    ts: float,
    *,
    idle_util_percent: float,
) -> float | None:
    """When a GPU started being held but idle, given the previous answer and a new sample.

    Held (memory or processes on it) and under ``idle_util_percent`` keeps the earlier start
    (or starts now); anything else (busy, free, unknown utilisation, error) clears it.
    """
    util = gpu.utilization_gpu_percent
    if util is None or util >= idle_util_percent or not gpu_held(gpu, processes):
        return None
    return ts if idle_since is None or idle_since > ts else idle_since


class IdleTracker:
    """Per-GPU "held but idle since" from successive samples (fed by the live-state listener)."""

    def __init__(self, idle_util_percent: float) -> None:
        self.idle_util_percent = idle_util_percent
        self.since: dict[str, dict[int, float]] = {}  # host -> GPU index -> idle since

    def observe(self, sample: Sample) -> None:
        before = self.since.get(sample.host, {})
        now: dict[int, float] = {}
        for gpu in sample.gpus:
            start = next_idle_since(
                before.get(gpu.index), gpu, sample.processes, sample.ts,
                idle_util_percent=self.idle_util_percent,
            )  # fmt: skip
            if start is not None:
                now[gpu.index] = start
        if now:
            self.since[sample.host] = now
        else:
            self.since.pop(sample.host, None)

    def of_host(self, host: str) -> dict[int, float]:
        return dict(self.since.get(host, {}))


def _user_name(proc: GpuProcess) -> str:
    if proc.user:
        return proc.user
    return f"uid {proc.uid}" if proc.uid is not None else "unknown"


def gpu_users(processes: list[GpuProcess]) -> dict[int, list[dict[str, Any]]]:
    """Per GPU index: who holds it, with their summed GPU memory, largest first."""
    mem: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for p in processes:
        mem[p.gpu_index][_user_name(p)] += p.gpu_memory_bytes or 0
    return {
        i: [{"user": u, "gpu_memory_bytes": b} for u, b in sorted(m.items(), key=lambda x: -x[1])]
        for i, m in mem.items()
    }


def _main_disk(sample: Sample) -> tuple[int | None, int | None]:
    disks = sample.host_metrics.disks
    if not disks:
        return None, None
    root = next((d for d in disks if d.mount == "/"), None)
    d = root or max(disks, key=lambda d: d.total_bytes)
    return d.used_bytes, d.total_bytes


def host_view(
    summary: dict[str, Any],
    sample: Sample | None,
    idle_since: dict[int, float],
    *,
    idle_after_seconds: float,
) -> dict[str, Any]:
    """The overview's record of one host: its summary plus the numbers its row draws."""
    view = {
        k: summary.get(k)
        for k in (
            "name", "status", "reason", "last_seen", "last_received", "source",
            "agent_version", "interval_seconds", "gpu_count", "free_gpu_count", "gpu_models",
            "errors",
        )
    }  # fmt: skip
    view["group"] = summary.get("group")
    if sample is None:
        view.update(cpu_percent=None, cpu_count=None, load1=None, memory_used_bytes=None,
                    memory_total_bytes=None, disk_used_bytes=None, disk_total_bytes=None,
                    gpus=[], users=[])  # fmt: skip
        return view
    hm = sample.host_metrics
    disk_used, disk_total = _main_disk(sample)
    users = gpu_users(sample.processes)
    gpus = []
    for g in sample.gpus:
        start = idle_since.get(g.index)
        gpus.append({
            "index": g.index,
            "name": g.name,
            "utilization_gpu_percent": g.utilization_gpu_percent,
            "memory_used_bytes": g.memory_used_bytes,
            "memory_total_bytes": g.memory_total_bytes,
            "temperature_celsius": g.temperature_celsius,
            "power_watts": g.power_watts,
            "power_limit_watts": g.power_limit_watts,
            "error": g.error,
            "free": gpu_is_free(g, sample.processes),
            "idle_since": start,
            "idle": start is not None and sample.ts - start >= idle_after_seconds,
            "users": users.get(g.index, []),
        })  # fmt: skip
    view.update(
        cpu_percent=hm.cpu_percent,
        cpu_count=hm.cpu_count or sample.facts.cpu_count,
        load1=hm.load1,
        memory_used_bytes=hm.memory_used_bytes,
        memory_total_bytes=hm.memory_total_bytes or sample.facts.memory_total_bytes,
        disk_used_bytes=disk_used,
        disk_total_bytes=disk_total,
        gpus=gpus,
        users=sorted({u["user"] for us in users.values() for u in us}),
    )
    return view


def fleet_totals(views: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """GPUs in use / free / down (in total and by model) and who holds the most GPUs now.

    A GPU is *down* when its host is offline or the GPU reports an error; *free* when nothing
    holds it; *in use* otherwise. Idle-held GPUs are in use and also counted apart.
    """
    by_model: dict[str, Counter] = defaultdict(Counter)
    holders: Counter = Counter()
    hosts: Counter = Counter()
    for v in views:
        hosts[v["status"]] += 1
        down_host = v["status"] == "offline"
        for g in v["gpus"]:
            c = by_model[g["name"] or "unknown"]
            c["total"] += 1
            if down_host or g["error"]:
                c["down"] += 1
            elif g["free"]:
                c["free"] += 1
            else:
                c["in_use"] += 1
                if g["idle"]:
                    c["idle"] += 1
            if not down_host:
                for u in {u["user"] for u in g["users"]}:
                    holders[u] += 1
    total: Counter = Counter()
    for c in by_model.values():
        total.update(c)
    keys = ("total", "in_use", "free", "down", "idle")
    return {
        "hosts": {s: hosts[s] for s in ("online", "stale", "offline")},
        "gpus": {k: total[k] for k in keys},
        "by_model": [
            {"model": m, **{k: c[k] for k in keys}}
            for m, c in sorted(by_model.items(), key=lambda x: (-x[1]["total"], x[0]))
        ],
        "top_users": [{"user": u, "gpus": n} for u, n in holders.most_common(10)],
    }
