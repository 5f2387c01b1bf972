"""The demo's past: weeks or months of history for the replay fleet, written on first start.

The same trace placement as the live fleet (:class:`~gpufleet.demo.replay.Replay`: the same
fleet, users, job kinds, first-fit crowding) is played at real speed over the last ``days``
before now, so a wall-clock hour of the past is an hour of the trace on the same hour of the
week. Every ``step_seconds`` (default 300 s) each simulated host gets a sample: GPU
utilisation, memory, power, temperature and clocks of each GPU, one process row per job
process (user, command, container, memory) and the host's CPU, memory, disks and network,
following the same rules as :class:`~gpufleet.demo.simhost.SimHost` (vectorised with numpy
instead of going through the agent's collector, which would take hours for months of
samples). The rows go into the raw tier through the store's bulk path
(``Store.insert_raw``: the ingest code's Arrow insert) and are rolled up by the store's own
``rollup``, exactly as live data is; then the live fleet takes over at now.

What is simplified against the live fleet: one sample per ``step_seconds`` (the sample's
weight), no flaky GPU or offline host in the past, GPU temperatures at their steady state.
"""

from __future__ import annotations

import math
import random
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpufleet.demo.fleet import HostSpec, JobType
from gpufleet.demo.replay import Job, Replay
from gpufleet.demo.simhost import idle_memory_bytes
from gpufleet.philly import TraceJob
from gpufleet.store.base import Store

DAY = 86400.0
WEEK = 7 * DAY
GIB = 2**30
MIB = 2**20
CHUNK_DAYS = 7  # rows generated and written per store transaction


@dataclass
class HistoryReport:
    """What was written and how long each part took (seconds)."""

    days: float
    hosts: int
    gpus: int
    step_seconds: float
    jobs: int = 0
    host_rows: int = 0
    gpu_rows: int = 0
    process_rows: int = 0
    rows: int = 0
    generate_seconds: float = 0.0
    store_seconds: float = 0.0  # waiting for the store's writes (overlaps generation)
    rollup_seconds: float = 0.0
    total_seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the whole process meanwhile (every thread)

    def line(self) -> str:
        return (
            f"{self.days:g} days of history for {self.hosts} hosts ({self.gpus} GPUs, "
            f"{self.jobs:,} jobs, a sample every {self.step_seconds:g} s: {self.rows:,} rows) "
            f"written and rolled up in {self.total_seconds:.1f} s (generate "
            f"{self.generate_seconds:.1f} s, store {self.store_seconds:.1f} s, rollup "
            f"{self.rollup_seconds:.1f} s; {self.cpu_seconds:.1f} CPU-s: on a busy machine "
            "the wall time follows the CPU it got)"
        )


def gpu_uuid(seed: int, host: str, index: int) -> str:
    """The GPU's UUID, the same as the live simulated host reports (SimHost)."""
    return f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'{seed}/{host}/{index}')}"


def trace_start_for(trace: list[TraceJob], wall_from: float, span: float = 0.0) -> float:
    """The trace time a history of ``span`` seconds starts at: as late as lets it end a week
    before the trace does (the trace's first weeks are sparse: a short history should not
    show an empty fleet), but not in the trace's first week; moved to the same hour of the
    week as ``wall_from``."""
    base = max(trace[0].submit + WEEK, trace[-1].submit - WEEK - span - WEEK)
    return base + ((wall_from - base) % WEEK)


