"""The simulated lab the recommenders are evaluated on (docs/recommender.md, "Method").

A fleet from ``gpufleet.demo.fleet.build_fleet`` (mixed 8x A100-80GB, 8x V100-32GB,
4x RTX 3090-24GB, 4x T4-15GB, 4x A100-40GB servers in lab groups) receives the real jobs of
``philly_jobs.csv`` at their real submission times with their real durations and GPU counts.
Jobs that are not requests are placed **by habit**: a job of a group goes to its group's
servers three times as often as to others, and among the servers with room, the well-known
ones (first in name order in each group) are chosen far more often (weight ``1/rank``); on the
server, it takes the lowest free GPU indices (what ``nvidia-smi`` users do). A job that finds no
room waits in a queue until one does.

Every job is also recorded at the GPU-hour level exactly as the warehouse's hour tier holds
it, and the recommenders only ever see the hours before "now" and the live state of "now".
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gpufleet.demo.fleet import HostSpec, build_fleet, group_of_cluster
from gpufleet.demo.trace import TraceJob
from gpufleet.recommend.fleet import FleetSnap, GpuSnap, HostSnap
from gpufleet.recommend.history import FleetHistory, HourlyHeld, build_history
from gpufleet.recommend.request import RecommendRequest
from gpufleet.recommend.speeds import MODEL_FAMILIES

HISTORY_HOURS = 28 * 24  # what the recommender reads: the last four weeks of the hour tier
REFRESH_SECONDS = 6 * 3600  # history features are rebuilt this often (the server: minutes)
RETRY_SECONDS = 900.0  # a request that finds nothing asks again this much later
MAX_REQUEST_HOURS = 72.0
OWN_GROUP_WEIGHT = 3.0
MEM_CHOICES = ((8, 0.35), (16, 0.30), (24, 0.15), (40, 0.15), (70, 0.05))


@dataclass(slots=True)
class SimJob:
    idx: int
    submit: float
    duration: float
    gpus: int
    group: str
    request: RecommendRequest | None = None  # set for requests (they follow a recommender)
    start: float = -1.0
    host: int = -1
    gpu_idx: tuple[int, ...] = ()


def make_request(rng: random.Random, job: TraceJob, hosts: list[HostSpec]) -> RecommendRequest:
    """A request with the job's GPU count and run time, and a stated random memory need,
    model type and data set (log-normal, median 20 GB; on a random server 70% of the time)."""
    mem = rng.choices([m for m, _ in MEM_CHOICES], weights=[w for _, w in MEM_CHOICES])[0]
    data = min(2000.0, 20.0 * math.exp(rng.gauss(0.0, 1.0)))
    data_host = hosts[rng.randrange(len(hosts))].name if rng.random() < 0.7 else None
    return RecommendRequest(
        gpus=job.num_gpus,
        gpu_mem_gb=mem,
        hours=min(MAX_REQUEST_HOURS, max(job.duration / 3600, 0.25)),
        model=rng.choice(sorted(MODEL_FAMILIES)),
        data_gb=round(data, 1),
        data_host=data_host,
    )


@dataclass
class Lab:
    """The fleet's state at the simulation's clock, and its hour-tier record."""

    hosts: list[HostSpec]
    t0: float  # the simulation's first hour (history starts here)
    n_hours: int
    seed: int = 0
    owner: list[list[int]] = field(default_factory=list)  # host -> GPU -> job idx or -1
    since: list[list[float]] = field(default_factory=list)
    held: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # seconds per hour
    row: list[int] = field(default_factory=list)  # host -> first row of its GPUs in held
    popularity_weight: list[float] = field(default_factory=list)
    gpu_hours_per_host: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.owner = [[-1] * h.gpu_count for h in self.hosts]
        self.since = [[0.0] * h.gpu_count for h in self.hosts]
        rows = 0
        for h in self.hosts:
            self.row.append(rows)
            rows += h.gpu_count
        self.held = np.zeros((rows, self.n_hours), dtype=np.float32)
        self.gpu_hours_per_host = np.zeros(len(self.hosts))
        rank: dict[str, int] = {}
        self.popularity_weight = [0.0] * len(self.hosts)
        for i in sorted(range(len(self.hosts)), key=lambda i: self.hosts[i].name):
            group = self.hosts[i].group
            rank[group] = rank.get(group, 0) + 1
            self.popularity_weight[i] = 1.0 / rank[group]

    def free_gpus(self, h: int) -> list[int]:
        return [i for i, o in enumerate(self.owner[h]) if o < 0]

    def occupy(
        self, job: SimJob, h: int, gpus: tuple[int, ...], now: float, span: tuple[float, float]
    ) -> None:
        job.start, job.host, job.gpu_idx = now, h, gpus
        for g in gpus:
            self.owner[h][g] = job.idx
            self.since[h][g] = now
            self._record(self.row[h] + g, now, now + job.duration)
        lo, hi = span
        overlap = max(0.0, min(hi, now + job.duration) - max(lo, now))
        self.gpu_hours_per_host[h] += overlap * len(gpus) / 3600

    def release(self, job: SimJob) -> None:
        for g in job.gpu_idx:
            self.owner[job.host][g] = -1

    def _record(self, r: int, a: float, b: float) -> None:
        """Held seconds per hour (the whole hold at once: only past hours are ever read)."""
        h0 = int((a - self.t0) // 3600)
        h1 = int((b - self.t0) // 3600)
        for hh in range(max(h0, 0), min(h1, self.n_hours - 1) + 1):
            lo = max(a, self.t0 + hh * 3600)
            hi = min(b, self.t0 + (hh + 1) * 3600)
            if hi > lo:
                self.held[r, hh] += hi - lo

    def history(self, now: float) -> FleetHistory:
        end = int((now - self.t0) // 3600)  # completed hours only
        start = max(0, end - HISTORY_HOURS)
        keys = [(h.name, g) for h in self.hosts for g in range(h.gpu_count)]
        frac = np.minimum(self.held[:, start:end] / 3600.0, 1.0).astype(float)
        data = HourlyHeld(int(self.t0) + start * 3600, keys, frac)
        return build_history(data, built_at=now)

    def snapshot(self, now: float) -> FleetSnap:
        hosts = []
        for hi, h in enumerate(self.hosts):
            gpus = tuple(
                GpuSnap(
                    g,
                    h.gpu.name,
                    h.gpu.memory_bytes,
                    "free" if self.owner[hi][g] < 0 else "taken",
                    held_since=None if self.owner[hi][g] < 0 else self.since[hi][g],
                )
                for g in range(h.gpu_count)
            )
            hosts.append(HostSnap(h.name, gpus, cpu_count=h.shape.cpu_count))
        return FleetSnap(now, tuple(hosts))

    def habit_place(self, job: SimJob, rng: random.Random) -> tuple[int, tuple[int, ...]] | None:
        cands, weights = [], []
        for hi, h in enumerate(self.hosts):
            if job.gpus > h.gpu_count:
                continue
            free = self.free_gpus(hi)
            if len(free) >= job.gpus:
                cands.append((hi, tuple(free[: job.gpus])))
                own = OWN_GROUP_WEIGHT if h.group == job.group else 1.0
                weights.append(self.popularity_weight[hi] * own)
        if not cands:
            return None
        return rng.choices(cands, weights=weights)[0]


Chooser = Callable[[RecommendRequest, FleetSnap, FleetHistory], "object | None"]


@dataclass
class RunResult:
    lab: Lab
    jobs: list[SimJob]
    holds: list[list[list[tuple[float, float]]]]  # host -> GPU -> [(start, end)] in order
    request_waits: list[float]
    unplaced: int


def sim_jobs(trace: list[TraceJob], hosts: list[HostSpec], start: float, end: float,
             request_every: int, seed: int, load: float = 0.6) -> list[SimJob]:  # fmt: skip
    """The window's jobs (those that fit on one server), thinned at random (seeded) when the
    trace offers more GPU-time than ``load`` x the fleet's GPUs over the window."""
    rng = random.Random(f"requests:{seed}")
    thin = random.Random(f"thin:{seed}")
    biggest = max(h.gpu_count for h in hosts)
    window = [tj for tj in trace if start <= tj.submit < end and tj.num_gpus <= biggest]
    offered = sum(tj.gpu_time for tj in window) / max(1.0, end - start)
    keep = min(1.0, load * sum(h.gpu_count for h in hosts) / offered) if offered else 1.0
    out: list[SimJob] = []
    for tj in window:
        if keep < 1.0 and thin.random() >= keep:
            continue
        job = SimJob(len(out), tj.submit, tj.duration, tj.num_gpus, group_of_cluster(tj.cluster))
        if request_every and job.idx % request_every == request_every - 1:
            job.request = make_request(rng, tj, hosts)
        out.append(job)
    return out


