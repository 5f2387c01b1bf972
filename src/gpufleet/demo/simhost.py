"""One simulated GPU server: a FakeNvml for its GPUs, a simulated host-metrics source and a
simulated ``/proc``, read by the agent's own :class:`Collector`.

:meth:`SimHost.apply` sets the fake's state from the jobs running on the host at a trace time;
:meth:`SimHost.collect` then runs the real collection round (NVML gate, GPU collector, process
attribution, wire validation).
"""

from __future__ import annotations

import math
import random
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpufleet.agent.collect import Collector
from gpufleet.agent.fakenvml import FakeGpu, FakeNvml
from gpufleet.agent.procs import ProcInfo
from gpufleet.demo.fleet import HostSpec
from gpufleet.demo.replay import Job, Replay
from gpufleet.wire import Disk, HostFacts, HostMetrics, Sample

GIB = 2**30
NOT_SUPPORTED: int = FakeNvml.NVML_ERROR_NOT_SUPPORTED  # type: ignore[attr-defined]
GPU_IS_LOST: int = FakeNvml.NVML_ERROR_GPU_IS_LOST  # type: ignore[attr-defined]


@dataclass
class _Disk:
    mount: str
    device: str
    fstype: str
    total: int
    used: float
    local: bool  # jobs write checkpoints here


class SimProcs:
    """Stands in for :class:`~gpufleet.agent.procs.ProcessAttributor` (the simulated /proc)."""

    def __init__(self) -> None:
        self.table: dict[int, ProcInfo] = {}

    def describe(self, pid: int) -> ProcInfo | None:
        return self.table.get(pid)

    def forget_except(self, live_pids: Any) -> None:
        pass


