"""The cluster a scheduler places jobs on, and the placement core every policy goes through.

``ClusterState`` is plain bookkeeping (which job holds which GPU, how much GPU memory each holder
claimed); it never decides anything. Policies ask it for candidate placements and the simulator
(or a live scheduler) commits them with ``allocate``/``release``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpufleet.sched.gpumodels import default_table

GIB = 2**30

# Memory of one GPU (one die for the dual-die K80), bytes.
DEFAULT_GPU_MEMORY_BYTES = {
    "k80": 12 * GIB,
    "p100": 16 * GIB,
    "v100": 32 * GIB,
    "t4": 16 * GIB,
    "a100": 80 * GIB,
    "h100": 80 * GIB,
}

DEFAULT_GPUS_PER_HOST = 8
DEFAULT_BANDWIDTH_BYTES_PER_SECOND = 1.25e8  # 1 Gbit/s between a job's data and its host


@dataclass(frozen=True, slots=True)
class Host:
    host_id: int
    name: str
    gpu_model: str
    num_gpus: int
    gpu_memory_bytes: int


@dataclass(frozen=True)
class ClusterSpec:
    hosts: tuple[Host, ...]
    bandwidth_bytes_per_second: float = DEFAULT_BANDWIDTH_BYTES_PER_SECOND

    @functools.cached_property
    def gpu_models(self) -> list[str]:
        seen: list[str] = []
        for host in self.hosts:
            if host.gpu_model not in seen:
                seen.append(host.gpu_model)
        return seen

    def gpus_of(self, gpu_model: str) -> int:
        return self._gpus_by_model.get(gpu_model, 0)

    @functools.cached_property
    def _gpus_by_model(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.hosts:
            out[h.gpu_model] = out.get(h.gpu_model, 0) + h.num_gpus
        return out

    @functools.cached_property
    def total_gpus(self) -> int:
        return sum(h.num_gpus for h in self.hosts)

    def max_gpus_per_model(self) -> int:
        return max((self.gpus_of(m) for m in self.gpu_models), default=0)

    def describe(self) -> str:
        return ",".join(f"{m}:{self.gpus_of(m)}" for m in self.gpu_models)


_PART_RE = re.compile(
    r"^(?P<model>[a-z0-9_-]+):(?P<count>\d+)(x(?P<per_host>\d+))?(@(?P<mem>\d+)g)?$"
)


def parse_cluster(
    text: str, bandwidth_bytes_per_second: float = DEFAULT_BANDWIDTH_BYTES_PER_SECOND
) -> ClusterSpec:
    """``"v100:32,p100:32,k80:32"``; ``v100:32x4`` sets 4 GPUs per host, ``@40g`` the GPU memory.

    Raises ValueError naming the bad part.
    """
    hosts: list[Host] = []
    for part in [p.strip().lower() for p in text.split(",") if p.strip()]:
        match = _PART_RE.match(part)
        if not match:
            raise ValueError(
                f"cluster: cannot read {part!r}; expected MODEL:COUNT[xPER_HOST][@MEMg]"
            )
        model, count = match["model"], int(match["count"])
        per_host = int(match["per_host"] or DEFAULT_GPUS_PER_HOST)
        if count <= 0 or per_host <= 0:
            raise ValueError(f"cluster: {part!r}: GPU counts must be positive")
        if match["mem"]:
            memory = int(match["mem"]) * GIB
        elif model in DEFAULT_GPU_MEMORY_BYTES:
            memory = DEFAULT_GPU_MEMORY_BYTES[model]
        elif (known := default_table().find(model)) is not None:
            memory = known.memory_bytes
        else:
            raise ValueError(
                f"cluster: {part!r}: unknown GPU memory for {model!r}; add @MEMg "
                f"(or a row to {default_table().path})"
            )
        for start in range(0, count, per_host):
            index = sum(1 for h in hosts if h.gpu_model == model)
            hosts.append(
                Host(
                    len(hosts), f"{model}-{index:02d}", model, min(per_host, count - start), memory
                )
            )
    if not hosts:
        raise ValueError("cluster: no GPUs described")
    return ClusterSpec(tuple(hosts), bandwidth_bytes_per_second)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job runs: (host id, GPU index) pairs; ``shared`` when it shares its GPU."""

    gpus: tuple[tuple[int, int], ...]
    gpu_model: str
    shared: bool = False
    host_ids: tuple[int, ...] = field(init=False, repr=False, compare=False)  # sorted, distinct

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_ids", tuple(sorted({h for h, _ in self.gpus})))