def run(
    hosts: list[HostSpec],
    jobs: list[SimJob],
    start: float,
    end: float,
    eval_from: float,
    *,
    chooser: Chooser | None = None,
    observe: Callable[[Lab, SimJob, float], None] | None = None,
    seed: int = 0,
) -> RunResult:
    """Replay ``jobs`` in time order. Requests follow ``chooser`` (None: they go by habit like
    everyone else); ``observe(lab, job, now)`` is called at each request's arrival before it
    is placed (the shadow evaluation looks at the state then)."""
    t0 = math.floor(start / 3600) * 3600
    n_hours = math.ceil((end - t0) / 3600) + 24 * 30
    lab = Lab(hosts, t0, n_hours, seed)
    rng = random.Random(f"habit:{seed}")
    events: list[tuple[float, int, int, int]] = []  # (time, kind, seq, job) kind 0 end, 1 arrive
    seq = 0
    for j in jobs:
        heapq.heappush(events, (j.submit, 1, seq, j.idx))
        seq += 1
    holds: list[list[list[tuple[float, float]]]] = [[[] for _ in range(h.gpu_count)] for h in hosts]
    waiting: list[int] = []
    history: FleetHistory | None = None
    history_at = -math.inf
    waits: list[float] = []
    unplaced = 0
    span = (eval_from, end)

    def place(job: SimJob, now: float) -> bool:
        nonlocal history, history_at
        if job.request is not None and chooser is not None:
            if all(len(lab.free_gpus(h)) < job.gpus for h in range(len(hosts))):
                return False
            if now - history_at >= REFRESH_SECONDS:
                history, history_at = lab.history(now), now
            assert history is not None
            choice = chooser(job.request, lab.snapshot(now), history)
            if choice is None:
                return False
            hi = next(i for i, h in enumerate(hosts) if h.name == choice.host)  # type: ignore[attr-defined]
            gpus = tuple(choice.gpus)  # type: ignore[attr-defined]
        else:
            found = lab.habit_place(job, rng)
            if found is None:
                return False
            hi, gpus = found
        lab.occupy(job, hi, gpus, now, span)
        for g in gpus:
            holds[hi][g].append((now, now + job.duration))
        nonlocal seq
        heapq.heappush(events, (now + job.duration, 0, seq, job.idx))
        seq += 1
        if job.request is not None:
            waits.append(now - job.submit)
        return True

    while events:
        now, kind, _, ji = heapq.heappop(events)
        if now >= end:
            break
        job = jobs[ji]
        if kind == 0:
            lab.release(job)
            if waiting:
                room = max(len(lab.free_gpus(h)) for h in range(len(hosts)))
                still = []
                for wi in waiting:
                    if jobs[wi].gpus > room or not place(jobs[wi], now):
                        still.append(wi)
                    else:
                        room = max(len(lab.free_gpus(h)) for h in range(len(hosts)))
                waiting = still
        elif kind == 1:
            if job.request is not None and observe is not None and now >= eval_from:
                observe(lab, job, now)
            if not place(job, now):
                if job.request is not None and chooser is not None:
                    heapq.heappush(events, (now + RETRY_SECONDS, 2, seq, ji))
                    seq += 1
                else:
                    waiting.append(ji)
        else:  # a request asking again
            if not place(job, now):
                if now - job.submit > 7 * 86400:
                    unplaced += 1
                else:
                    heapq.heappush(events, (now + RETRY_SECONDS, 2, seq, ji))
                    seq += 1
    return RunResult(lab, jobs, holds, waits, unplaced)


def default_fleet(n_hosts: int, seed: int = 0) -> list[HostSpec]:
    """The stated fleet, without the demo's flaky GPU and offline host (not measured here)."""
    return [HostSpec(h.index, h.name, h.group, h.shape) for h in build_fleet(n_hosts, seed)]