class SimHostSource:
    """Stands in for :class:`~gpufleet.agent.host.HostCollector`: metrics that follow the load."""

    def __init__(self, spec: HostSpec, rng: random.Random, now: float) -> None:
        shape = spec.shape
        self.spec = spec
        self.rng = rng
        self.boot_time = now - rng.uniform(2, 120) * 86400
        self.metrics = HostMetrics()
        self.load = [0.5, 0.5, 0.5]
        root = 2 * 10**12 if shape.gpu_count == 8 else 10**12
        self.disks = [
            _Disk("/", "/dev/nvme0n1p2", "ext4", root, root * rng.uniform(0.25, 0.6), True),
            _Disk("/data", "/dev/md0", "xfs", shape.data_disk_bytes,
                  shape.data_disk_bytes * rng.uniform(0.4, 0.8), True),
            _Disk("/home", "nas01:/export/home", "nfs4", 200 * 10**12, 142 * 10**12, False),
        ]  # fmt: skip
        self._facts = HostFacts(
            hostname=spec.name, os=shape.os, kernel=shape.kernel, cpu_model=shape.cpu_model,
            cpu_count=shape.cpu_count, memory_total_bytes=shape.memory_bytes,
            boot_time=self.boot_time,
        )  # fmt: skip

    def update(self, jobs: list[tuple[Job, float]], dt: float, now: float) -> None:
        """``jobs``: (job, utilisation 0..1) of each running job."""
        shape, rng = self.spec.shape, self.rng
        cores = 1.5 + rng.uniform(0, 1)
        mem = 9 * GIB + rng.uniform(0, GIB)
        rx = rng.uniform(1e4, 2e5)
        tx = rng.uniform(1e4, 1e5)
        writing = 0.0
        for job, util in jobs:
            n = len(job.gpus)
            cores += n * job.kind.cpu_per_gpu * (0.3 + 0.7 * util)
            mem += n * job.kind.host_memory_gib * GIB
            rx += n * job.kind.net_mib_s * 2**20 * util * rng.uniform(0.7, 1.2)
            tx += n * 2e6 * util * (4 if n > 1 else 1)
            writing += n * 3e5 * util  # checkpoints and logs
        cores = min(cores * rng.uniform(0.9, 1.1), shape.cpu_count)
        for k, window in enumerate((60.0, 300.0, 900.0)):
            a = math.exp(-dt / window)
            self.load[k] = self.load[k] * a + (cores + rng.uniform(0, 0.5)) * (1 - a)
        total = shape.memory_bytes
        used = int(min(mem, total * 0.97))
        cache = int((total - used) * 0.35)
        swap_used = int(max(0.0, used - total * 0.85)) + 64 * 2**20
        for disk in self.disks:
            if disk.local:
                disk.used += writing * dt * rng.uniform(0.5, 1.5)
                if disk.used > disk.total * 0.92:  # someone cleaned up old checkpoints
                    disk.used = disk.total * rng.uniform(0.45, 0.6)
        users = sorted({j.user.name for j, _ in jobs if j.kind.idle or rng.random() < 0.3})
        self.metrics = HostMetrics(
            cpu_percent=round(100 * cores / shape.cpu_count, 2),
            cpu_count=shape.cpu_count,
            load1=round(self.load[0], 2), load5=round(self.load[1], 2),
            load15=round(self.load[2], 2),
            memory_total_bytes=total, memory_used_bytes=used,
            memory_available_bytes=max(total - used - cache // 4, 0),
            swap_total_bytes=16 * GIB, swap_used_bytes=min(swap_used, 16 * GIB),
            disks=[Disk(mount=d.mount, device=d.device, fstype=d.fstype, total_bytes=d.total,
                        used_bytes=int(min(d.used, d.total))) for d in self.disks],
            net_rx_bytes_per_second=round(rx, 1), net_tx_bytes_per_second=round(tx, 1),
            uptime_seconds=max(now - self.boot_time, 0.0),
            users=users,
        )  # fmt: skip

    # the HostCollector surface used by Collector
    def collect(self, now: float | None = None) -> tuple[HostMetrics, list[str]]:
        m = self.metrics.model_copy()
        if now is not None:
            m.uptime_seconds = max(now - self.boot_time, 0.0)
        return m, []

    def facts(self) -> HostFacts:
        return self._facts.model_copy()


class SimCollector(Collector):
    """The agent's :class:`Collector` over a FakeNvml, with the simulated host and /proc
    swapped in for psutil and the real /proc (everything else is the agent's code)."""

    def __init__(self, host_name: str, nvml: FakeNvml, host: SimHostSource, procs: SimProcs,
                 interval_seconds: float) -> None:  # fmt: skip
        super().__init__(host_name=host_name, nvml=nvml, interval_seconds=interval_seconds)
        self._host = host  # type: ignore[assignment]
        self._procs = procs  # type: ignore[assignment]


class SimHost:
    def __init__(self, spec: HostSpec, *, seed: int, interval: float, now: float) -> None:
        self.spec = spec
        self.rng = random.Random(f"host:{seed}:{spec.name}")
        model = spec.gpu
        driver, cuda = spec.shape.driver
        gpus = []
        idle = idle_memory_bytes(self.rng, spec.gpu_count)
        for i in range(spec.gpu_count):
            gpu = FakeGpu.of_model(model.name, i)
            gpu.uuid = f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'{seed}/{spec.name}/{i}')}"
            gpu.memory_total_bytes = model.memory_bytes
            gpu.memory_reserved_bytes = idle[i]
            gpu.power_limit_milliwatts = int(model.power_limit_watts * 1000)
            gpus.append(gpu)
        self.nvml = FakeNvml(gpus, driver_version=driver, cuda_driver_version=cuda,
                             nvml_version=f"{cuda // 1000}.{driver}")  # fmt: skip
        if not model.has_fan:
            self.nvml.fail(None, "nvmlDeviceGetFanSpeed", NOT_SUPPORTED)
        self.ambient = self.rng.uniform(24, 34)
        self.temps = [self.ambient + 8 + self.rng.uniform(-2, 2) for _ in gpus]
        self.host = SimHostSource(spec, self.rng, now)
        self.procs = SimProcs()
        self.collector = SimCollector(spec.name, self.nvml, self.host, self.procs, interval)
        self.last_apply: float | None = None
        self.gpu_failing = False
        self.xid_sent = False
        self.ecc = 0

    def apply(
        self,
        replay: Replay,
        jobs: list[Job],
        t: float,
        wall: float,
        wall_of: Callable[[float], float],
    ) -> None:
        """Set GPUs, processes and host metrics for trace time ``t`` (wall clock ``wall``);
        ``wall_of(trace_time)`` maps a job's start to the wall clock."""
        rng, model = self.rng, self.spec.gpu
        dt = 5.0 if self.last_apply is None else max(wall - self.last_apply, 0.1)
        self.last_apply = wall
        on_gpu: dict[int, tuple[Job, int]] = {}
        for job in jobs:
            for rank, g in enumerate(job.gpus):
                on_gpu[g] = (job, rank)
        loads = []
        wanted: dict[int, dict[int, int]] = {g: {} for g in range(len(self.nvml.gpus))}
        for job in jobs:
            util = _job_util(job, t, rng) / 100.0
            loads.append((job, util))
            mem = replay.memory_bytes(job)
            ramp = min(1.0, 0.3 + (t - job.start) / 90.0)  # allocation grows in the first minute
            for rank, g in enumerate(job.gpus):
                pid = job.pids[rank]
                wanted[g][pid] = int(mem * ramp)
                if pid not in self.procs.table:
                    self.procs.table[pid] = _proc_info(job, rank, wall_of(job.start))
        live = {pid for procs in wanted.values() for pid in procs}
        for pid in [p for p in self.procs.table if p not in live]:
            del self.procs.table[pid]
        util_of = {job.key: u for job, u in loads}
        for g, gpu in enumerate(self.nvml.gpus):
            for pid in [p for p in gpu.compute_processes if p not in wanted[g]]:
                self.nvml.remove_process(g, pid)
            for pid, used in wanted[g].items():
                if gpu.compute_processes.get(pid) != used:
                    self.nvml.add_process(g, pid, used)
            held = g in on_gpu
            if held:
                job, _rank = on_gpu[g]
                u = min(max(util_of[job.key] * 100 + rng.gauss(0, 2), 0.0), 100.0)
            else:
                u = 0.0
            limit = model.power_limit_watts
            if u > 0.5:
                power = model.idle_watts + (limit - model.idle_watts) * (0.2 + 0.8 * u / 100)
                clock = model.max_sm_mhz * rng.uniform(0.9, 1.0)
                pstate = 0
            elif held:
                power, clock, pstate = model.idle_watts * 1.6, model.max_sm_mhz * 0.6, 2
            else:
                power, clock, pstate = model.idle_watts, 210.0, 8
            power = min(power * rng.uniform(0.95, 1.05), limit)
            target = self.ambient + 10 + 48 * power / limit
            a = 1 - math.exp(-dt / 30.0)
            self.temps[g] += (target - self.temps[g]) * a + rng.gauss(0, 0.3)
            gpu.utilization_gpu_percent = round(u)
            gpu.utilization_memory_percent = round(u * (0.35 + 0.3 * rng.random()))
            gpu.power_milliwatts = int(power * 1000)
            gpu.temperature_celsius = round(self.temps[g])
            gpu.fan_percent = round(min(100, max(30, 30 + (self.temps[g] - 40) * 1.6)))
            gpu.sm_clock_mhz = round(clock)
            gpu.pstate = pstate
        self._flaky(wall)
        self.host.update(loads, dt, wall)

    def _flaky(self, wall: float) -> None:
        """The flaky GPU: falls off the bus (XID 79) and is lost for about 35 s out of every
        4 minutes; it comes back with one more uncorrected ECC error (XID 48)."""
        g = self.spec.flaky_gpu
        if g is None:
            return
        phase = wall % 240.0
        if phase > 195.0 and not self.xid_sent:
            self.nvml.push_xid(g, 79)  # sent while the GPU still answers, so it is read
            self.xid_sent = True
        failing = phase > 205.0
        if failing and not self.gpu_failing:
            self.nvml.fail(g, "*", GPU_IS_LOST)
        elif not failing and self.gpu_failing:
            self.nvml.errors.pop((g, "*"), None)
            self.ecc += 1
            self.nvml.gpus[g].ecc_uncorrected_volatile = self.ecc
            self.nvml.push_xid(g, 48)
        if phase < 195.0:
            self.xid_sent = False
        self.gpu_failing = failing

    def collect(self) -> Sample:
        return self.collector.collect()

    def close(self) -> None:
        self.collector.close()


