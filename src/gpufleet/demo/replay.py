"""Place the trace's jobs onto the simulated hosts, in trace time.

Event-driven and deterministic: arrivals and departures are processed in time order, so the
state at a trace time depends on the seed, the fleet and the trace only (not on how often
:meth:`Replay.advance` is called). Each job keeps its trace row's duration and GPU count and
gets all its GPUs on one host, one job per GPU. Jobs that need more GPUs than any host has are
skipped; jobs that wait longer than ``max_wait`` for room are dropped (both counted).

The trace was recorded on a cluster of another size, so its arrivals are thinned (or each job
replayed several times) to reach ``load``: the share of the fleet's GPUs the trace's GPU-time
would keep busy. Placement is first fit over the job's group's hosts in name order, then the
other groups' (the first, best-known servers crowd while the last ones idle: the long tail).
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gpufleet.demo.fleet import (
    GPU_MODELS,
    JOB_TYPES,
    HostSpec,
    JobType,
    User,
    build_users,
    group_of_cluster,
)
from gpufleet.demo.trace import TraceJob

GIB = 2**30
DAY = 86400.0


@dataclass(slots=True)
class Job:
    """One replayed trace job (``copy`` > 0 when the trace is replayed several times)."""

    key: str
    trace: TraceJob
    group: str
    user: User
    kind: JobType
    seed: int
    submit: float  # trace time (shifted by the number of wraps around the trace)
    start: float = 0.0
    host: int = -1
    gpus: tuple[int, ...] = ()
    pids: tuple[int, ...] = ()
    stalls_at: float | None = None  # fraction of the run after which it stops computing
    container: tuple[str, str, str] | None = None  # (id, name, runtime)

    @property
    def end(self) -> float:
        return self.start + self.trace.duration


@dataclass
class ReplayStats:
    arrived: int = 0
    started: int = 0
    ended: int = 0
    skipped_too_big: int = 0
    dropped_waiting: int = 0
    wraps: int = 0


@dataclass
class _Host:
    spec: HostSpec
    free: list[int]
    jobs: dict[str, Job] = field(default_factory=dict)
    next_pid: int = 0


def default_start(trace: list[TraceJob]) -> float:
    """A busy Monday about a month into the trace (the trace's first weeks are sparse)."""
    first, last = trace[0].submit, trace[-1].submit
    t = min(first + 32 * DAY, (first + last) / 2)
    day = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp() - day.weekday() * DAY


class Replay:
    def __init__(
        self,
        hosts: list[HostSpec],
        trace: list[TraceJob],
        *,
        seed: int = 0,
        start: float | None = None,
        load: float = 0.6,
        warmup: float = 3 * DAY,
        max_wait: float = 6 * 3600.0,
    ) -> None:
        if not trace:
            raise ValueError("the trace holds no jobs")
        self.specs = hosts
        self.trace = trace
        self.seed = seed
        self.start = default_start(trace) if start is None else start
        self.max_wait = max_wait
        self.load = load
        self.hosts = [
            _Host(h, [g for g in range(h.gpu_count) if g != h.flaky_gpu],
                  next_pid=random.Random(f"pid:{seed}:{h.name}").randrange(20_000, 200_000))
            for h in hosts
        ]  # fmt: skip
        self.max_gpus = max(len(h.free) for h in self.hosts)
        self.users = build_users(seed)
        self._by_group: dict[str, list[int]] = {}
        for i, h in enumerate(hosts):
            self._by_group.setdefault(h.group, []).append(i)
        self._orders: dict[str, tuple[list[int], dict[int, int]]] = {}
        self._open = {i for i, h in enumerate(self.hosts) if h.free}  # hosts with a free GPU
        self.stats = ReplayStats()
        self._submits = [j.submit for j in trace]
        self._span = trace[-1].submit - trace[0].submit + DAY  # a wrap restarts the trace
        self.capacity = sum(len(h.free) for h in self.hosts)
        self.free = self.capacity
        self.multiplicity = self._multiplicity(load, warmup)
        self.now = self.start - warmup
        self._next = bisect.bisect_left(self._submits, self.now)
        self._epoch = 0
        self._ends: list[tuple[float, int, str]] = []
        self._seq = 0
        self.queues: dict[int, deque[Job]] = {}  # waiting jobs by GPU count, oldest first
        self.waiting = 0
        self.jobs: dict[str, Job] = {}
        self.on_start: Callable[[Job], None] | None = None  # told of every job placed
        self.advance(self.start)
        if start is None:
            self.start = self._lively_start(hosts, load, warmup)
            self.advance(self.start)

    def _lively_start(self, hosts: list[HostSpec], load: float, warmup: float) -> float:
        """The first half hour within four days where most GPUs are busy, some free, and the
        next three hours stay so (a demo should not open on a full or an empty fleet)."""
        probe = Replay(hosts, self.trace, seed=self.seed, start=self.start, load=load,
                       warmup=warmup, max_wait=self.max_wait)  # fmt: skip
        step, ahead = 1800.0, 6
        busy = []
        for k in range(4 * 48 + ahead):
            probe.advance(self.start + k * step)
            busy.append(probe.busy_gpus() / max(probe.capacity, 1))
        for k in range(4 * 48):
            if 0.5 <= busy[k] <= 0.8 and max(busy[k : k + ahead + 1]) <= 0.92:
                return self.start + k * step
        return self.start

    # -- set-up -------------------------------------------------------------------------

    def _multiplicity(self, load: float, warmup: float) -> float:
        """Copies per trace job that make the window's GPU-time fill ``load`` of the fleet."""
        t0, t1 = self.start - warmup, self.start + 7 * DAY
        lo, hi = bisect.bisect_left(self._submits, t0), bisect.bisect_left(self._submits, t1)
        window = [j for j in self.trace[lo:hi] if j.num_gpus <= self.max_gpus]
        if not window:
            window = [j for j in self.trace if j.num_gpus <= self.max_gpus]
            t0, t1 = self.trace[0].submit, self.trace[-1].submit + DAY
        busy = sum(j.gpu_time for j in window) / max(t1 - t0, 1.0)
        return load * self.capacity / busy if busy > 0 else 1.0

    def _make_job(self, tj: TraceJob, copy: int, submit: float) -> Job:
        rng = random.Random(f"job:{self.seed}:{tj.row}:{copy}:{self._epoch}")
        group = group_of_cluster(tj.cluster)
        users = self.users[group]
        user = rng.choices(users, weights=[u.weight for u in users])[0]
        kind = rng.choices(JOB_TYPES, weights=[k.weight for k in JOB_TYPES])[0]
        job = Job(
            key=f"{tj.row}.{copy}.{self._epoch}", trace=tj, group=group, user=user, kind=kind,
            seed=rng.getrandbits(32), submit=submit,
        )  # fmt: skip
        if not kind.idle and rng.random() < 0.08:
            job.stalls_at = rng.uniform(0.5, 0.9)  # hung at a barrier, still holding memory
        r = rng.random()
        if r < 0.25:
            cid = f"{rng.getrandbits(256):064x}"
            job.container = (cid, f"{user.name}-{kind.name}-{cid[:6]}", "docker")
        elif r < 0.35:
            cid = f"{rng.getrandbits(256):064x}"
            job.container = (cid, f"{kind.name}-{tj.row}/{kind.name}", "kubepods")
        return job

    # -- time ---------------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Process every arrival and departure up to trace time ``t``."""
        while True:
            arrival = self._arrival_time()
            end = self._ends[0][0] if self._ends else float("inf")
            if min(arrival, end) > t:
                break
            if end <= arrival:
                key = heapq.heappop(self._ends)[2]
                if key in self.jobs:  # a queued job may have been withdrawn before its end
                    self._finish(key, end)
            else:
                self._arrive(arrival)
        self.now = max(self.now, t)
        self._expire(self.now)

    def _arrival_time(self) -> float:
        if self._next >= len(self.trace):
            self._next = 0
            self._epoch += 1
            self.stats.wraps += 1
        return self._submits[self._next] + self._epoch * self._span

    def _arrive(self, when: float) -> None:
        tj = self.trace[self._next]
        self._next += 1
        self.now = when
        self._expire(when)
        copies = int(self.multiplicity)
        frac = self.multiplicity - copies
        if frac and random.Random(f"copies:{self.seed}:{tj.row}:{self._epoch}").random() < frac:
            copies += 1
        for copy in range(copies):
            self.stats.arrived += 1
            if tj.num_gpus > self.max_gpus:
                self.stats.skipped_too_big += 1
                continue
            job = self._make_job(tj, copy, when)
            if not self._place(job, when):
                self.queues.setdefault(tj.num_gpus, deque()).append(job)
                self.waiting += 1
        while self.waiting > 4 * self.capacity:  # hopelessly overloaded: forget the oldest
            self._oldest_queue().popleft()
            self.waiting -= 1
            self.stats.dropped_waiting += 1

    def _oldest_queue(self, most_gpus: int | None = None) -> deque[Job]:
        """The queue whose head waits longest (among jobs of at most ``most_gpus`` GPUs)."""
        best: deque[Job] | None = None
        for n, q in self.queues.items():
            if (
                q
                and (most_gpus is None or n <= most_gpus)
                and (best is None or (q[0].submit, q[0].key) < (best[0].submit, best[0].key))
            ):
                best = q
        return best if best is not None else deque()

    def _finish(self, key: str, when: float) -> None:
        self.now = when
        job = self.jobs.pop(key)
        host = self.hosts[job.host]
        del host.jobs[key]
        host.free.extend(job.gpus)
        host.free.sort()
        self.free += len(job.gpus)
        self._open.add(job.host)
        self.stats.ended += 1
        self._expire(when)
        # Backfill, oldest first. A waiting job did not fit anywhere when it last tried and
        # only this host gained room since, so it is the only one to try.
        while self.waiting and host.free:
            q = self._oldest_queue(len(host.free))
            if not q:
                break
            self._put(q.popleft(), job.host, when)
            self.waiting -= 1

    def _expire(self, now: float) -> None:
        for q in self.queues.values():
            while q and now - q[0].submit > self.max_wait:
                q.popleft()
                self.waiting -= 1
                self.stats.dropped_waiting += 1

    def _order(self, group: str) -> tuple[list[int], dict[int, int]]:
        """The hosts a job of ``group`` tries, in order, and each host's rank in it."""
        cached = self._orders.get(group)
        if cached is None:
            own = self._by_group.get(group, [])
            shared = self._by_group.get("shared", []) if group != "shared" else []
            rest = [i for i in range(len(self.hosts)) if i not in set(own) | set(shared)]
            order = own + shared + rest
            cached = self._orders[group] = (order, {h: k for k, h in enumerate(order)})
        return cached

    def _place(self, job: Job, when: float) -> bool:
        n = job.trace.num_gpus
        if n > self.free:
            return False
        order, rank = self._order(job.group)
        size = len(order)
        rng = random.Random(job.seed)
        # Most people pick the first server they know with room; some pick any.
        first = 0 if rng.random() < 0.75 else rng.randrange(size)
        chosen = None
        if len(self._open) * 8 < size:  # a crowded fleet: look at the hosts with room only
            distance = size
            for i in self._open:
                d = (rank[i] - first) % size
                if d < distance and len(self.hosts[i].free) >= n:
                    chosen, distance = i, d
        else:
            for k in range(size):
                i = order[(first + k) % size]
                if len(self.hosts[i].free) >= n:
                    chosen = i
                    break
        if chosen is None:
            return False
        self._put(job, chosen, when)
        return True

    def _put(self, job: Job, i: int, when: float) -> None:
        n = job.trace.num_gpus
        host = self.hosts[i]
        rng = random.Random(job.seed ^ 0x9D)
        job.host, job.start = i, when
        job.gpus = tuple(host.free[:n])
        del host.free[:n]
        self.free -= n
        if not host.free:
            self._open.discard(i)
        job.pids = tuple(host.next_pid + k for k in range(n))
        host.next_pid = host.next_pid + n + rng.randrange(1, 40)
        if host.next_pid > 4_000_000:
            host.next_pid = 20_000
        host.jobs[job.key] = job
        self.jobs[job.key] = job
        self._seq += 1
        heapq.heappush(self._ends, (job.end, self._seq, job.key))
        self.stats.started += 1
        if self.on_start is not None:
            self.on_start(job)

    # -- views --------------------------------------------------------------------------

    # -- jobs of the live queue (gpufleet.queue's replay dispatcher) ----------------------
    def admit(self, key: str, host_name: str, gpus: list[int], user: str, start: float,
              end: float) -> bool:  # fmt: skip
        """A job the live queue placed on a replayed host's GPUs (trace times): it holds them
        (taken from the free ones) until ``end``, and shows as GPU use like any replayed job."""
        index = next((i for i, h in enumerate(self.hosts) if h.spec.name == host_name), None)
        if index is None or key in self.jobs:
            return False
        host = self.hosts[index]
        taken = [g for g in gpus if g in host.free]
        for g in taken:
            host.free.remove(g)
        self.free -= len(taken)
        if not host.free:
            self._open.discard(index)
        rng = random.Random(f"queued:{key}")
        kind = next(k for k in JOB_TYPES if k.name == "resnet50")
        trace = TraceJob(-1, start, max(end - start, 1.0), len(gpus), "queue")
        job = Job(key=key, trace=trace, group=host.spec.group, user=User(user, 2000, "queue", 1.0),
                  kind=kind, seed=rng.getrandbits(32), submit=start, start=start, host=index,
                  gpus=tuple(taken))  # fmt: skip
        job.pids = tuple(host.next_pid + k for k in range(len(taken)))
        host.next_pid += len(taken) + 1
        host.jobs[key] = job
        self.jobs[key] = job
        self._seq += 1
        heapq.heappush(self._ends, (job.end, self._seq, key))
        return True

    def withdraw(self, key: str, when: float) -> None:
        """A queued job that ended before its planned end (cancelled, preempted)."""
        if key in self.jobs:
            self._finish(key, when)

    def jobs_on(self, host: int) -> list[Job]:
        return list(self.hosts[host].jobs.values())

    def busy_gpus(self) -> int:
        return sum(len(j.gpus) for j in self.jobs.values())

    def memory_bytes(self, job: Job) -> int:
        """GPU memory each of the job's processes holds (stable per job)."""
        model = GPU_MODELS[self.specs[job.host].shape.gpu]
        total = model.memory_bytes
        rng = random.Random(job.seed ^ 0x5EED)
        if job.kind.memory_gib <= 0:  # TensorFlow takes (almost) the whole GPU
            return int(total * rng.uniform(0.93, 0.97))
        want = job.kind.memory_gib * GIB * rng.uniform(0.8, 1.15)
        return int(min(want, total * rng.uniform(0.86, 0.96)))