def job_utilisation(job: Job, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GPU utilisation (0..100) of a job at trace times ``t`` (SimHost's ``_job_util``, for
    many samples at once)."""
    kind: JobType = job.kind
    n = len(t)
    if kind.idle:  # a notebook: now and then a cell runs
        busy = rng.random(n) < 0.12
        return np.where(busy, np.clip(rng.normal(kind.util, kind.util_sd, n), 0, 100), 0.0)
    age = t - job.start
    u = np.full(n, kind.util, dtype=np.float64)
    if kind.epoch_seconds:
        u = np.where(age % kind.epoch_seconds > kind.epoch_seconds * 0.9, u * 0.35, u)
    u = u + 6 * np.sin(age / 300.0 + job.seed % 7)
    u = np.clip(rng.normal(u, kind.util_sd), 0, 100)
    duration = job.trace.duration
    u = np.where(age < min(120.0, duration * 0.05), rng.uniform(0, 15, n), u)
    if job.stalls_at is not None:
        u = np.where(age > job.stalls_at * duration, 0.0, u)
    return u


def _strings(indices: np.ndarray, values: list[str]) -> pa.Array:
    """A string column from indices into ``values`` (cheap for many repeated strings)."""
    dictionary = pa.array(values, type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), dictionary).cast(
        pa.string()
    )


def _nullable(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """NaN becomes NULL ("not available")."""
    return pa.array(values, type=dtype, from_pandas=True)


class _HostState:
    """What carries over from one chunk to the next for one host."""

    def __init__(self, spec: HostSpec, seed: int, wall_from: float) -> None:
        rng = np.random.default_rng([seed, spec.index, 7])
        py = random.Random(f"history:{seed}:{spec.name}")
        self.spec = spec
        # What the driver reserves is drawn as the live simulated host draws it (so the later
        # draws stay in step) but not kept: it is not used memory as the agent reads it (v2).
        idle_memory_bytes(py, spec.gpu_count)
        self.uuids = [gpu_uuid(seed, spec.name, i) for i in range(spec.gpu_count)]
        self.ambient = float(rng.uniform(24, 34))
        self.boot = wall_from - float(rng.uniform(2, 120)) * DAY
        root = 2 * 10**12 if spec.gpu_count == 8 else 10**12
        data = spec.shape.data_disk_bytes
        self.disks = [("/", root, True), ("/data", data, True), ("/home", 200 * 10**12, False)]
        self.disk_used = [root * rng.uniform(0.25, 0.6), data * rng.uniform(0.4, 0.8), 142e12]


class HistoryWriter:
    """Generates the history chunk by chunk (``chunks``) as raw-tier columns."""

    def __init__(
        self,
        specs: list[HostSpec],
        trace: list[TraceJob],
        *,
        wall_from: float,
        wall_to: float,
        step_seconds: float = 300.0,
        seed: int = 0,
        load: float = 0.6,
    ) -> None:
        if step_seconds <= 0 or wall_to <= wall_from:
            raise ValueError("the history needs a positive step and span")
        self.specs = specs
        self.seed = seed
        self.step = float(step_seconds)
        self.wall0 = math.ceil(wall_from / self.step) * self.step
        self.steps = max(0, math.ceil((wall_to - self.wall0) / self.step))
        self.trace0 = trace_start_for(trace, self.wall0, self.steps * self.step)
        self.replay = Replay(specs, trace, seed=seed, start=self.trace0, load=load)
        # Copies per trace job for ``load`` over the whole span (the live fleet's Replay
        # sizes it on its first week; over months the trace's busy weeks would swamp it).
        span = self.steps * self.step
        window = [j.gpu_time for j in trace if self.trace0 <= j.submit < self.trace0 + span
                  and j.num_gpus <= self.replay.max_gpus]  # fmt: skip
        if window and span > 0:
            self.replay.multiplicity = load * self.replay.capacity / (sum(window) / span)
        self._new: list[Job] = list(self.replay.jobs.values())  # running at the start
        self.replay.on_start = self._started
        self._running: list[Job] = []
        self.jobs = 0
        self.hosts = [_HostState(s, seed, self.wall0) for s in specs]
        self.host_names = [s.name for s in specs]
        users = sorted({u for us in self.replay.users.values() for u in us}, key=lambda u: u.name)
        self.user_index = {u.name: i for i, u in enumerate(users)}
        self.user_names = [u.name for u in users]

    def _started(self, job: Job) -> None:
        self._new.append(job)

    def chunks(
        self, chunk_days: float = CHUNK_DAYS
    ) -> Iterator[tuple[dict[str, dict[str, Any]], int, int]]:
        """Yield (columns by table, steps done, total steps) for each chunk of the history."""
        per = max(1, int(chunk_days * DAY // self.step))
        for k0 in range(0, self.steps, per):
            k1 = min(self.steps, k0 + per)
            yield self._chunk(k0, k1), k1, self.steps

    def _chunk(self, k0: int, k1: int) -> dict[str, dict[str, Any]]:
        step, r = self.step, self.replay
        r.advance(self.trace0 + (k1 - 1) * step)
        self._running.extend(self._new)
        self.jobs += len(self._new)
        self._new = []
        t_lo = self.trace0 + k0 * step
        self._running = [j for j in self._running if j.end > t_lo]
        by_host: dict[int, list[Job]] = {}
        for job in self._running:
            by_host.setdefault(job.host, []).append(job)
        ks = np.arange(k0, k1)
        wall = self.wall0 + ks * step
        trace_t = self.trace0 + ks * step
        parts: dict[str, list[dict[str, Any]]] = {
            t: [] for t in ("host_samples", "gpu_samples", "process_samples", "disk_samples")
        }
        for h in self.hosts:
            self._host(h, by_host.get(h.spec.index, []), k0, wall, trace_t, parts)
        return {table: _concat(chunks) for table, chunks in parts.items() if chunks}

    def _host(self, h: _HostState, jobs: list[Job], k0: int, wall: np.ndarray,
              trace_t: np.ndarray, parts: dict[str, list[dict[str, Any]]]) -> None:  # fmt: skip
        spec, shape, model = h.spec, h.spec.shape, h.spec.gpu
        n, g_count, step = len(wall), spec.gpu_count, self.step
        rng = np.random.default_rng([self.seed, spec.index, k0])
        util = np.zeros((g_count, n))
        mem = np.zeros((g_count, n), dtype=np.int64)
        nproc = np.zeros((g_count, n), dtype=np.int32)
        cores = 1.5 + rng.uniform(0, 1, n)
        host_mem = 9 * GIB + rng.uniform(0, GIB, n)
        rx = rng.uniform(1e4, 2e5, n)
        tx = rng.uniform(1e4, 1e5, n)
        writing = np.zeros(n)
        users = np.zeros((len(self.user_names), n), dtype=bool)
        procs: list[tuple[int, np.ndarray, int, int, Job, int]] = []
        for job in jobs:
            a = max(0, math.ceil((job.start - self.trace0) / step) - k0)
            b = min(n, math.ceil((job.end - self.trace0) / step) - k0)
            if b <= a:
                continue
            jr = np.random.default_rng([job.seed, k0])
            u = job_utilisation(job, trace_t[a:b], jr)
            m = self.replay.memory_bytes(job)
            for rank, g in enumerate(job.gpus):
                util[g, a:b] = np.clip(u + jr.normal(0, 2, b - a), 0, 100)
                mem[g, a:b] += m
                nproc[g, a:b] += 1
                procs.append((g, np.arange(a, b), job.pids[rank], m, job, rank))
            k = len(job.gpus)
            kind = job.kind
            share = u / 100.0
            cores[a:b] += k * kind.cpu_per_gpu * (0.3 + 0.7 * share)
            host_mem[a:b] += k * kind.host_memory_gib * GIB
            rx[a:b] += k * kind.net_mib_s * MIB * share * jr.uniform(0.7, 1.2, b - a)
            tx[a:b] += k * 2e6 * share * (4 if k > 1 else 1)
            writing[a:b] += k * 3e5 * share
            users[self.user_index[job.user.name], a:b] = True
        hi = np.full(n, spec.index, dtype=np.int32)
        # -- GPUs ----------------------------------------------------------------------------
        held = nproc > 0
        busy = util > 0.5
        limit, idle_w = model.power_limit_watts, model.idle_watts
        power = np.where(busy, idle_w + (limit - idle_w) * (0.2 + 0.8 * util / 100),
                         np.where(held, idle_w * 1.6, idle_w))  # fmt: skip
        power = np.minimum(power * rng.uniform(0.95, 1.05, power.shape), limit)
        clock = np.where(busy, model.max_sm_mhz * rng.uniform(0.9, 1.0, util.shape),
                         np.where(held, model.max_sm_mhz * 0.6, 210.0))  # fmt: skip
        temp = np.round(h.ambient + 10 + 48 * power / limit + rng.normal(0, 0.5, power.shape))
        fan = (np.clip(np.round(30 + (temp - 40) * 1.6), 30, 100) if model.has_fan
               else np.full(power.shape, np.nan))  # fmt: skip
        total = g_count * n
        parts["gpu_samples"].append({
            "host": np.repeat(hi, g_count), "ts": np.tile(wall, g_count),
            "gpu_index": np.repeat(np.arange(g_count, dtype=np.uint8), n),
            "uuid": _strings(np.repeat(np.arange(g_count), n), h.uuids),
            "name": _strings(np.zeros(total, dtype=np.int32), [model.name]),
            "utilization_gpu_percent": np.round(util).ravel().astype(np.float32),
            "utilization_memory_percent": np.round(
                util * (0.35 + 0.3 * rng.random(util.shape))).ravel().astype(np.float32),
            "memory_used_bytes": mem.ravel(),
            "memory_total_bytes": np.full(total, model.memory_bytes, dtype=np.int64),
            "temperature_celsius": temp.ravel().astype(np.float32),
            "power_watts": power.ravel().astype(np.float32),
            "power_limit_watts": np.full(total, limit, dtype=np.float32),
            "fan_percent": _nullable(fan.ravel().astype(np.float32), pa.float32()),
            "sm_clock_hertz": np.round(clock).ravel() * 1e6,
            "pstate": np.where(busy, 0, np.where(held, 2, 8)).ravel().astype(np.uint8),
            "ecc_uncorrected_volatile": np.zeros(total, dtype=np.int64),
            "xid_events": np.zeros(total, dtype=np.int32),
            "processes": nproc.ravel(),
            "error": pa.nulls(total, pa.string()),
        })  # fmt: skip
        # -- processes -----------------------------------------------------------------------
        if procs:
            self._processes(spec, procs, wall, parts)
        # -- host ----------------------------------------------------------------------------
        cores = np.minimum(cores * rng.uniform(0.9, 1.1, n), shape.cpu_count)
        mem_total = shape.memory_bytes
        used = np.minimum(host_mem, mem_total * 0.97).astype(np.int64)
        cache = ((mem_total - used) * 0.35).astype(np.int64)
        disk_used = []
        for d, (_mount, size, local) in enumerate(h.disks):
            if local:
                grown = h.disk_used[d] + np.cumsum(writing * step * rng.uniform(0.5, 1.5, n))
                low = size * 0.5
                values = np.where(grown > size * 0.92, low + (grown - low) % (size * 0.42), grown)
                h.disk_used[d] = float(values[-1])
            else:
                values = np.full(n, h.disk_used[d])
            disk_used.append(values.astype(np.int64))
        parts["disk_samples"].append({
            "host": np.repeat(hi, len(h.disks)), "ts": np.tile(wall, len(h.disks)),
            "mount": _strings(np.repeat(np.arange(len(h.disks)), n), [d[0] for d in h.disks]),
            "total_bytes": np.repeat(np.array([d[1] for d in h.disks], dtype=np.int64), n),
            "used_bytes": np.concatenate(disk_used),
        })  # fmt: skip
        load = (cores + rng.uniform(0, 0.5, n)).astype(np.float32)
        parts["host_samples"].append({
            "host": hi, "ts": wall, "interval_seconds": np.full(n, step, dtype=np.float32),
            "cpu_percent": (100 * cores / shape.cpu_count).astype(np.float32),
            "load1": load, "load5": load, "load15": load,
            "memory_total_bytes": np.full(n, mem_total, dtype=np.int64),
            "memory_used_bytes": used,
            "memory_available_bytes": np.maximum(mem_total - used - cache // 4, 0),
            "swap_total_bytes": np.full(n, 16 * GIB, dtype=np.int64),
            "swap_used_bytes": np.minimum(
                np.maximum(used - mem_total * 0.85, 0).astype(np.int64) + 64 * MIB, 16 * GIB),
            "disk_total_bytes": np.full(n, sum(d[1] for d in h.disks), dtype=np.int64),
            "disk_used_bytes": np.sum(disk_used, axis=0),
            "net_rx_bytes_per_second": rx, "net_tx_bytes_per_second": tx,
            "uptime_seconds": wall - h.boot,
            "users": users.sum(axis=0).astype(np.int32),
            "gpus": np.full(n, g_count, dtype=np.int32),
            "errors": pa.nulls(n, pa.string()),
        })  # fmt: skip

    def _processes(self, spec: HostSpec, procs: list, wall: np.ndarray,
                   parts: dict[str, list[dict[str, Any]]]) -> None:  # fmt: skip
        commands: dict[str, int] = {}
        containers: dict[str, int] = {}
        gpu, ks, pid, memory, user, uid, command, started, cid, cname = ([] for _ in range(10))
        for g, k, p, m, job, rank in procs:
            count = len(k)
            text = job.kind.command.replace("{user}", job.user.name)
            if len(job.gpus) > 1:
                text += f" --local_rank={rank}"
            text = text[:200]
            gpu.append(np.full(count, g, dtype=np.uint8))
            ks.append(k)
            pid.append(np.full(count, p, dtype=np.int32))
            memory.append(np.full(count, m, dtype=np.int64))
            user.append(np.full(count, self.user_index[job.user.name], dtype=np.int32))
            uid.append(np.full(count, job.user.uid, dtype=np.int64))
            command.append(np.full(count, commands.setdefault(text, len(commands)), np.int32))
            started.append(np.full(count, self.wall0 + (job.start - self.trace0)))
            if job.container is not None:
                c_id, c_name, _runtime = job.container
                cid.append(np.full(count, containers.setdefault(c_id, len(containers)), np.int32))
                cname.append(np.full(count, containers.setdefault(c_name, len(containers)),
                                     np.int32))  # fmt: skip
            else:
                cid.append(np.full(count, -1, dtype=np.int32))
                cname.append(np.full(count, -1, dtype=np.int32))
        rows = int(sum(len(k) for k in ks))
        names = list(containers)

        def optional(parts: list[np.ndarray]) -> pa.Array:
            idx = np.concatenate(parts)
            missing = idx < 0
            array = _strings(np.where(missing, 0, idx), names or [""])
            return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), array)

        parts["process_samples"].append({
            "host": np.full(rows, spec.index, dtype=np.int32),
            "ts": wall[np.concatenate(ks)], "gpu_index": np.concatenate(gpu),
            "pid": np.concatenate(pid), "user_name": np.concatenate(user),
            "uid": np.concatenate(uid), "command": _strings(np.concatenate(command),
                                                            list(commands)),
            "started_at": np.concatenate(started), "gpu_memory_bytes": np.concatenate(memory),
            "container_id": optional(cid), "container_name": optional(cname),
        })  # fmt: skip


def _concat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in chunks[0]:
        values = [c[column] for c in chunks]
        if isinstance(values[0], pa.Array):
            out[column] = pa.concat_arrays(values)
        else:
            out[column] = np.concatenate(values)
    return out


def _named(columns: dict[str, Any], hosts: list[str], users: list[str]) -> dict[str, Any]:
    """Replace host and user indices with their names, rows in time order (as live data
    arrives: the rollup's time-range scans then read only the row groups of their range)."""
    order = np.argsort(columns["ts"], kind="stable")
    out = {
        k: v.take(pa.array(order)) if isinstance(v, pa.Array) else v[order]
        for k, v in columns.items()
    }
    out["host"] = _strings(out["host"], hosts)
    if "user_name" in out:
        out["user_name"] = _strings(out["user_name"], users)
    return out


def write_history(
    store: Store,
    specs: list[HostSpec],
    trace: list[TraceJob],
    *,
    days: float,
    end: float,
    tz: str,
    busy_util_percent: float,
    step_seconds: float = 300.0,
    seed: int = 0,
    load: float = 0.6,
    progress: Callable[[str], None] | None = None,
) -> HistoryReport:
    """Write ``days`` of history before ``end`` for the fleet into ``store`` and roll it up
    (every completed hour; the live data takes over at ``end``)."""
    started, cpu0 = time.perf_counter(), time.process_time()
    writer = HistoryWriter(specs, trace, wall_from=end - days * DAY, wall_to=end,
                           step_seconds=step_seconds, seed=seed, load=load)  # fmt: skip
    report = HistoryReport(days=days, hosts=len(specs), gpus=sum(s.gpu_count for s in specs),
                           step_seconds=writer.step)  # fmt: skip
    pending: Future[int] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="history-store") as pool:
        clock = time.perf_counter()
        for columns, done, _total in writer.chunks():
            named = {t: _named(c, writer.host_names, writer.user_names) for t, c in columns.items()}
            report.host_rows += len(named["host_samples"]["ts"])
            report.gpu_rows += len(named["gpu_samples"]["ts"])
            if "process_samples" in named:
                report.process_rows += len(named["process_samples"]["ts"])
            report.generate_seconds += time.perf_counter() - clock
            if pending is not None:  # the store writes one chunk while the next is made
                clock = time.perf_counter()
                report.rows += pending.result()
                report.store_seconds += time.perf_counter() - clock
            pending = pool.submit(store.insert_raw, named)
            if progress is not None:
                progress(f"history: {done * writer.step / DAY:.0f}/{days:g} days generated")
            clock = time.perf_counter()
        if pending is not None:
            clock = time.perf_counter()
            report.rows += pending.result()
            report.store_seconds += time.perf_counter() - clock
    report.jobs = writer.jobs
    if progress is not None:
        progress("history: rolling up into the minute, hour and day tiers")
    clock = time.perf_counter()

    shown = [0]

    def rolled(done: int, total: int) -> None:
        if progress is not None and (done == total or done >= shown[0] + 24 * 14):
            shown[0] = done
            progress(f"history: rolled up {done}/{total} hours")

    store.rollup(now=end, tz=tz, busy_util_percent=busy_util_percent, progress=rolled)
    report.rollup_seconds = time.perf_counter() - clock
    report.total_seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu0
    return report