def idle_memory_bytes(rng: random.Random, count: int) -> list[int]:
    """Memory the driver reserves on each of ``count`` GPUs: 2 to 300 MiB (615 MiB on a real
    H200). NVML's v1 memory call counts it as used, the v2 call the agent makes does not
    (docs/agent.md), so a simulated idle GPU shows 0 bytes used, as nvidia-smi does."""
    return [int(rng.uniform(2, 300) * 2**20) for _ in range(count)]


def _job_util(job: Job, t: float, rng: random.Random) -> float:
    """GPU utilisation (0..100) of a job at trace time ``t``."""
    kind = job.kind
    age = t - job.start
    if kind.idle:  # a notebook: now and then a cell runs
        slot = int(t // 600)
        busy = random.Random(f"{job.seed}:{slot}").random() < 0.12
        return min(100.0, max(0.0, rng.gauss(kind.util, kind.util_sd))) if busy else 0.0
    duration = job.trace.duration
    if job.stalls_at is not None and age > job.stalls_at * duration:
        return 0.0
    if age < min(120.0, duration * 0.05):  # start-up: loading data, building the model
        return rng.uniform(0, 15)
    u = kind.util
    if kind.epoch_seconds and (age % kind.epoch_seconds) > kind.epoch_seconds * 0.9:
        u *= 0.35  # validation pass
    u += 6 * math.sin(age / 300.0 + job.seed % 7)
    return min(100.0, max(0.0, rng.gauss(u, kind.util_sd)))


def _proc_info(job: Job, rank: int, started_wall: float) -> ProcInfo:
    command = job.kind.command.replace("{user}", job.user.name)
    if len(job.gpus) > 1:
        command += f" --local_rank={rank}"
    cid = cname = runtime = None
    if job.container is not None:
        cid, cname, runtime = job.container
    return ProcInfo(
        pid=job.pids[rank], uid=job.user.uid, user=job.user.name, command=command[:200],
        started_at=started_wall, container_id=cid, container_name=cname,
        container_runtime=runtime,
    )  # fmt: skip