@dataclass
class ClusterState:
    spec: ClusterSpec
    occupants: list[list[list[int]]] = field(init=False)
    claimed_memory_bytes: list[list[int]] = field(init=False)
    free_count: list[int] = field(init=False)
    free_by_model: dict[str, int] = field(init=False)
    hosts_by_model: dict[str, list[int]] = field(init=False)
    placements: dict[int, Placement] = field(init=False)
    claims_bytes: dict[int, int] = field(init=False)
    shared_gpus: int = field(init=False)  # GPUs held by more than one job

    def __post_init__(self) -> None:
        self.occupants = [[[] for _ in range(h.num_gpus)] for h in self.spec.hosts]
        self.claimed_memory_bytes = [[0] * h.num_gpus for h in self.spec.hosts]
        self.free_count = [h.num_gpus for h in self.spec.hosts]
        self.free_by_model = {m: self.spec.gpus_of(m) for m in self.spec.gpu_models}
        self.hosts_by_model = {
            m: [h.host_id for h in self.spec.hosts if h.gpu_model == m]
            for m in self.spec.gpu_models
        }
        self.placements = {}
        self.claims_bytes = {}
        self.shared_gpus = 0
        self._host_size = {
            m: max(self.spec.hosts[h].num_gpus for h in hosts)
            for m, hosts in self.hosts_by_model.items()
        }

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.spec.hosts

    def host_size(self, gpu_model: str) -> int:
        return self._host_size[gpu_model]

    def hosts_needed(self, num_gpus: int, gpu_model: str) -> int:
        return max(1, math.ceil(num_gpus / self.host_size(gpu_model)))

    def find_whole(
        self,
        num_gpus: int,
        gpu_model: str,
        prefer_host: int | None = None,
        avoid_hosts: Iterable[int] = (),
    ) -> Placement | None:
        """Whole free GPUs for a job on as few hosts as possible (one host when it fits on one)."""
        if self.free_by_model.get(gpu_model, 0) < num_gpus:
            return None
        avoid = set(avoid_hosts)
        candidates = (
            [h for h in self.hosts_by_model[gpu_model] if h not in avoid]
            if avoid
            else self.hosts_by_model[gpu_model]
        )
        free = self.free_count
        if num_gpus <= self._host_size[gpu_model]:
            best = None
            if (
                prefer_host is not None
                and prefer_host in candidates
                and free[prefer_host] >= num_gpus
            ):
                best = prefer_host
            else:
                for h in candidates:  # best fit: the host with the fewest free GPUs that suffice
                    if free[h] >= num_gpus and (best is None or free[h] < free[best]):
                        best = h
            if best is None:
                return None
            return Placement(self._free_gpus_on(best, num_gpus), gpu_model)
        chosen: list[tuple[int, int]] = []
        hosts_left = self.hosts_needed(num_gpus, gpu_model)
        for h in sorted(candidates, key=lambda h: -free[h]):
            if hosts_left == 0 or len(chosen) >= num_gpus:
                break
            chosen.extend(self._free_gpus_on(h, min(free[h], num_gpus - len(chosen))))
            hosts_left -= 1
        if len(chosen) < num_gpus:
            return None
        return Placement(tuple(chosen), gpu_model)

    def can_place(self, num_gpus: int, gpu_model: str) -> bool:
        """Whether ``find_whole(num_gpus, gpu_model)`` would find GPUs (without building them)."""
        if self.free_by_model.get(gpu_model, 0) < num_gpus:
            return False
        free = self.free_count
        hosts = self.hosts_by_model[gpu_model]
        if num_gpus <= self._host_size[gpu_model]:
            return any(free[h] >= num_gpus for h in hosts)
        most = sorted((free[h] for h in hosts), reverse=True)
        return sum(most[: self.hosts_needed(num_gpus, gpu_model)]) >= num_gpus

    def _free_gpus_on(self, host_id: int, count: int) -> tuple[tuple[int, int], ...]:
        out: list[tuple[int, int]] = []
        for index, holders in enumerate(self.occupants[host_id]):
            if not holders:
                out.append((host_id, index))
                if len(out) == count:
                    break
        return tuple(out)

    def shared_candidates(self, gpu_model: str) -> list[tuple[int, int]]:
        """GPUs of this model held by exactly one job (a sharing candidate)."""
        out = []
        for h in self.hosts_by_model.get(gpu_model, ()):
            for index, holders in enumerate(self.occupants[h]):
                if len(holders) == 1:
                    out.append((h, index))
        return out

    def allocate(self, job_id: int, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        if job_id in self.placements:
            raise ValueError(f"job {job_id} is already placed")
        for h, g in placement.gpus:
            if not self.occupants[h][g]:
                self.free_count[h] -= 1
                self.free_by_model[placement.gpu_model] -= 1
            elif len(self.occupants[h][g]) == 1:
                self.shared_gpus += 1
            self.occupants[h][g].append(job_id)
            self.claimed_memory_bytes[h][g] += claimed_memory_bytes
        self.placements[job_id] = placement
        self.claims_bytes[job_id] = claimed_memory_bytes

    def release(self, job_id: int) -> Placement:
        placement = self.placements.pop(job_id)
        claimed = self.claims_bytes.pop(job_id, 0)
        for h, g in placement.gpus:
            self.occupants[h][g].remove(job_id)
            if len(self.occupants[h][g]) == 1:
                self.shared_gpus -= 1
            self.claimed_memory_bytes[h][g] -= claimed
            if not self.occupants[h][g]:
                self.free_count[h] += 1
                self.free_by_model[placement.gpu_model] += 1
        return placement

    def co_holders(self, job_id: int) -> set[int]:
        """Other jobs sharing a GPU with this one."""
        out: set[int] = set()
        if not self.shared_gpus:
            return out
        for h, g in self.placements[job_id].gpus:
            out.update(j for j in self.occupants[h][g] if j != job_id)
        return out
