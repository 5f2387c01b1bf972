"""Turn wire samples into columns of the raw-tier tables. Pure; shared by every backend."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gpufleet.store.base import IngestItem
from gpufleet.wire import Sample

HOST_COLUMNS = (
    "host", "ts", "interval_seconds", "cpu_percent", "load1", "load5", "load15",
    "memory_total_bytes", "memory_used_bytes", "memory_available_bytes",
    "swap_total_bytes", "swap_used_bytes", "disk_total_bytes", "disk_used_bytes",
    "net_rx_bytes_per_second", "net_tx_bytes_per_second", "uptime_seconds",
    "users", "gpus", "errors",
)  # fmt: skip
GPU_COLUMNS = (
    "host", "ts", "gpu_index", "uuid", "name", "utilization_gpu_percent",
    "utilization_memory_percent", "memory_used_bytes", "memory_total_bytes",
    "temperature_celsius", "power_watts", "power_limit_watts", "fan_percent",
    "sm_clock_hertz", "pstate", "ecc_uncorrected_volatile", "xid_events", "processes", "error",
)  # fmt: skip
PROCESS_COLUMNS = (
    "host", "ts", "gpu_index", "pid", "user_name", "uid", "command", "started_at",
    "gpu_memory_bytes", "container_id", "container_name",
)  # fmt: skip
DISK_COLUMNS = ("host", "ts", "mount", "total_bytes", "used_bytes")
XID_COLUMNS = ("host", "ts", "gpu_index", "xid")

TABLE_COLUMNS = {
    "host_samples": HOST_COLUMNS,
    "gpu_samples": GPU_COLUMNS,
    "process_samples": PROCESS_COLUMNS,
    "disk_samples": DISK_COLUMNS,
    "xid_events": XID_COLUMNS,
}


def batch_key(batch_id: str) -> uuid.UUID:
    """A fixed-size key for a batch id (128-bit hash), cheap to index and compare."""
    return uuid.UUID(bytes=hashlib.blake2b(batch_id.encode(), digest_size=16).digest())


# A raw sample's identity: (host, sample time). Raw tiers hold one sample per key.
SampleKey = tuple[str, float]
# Split the sample times of one write into ranges wherever they are this far apart, so that
# a drained spool's old samples do not widen the range the existing-key lookup scans.
KEY_RANGE_GAP_SECONDS = 3600.0


def unique_samples(
    items: Iterable[IngestItem], stored: Callable[[list[SampleKey]], set[SampleKey]]
) -> list[Sample]:
    """The samples of ``items`` to write: one per (host, sample time). The first copy wins:
    one already stored (``stored`` says which of the keys the database has), else the first
    in ``items`` order. A sample re-sent under a new batch id is so stored once, and every
    tier and report counts it once (the rule both backends use)."""
    samples = [s for item in items for s in item.batch.samples]
    keys = [(s.host, s.ts) for s in samples]
    seen = stored(keys) if keys else set()
    if not seen and len(set(keys)) == len(keys):
        return samples
    out = []
    for smp, key in zip(samples, keys, strict=True):
        if key not in seen:
            seen.add(key)
            out.append(smp)
    return out


def key_ranges(keys: Sequence[SampleKey]) -> list[tuple[float, float, list[SampleKey]]]:
    """The keys grouped into (lowest ts, highest ts, keys) runs of nearby sample times, for
    a lookup that scans only the stored samples in each run's time range."""
    ordered = sorted(keys, key=lambda k: k[1])
    runs: list[tuple[float, float, list[SampleKey]]] = []
    for key in ordered:
        if runs and key[1] - runs[-1][1] <= KEY_RANGE_GAP_SECONDS:
            lo, _, members = runs[-1]
            members.append(key)
            runs[-1] = (lo, key[1], members)
        else:
            runs.append((key[1], key[1], [key]))
    return runs


def flatten(samples: Iterable[Sample]) -> dict[str, dict[str, list]]:
    """Columns for each raw table, ready to become an Arrow table."""
    cols: dict[str, dict[str, list]] = {
        table: {c: [] for c in columns} for table, columns in TABLE_COLUMNS.items()
    }
    h, g, p, d, x = (cols[t] for t in TABLE_COLUMNS)
    for s in samples:
        m = s.host_metrics
        disks = m.disks
        values: tuple[Any, ...] = (
            s.host, s.ts, s.interval_seconds, m.cpu_percent, m.load1, m.load5, m.load15,
            m.memory_total_bytes, m.memory_used_bytes, m.memory_available_bytes,
            m.swap_total_bytes, m.swap_used_bytes,
            sum(dk.total_bytes for dk in disks) if disks else None,
            sum(dk.used_bytes for dk in disks) if disks else None,
            m.net_rx_bytes_per_second, m.net_tx_bytes_per_second, m.uptime_seconds,
            len(m.users), len(s.gpus), "\n".join(s.errors) or None,
        )  # fmt: skip
        value: Any
        for column, value in zip(HOST_COLUMNS, values, strict=True):
            h[column].append(value)
        for dk in disks:
            for column, value in zip(
                DISK_COLUMNS, (s.host, s.ts, dk.mount, dk.total_bytes, dk.used_bytes), strict=True
            ):
                d[column].append(value)
        procs_per_gpu: dict[int, int] = {}
        for pr in s.processes:
            procs_per_gpu[pr.gpu_index] = procs_per_gpu.get(pr.gpu_index, 0) + 1
            values = (
                s.host, s.ts, pr.gpu_index, pr.pid, pr.user, pr.uid, pr.command, pr.started_at,
                pr.gpu_memory_bytes, pr.container_id, pr.container_name,
            )  # fmt: skip
            for column, value in zip(PROCESS_COLUMNS, values, strict=True):
                p[column].append(value)
        for gpu in s.gpus:
            values = (
                s.host, s.ts, gpu.index, gpu.uuid or None, gpu.name or None,
                gpu.utilization_gpu_percent, gpu.utilization_memory_percent,
                gpu.memory_used_bytes, gpu.memory_total_bytes, gpu.temperature_celsius,
                gpu.power_watts, gpu.power_limit_watts, gpu.fan_percent, gpu.sm_clock_hertz,
                gpu.pstate, gpu.ecc_uncorrected_volatile, len(gpu.xid_events),
                procs_per_gpu.get(gpu.index, 0), gpu.error,
            )  # fmt: skip
            for column, value in zip(GPU_COLUMNS, values, strict=True):
                g[column].append(value)
            for ev in gpu.xid_events:
                for column, value in zip(
                    XID_COLUMNS, (s.host, ev.ts, gpu.index, ev.xid), strict=True
                ):
                    x[column].append(value)
    return cols


def note_host(pending: dict[str, list], item: IngestItem, smp: Sample) -> None:
    """Fold one stored sample into ``pending`` (host -> its ``hosts`` row, the newest Sample in
    the last place): what a backend's writer upserts into ``hosts`` at its next flush."""
    row = pending.get(smp.host)
    agent_version = item.batch.agent_version or smp.facts.agent_version or None
    if row is None:
        pending[smp.host] = [
            smp.host, item.batch.source, item.token_name, smp.ts, smp.ts, item.received_at,
            smp.interval_seconds, agent_version, item.clock_skew_seconds, smp,
        ]  # fmt: skip
        return
    row[1], row[2], row[7], row[8] = (
        item.batch.source,
        item.token_name,
        agent_version,
        item.clock_skew_seconds,
    )
    row[3] = min(row[3], smp.ts)
    row[5] = max(row[5], item.received_at)
    if smp.ts >= row[4]:  # a late (spooled) sample never hides a newer one
        row[4], row[6], row[9] = smp.ts, smp.interval_seconds, smp
