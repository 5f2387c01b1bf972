"""The closed-loop lab the recommenders are evaluated in (docs/recommender.md, "Method").

Real jobs of one virtual cluster of a Philly-format trace arrive on a simulated lab
(``labfleet``) at their real submission times, scaled by ``load`` (arrivals only: durations
and GPU counts stay real). Every ``request_every``-th job is a **requester**: it asks the
recommender under test, goes where the answer says, starts after its set-up and data copy, and
then runs there for its real duration, so later arrivals see those GPUs taken. Everyone else
places work by a **habit** (how people pick hosts and GPUs without asking):

- ``lowest``: a familiar host (own group 3x, well-known ones first: weight 1/rank by name in
  the group), the lowest free GPU indices (``nvidia-smi`` readers, no ``CUDA_VISIBLE_DEVICES``);
- ``highest``: the same hosts, the highest free indices;
- ``random``: any host with room, uniformly, random free GPUs;
- ``popular``: the lab's famous hosts (weight 1/rank over a seeded fame order, any group),
  the lowest free indices;
- ``mixed``: each job draws one of the four.

A requester **hits** when the GPUs of its first answer are all still free when it is ready to
start (nobody took them during its set-up and copy) and it keeps them for its whole run. It
**misses** when nothing fitted when it asked (it asks again every 15 minutes), or when
someone took one of its GPUs before it started (it asks again at once). Nobody in this lab
starts on a GPU that is visibly held, so a started job is never squeezed: that kind of miss
is not modelled (docs: limits).

What a recommender gets is only what the live system would know: a ``FleetSnap`` of "now"
(which GPUs are held and since when, never for how long) and the history features built from
the hour tier of the hours before now. The job records with their true durations stay inside
``run``; the chooser is called with plain views and cannot reach them.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gpufleet.philly import TraceJob
from gpufleet.recommend.fleet import FleetSnap, GpuSnap, HostSnap
from gpufleet.recommend.history import FleetHistory, HourlyHeld, build_history
from gpufleet.recommend.labfleet import LabHost, group_names, group_weights
from gpufleet.recommend.request import RecommendRequest
from gpufleet.recommend.speeds import MODEL_FAMILIES

HABITS = ("lowest", "highest", "random", "popular", "mixed")
HISTORY_HOURS = 28 * 24  # what the recommender reads: at most the last four weeks
REFRESH_SECONDS = 6 * 3600  # history features are rebuilt this often
RETRY_SECONDS = 900.0  # a requester that finds nothing asks again this much later
SETUP_SECONDS = 300.0  # from the answer to the job's start, besides the data copy
COPY_GBIT_PER_SECOND = 1.0
GIVE_UP_SECONDS = 7 * 86400
OWN_GROUP_WEIGHT = 3.0
MEM_CHOICES = ((8, 0.35), (16, 0.30), (24, 0.15), (40, 0.15), (70, 0.05))
MAX_REQUEST_HOURS = 72.0

# events: (time, kind, seq, job index, payload)
_END, _START, _ARRIVE, _RETRY = 0, 1, 2, 3


@dataclass(slots=True)
class SimJob:
    idx: int
    submit: float
    duration: float
    gpus: int
    group: str
    habit: str
    request: RecommendRequest | None = None
    start: float = -1.0
    host: int = -1
    gpu_idx: tuple[int, ...] = ()
    missed: str = ""  # "" (a hit so far), "nothing fitted", "taken before start"
    asks: int = 0
    copy_seconds: float = 0.0


def make_request(rng: random.Random, tj: TraceJob, hosts: list[LabHost]) -> RecommendRequest:
    """The requester's stated needs: its GPU count, its run time as the user guesses it (the
    real one x a log-normal error, sigma 0.5), a drawn GPU memory need, model type and data
    set (log-normal, median 20 GiB, on a random host 70% of the time)."""
    mems = [m for m, _ in MEM_CHOICES if m * 2**30 <= max(h.shape.gpu_memory_bytes for h in hosts)]
    mem = rng.choices(mems, weights=[w for m, w in MEM_CHOICES if m in mems])[0]
    guess = tj.duration / 3600 * math.exp(rng.gauss(0.0, 0.5))
    data = min(2000.0, 20.0 * math.exp(rng.gauss(0.0, 1.0)))
    data_host = hosts[rng.randrange(len(hosts))].name if rng.random() < 0.7 else None
    return RecommendRequest(
        gpus=tj.num_gpus, gpu_mem_gib=mem, hours=min(MAX_REQUEST_HOURS, max(guess, 0.25)),
        model=rng.choice(sorted(MODEL_FAMILIES)), data_gib=round(data, 1), data_host=data_host,
    )  # fmt: skip


def copy_seconds(req: RecommendRequest, host: str) -> float:
    if req.data_gib <= 0 or req.data_host is None or req.data_host == host:
        return 0.0
    return req.data_bytes * 8 / (COPY_GBIT_PER_SECOND * 1e9)


def window_jobs(trace: list[TraceJob], vc: str | None, hosts: list[LabHost], load: float,
                start: float, days: float, request_every: int, habit: str,
                seed: int) -> list[SimJob]:  # fmt: skip
    """The jobs of ``vc`` (all clusters when None) that fit on one host, their arrivals scaled
    so the offered GPU-time is ``load`` x the lab's GPUs on average over the cluster's trace,
    the trace repeated when the window is longer; a seeded window offset."""
    biggest = max(h.gpu_count for h in hosts)
    jobs = [j for j in trace if (vc is None or j.cluster == vc) and j.num_gpus <= biggest]
    if not jobs:
        raise ValueError(f"no job of cluster {vc!r} fits on one host of the lab")
    t0 = jobs[0].submit
    span = max(3600.0, jobs[-1].submit - t0)
    demand = sum(j.duration * j.num_gpus for j in jobs) / span
    capacity = sum(h.gpu_count for h in hosts)
    factor = load * capacity / demand  # arrivals this much more often
    sim_span = span / factor
    rng = random.Random(f"window:{vc}:{seed}")
    offset = rng.random() * sim_span
    need = days * 86400
    out: list[SimJob] = []
    req_rng = random.Random(f"requests:{seed}")
    who = random.Random(f"groups:{seed}")
    groups, gweights = group_names(), group_weights()
    rep = 0
    while True:
        base = rep * sim_span - offset
        if base >= need:
            break
        for j in jobs:
            t = base + (j.submit - t0) / factor
            if t < 0 or t >= need:
                continue
            g = who.choices(groups, weights=gweights)[0]
            h = habit if habit != "mixed" else who.choice(HABITS[:4])
            job = SimJob(len(out), start + t, j.duration, j.num_gpus, g, h)
            if request_every and job.idx % request_every == request_every - 1:
                job.request = make_request(req_rng, j, hosts)
            out.append(job)
        rep += 1
    out.sort(key=lambda sj: sj.submit)
    for i, sj in enumerate(out):
        sj.idx = i
    return out


def cluster_rate(trace: list[TraceJob], vc: str | None, hosts: list[LabHost],
                 load: float) -> float:  # fmt: skip
    """Jobs per simulated day of ``vc`` at ``load`` on this lab (see ``window_jobs``)."""
    biggest = max(h.gpu_count for h in hosts)
    jobs = [j for j in trace if (vc is None or j.cluster == vc) and j.num_gpus <= biggest]
    if not jobs:
        raise ValueError(f"no job of cluster {vc!r} fits on one host of the lab")
    span = max(3600.0, jobs[-1].submit - jobs[0].submit)
    demand = sum(j.duration * j.num_gpus for j in jobs) / span
    factor = load * sum(h.gpu_count for h in hosts) / demand
    return len(jobs) / (span / factor) * 86400


Chooser = Callable[[RecommendRequest, FleetSnap, FleetHistory], "object | None"]
EtaProbe = Callable[[RecommendRequest, FleetSnap, FleetHistory], "tuple[float, ...] | None"]


@dataclass
class Lab:
    """The lab's state at the simulation's clock and its hour-tier record."""

    hosts: list[LabHost]
    t0: float
    n_hours: int
    seed: int = 0
    owner: list[list[int]] = field(default_factory=list)
    since: list[list[float]] = field(default_factory=list)
    held: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    row: list[int] = field(default_factory=list)
    _snap: list[HostSnap | None] = field(default_factory=list)
    familiar: list[float] = field(default_factory=list)
    fame: list[float] = field(default_factory=list)
    free_n: list[int] = field(default_factory=list)  # free GPUs per host
    takes: list[list[list[float]]] = field(default_factory=list)  # host -> GPU -> start times
    pos: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.owner = [[-1] * h.gpu_count for h in self.hosts]
        self.takes = [[[] for _ in range(h.gpu_count)] for h in self.hosts]
        self.pos = {h.name: i for i, h in enumerate(self.hosts)}
        self.free_n = [h.gpu_count for h in self.hosts]
        self.since = [[0.0] * h.gpu_count for h in self.hosts]
        rows = 0
        for h in self.hosts:
            self.row.append(rows)
            rows += h.gpu_count
        self.held = np.zeros((rows, self.n_hours), dtype=np.float32)
        self._snap = [None] * len(self.hosts)
        rank: dict[str, int] = {}
        self.familiar = [0.0] * len(self.hosts)
        for i in sorted(range(len(self.hosts)), key=lambda i: self.hosts[i].name):
            rank[self.hosts[i].group] = rank.get(self.hosts[i].group, 0) + 1
            self.familiar[i] = 1.0 / rank[self.hosts[i].group]
        order = list(range(len(self.hosts)))
        random.Random(f"fame:{self.seed}").shuffle(order)
        self.fame = [0.0] * len(self.hosts)
        for r, i in enumerate(order):
            self.fame[i] = 1.0 / (r + 1)

    def free_gpus(self, h: int) -> list[int]:
        return [i for i, o in enumerate(self.owner[h]) if o < 0]

    def all_free(self, h: int, gpus: tuple[int, ...]) -> bool:
        return all(self.owner[h][g] < 0 for g in gpus)

    def occupy(self, job: SimJob, h: int, gpus: tuple[int, ...], now: float) -> None:
        job.start, job.host, job.gpu_idx = now, h, gpus
        for g in gpus:
            self.owner[h][g] = job.idx
            self.since[h][g] = now
            self.takes[h][g].append(now)
            self._record(self.row[h] + g, now, now + job.duration)
        self.free_n[h] -= len(gpus)
        self._snap[h] = None

    def first_take(self, host: str, gpu: int, after: float) -> float | None:
        """When the GPU was first taken after ``after`` (starts so far: what a server that
        watches the GPUs has seen by now)."""
        ts = self.takes[self.pos[host]][gpu]
        i = bisect.bisect_right(ts, after)
        return ts[i] if i < len(ts) else None

    def release(self, job: SimJob) -> None:
        for g in job.gpu_idx:
            self.owner[job.host][g] = -1
        self.free_n[job.host] += len(job.gpu_idx)
        self._snap[job.host] = None

    def _record(self, r: int, a: float, b: float) -> None:
        """Held seconds per hour (the whole hold at once: only past hours are ever read)."""
        h0 = max(0, int((a - self.t0) // 3600))
        h1 = min(self.n_hours - 1, int((b - self.t0) // 3600))
        for hh in range(h0, h1 + 1):
            lo = max(a, self.t0 + hh * 3600)
            hi = min(b, self.t0 + (hh + 1) * 3600)
            if hi > lo:
                self.held[r, hh] += hi - lo

    def history(self, now: float) -> FleetHistory:
        end = max(0, int((now - self.t0) // 3600))  # completed hours only
        start = max(0, end - HISTORY_HOURS)
        keys = [(h.name, g) for h in self.hosts for g in range(h.gpu_count)]
        frac = np.minimum(self.held[:, start:end] / 3600.0, 1.0).astype(float)
        return build_history(HourlyHeld(int(self.t0) + start * 3600, keys, frac), built_at=now)

    def snapshot(self, now: float) -> FleetSnap:
        """What the live system shows: per GPU free or held (since when), never until when."""
        out = []
        for hi, h in enumerate(self.hosts):
            snap = self._snap[hi]
            if snap is None:
                s = h.shape
                gpus = tuple(
                    GpuSnap(g, s.gpu_name, s.gpu_memory_bytes,
                            "free" if self.owner[hi][g] < 0 else "taken",
                            memory_used_bytes=0 if self.owner[hi][g] < 0 else s.gpu_memory_bytes // 2,
                            held_since=None if self.owner[hi][g] < 0 else self.since[hi][g])
                    for g in range(h.gpu_count)
                )  # fmt: skip
                snap = HostSnap(h.name, gpus, cpu_count=s.cpu_count,
                                disk_free_bytes=s.disk_free_bytes)  # fmt: skip
                self._snap[hi] = snap
            out.append(snap)
        return FleetSnap(now, tuple(out))

    def habit_place(self, job: SimJob, rng: random.Random) -> tuple[int, tuple[int, ...]] | None:
        cands, weights = [], []
        for hi, h in enumerate(self.hosts):
            if self.free_n[hi] < job.gpus:
                continue
            free = self.free_gpus(hi)
            if job.habit == "random":
                w = 1.0
            elif job.habit == "popular":
                w = self.fame[hi]
            else:
                w = self.familiar[hi] * (OWN_GROUP_WEIGHT if h.group == job.group else 1.0)
            cands.append((hi, free))
            weights.append(w)
        if not cands:
            return None
        hi, free = rng.choices(cands, weights=weights)[0]
        if job.habit == "highest":
            gpus = free[-job.gpus :]
        elif job.habit == "random":
            gpus = sorted(rng.sample(free, job.gpus))
        else:
            gpus = free[: job.gpus]
        return hi, tuple(gpus)

    def fits_anywhere(self, req: RecommendRequest) -> bool:
        need, k, free = req.gpu_mem_bytes, req.gpus, self.free_n
        return any(
            free[hi] >= k and h.shape.gpu_memory_bytes >= need for hi, h in enumerate(self.hosts)
        )


@dataclass
class RunResult:
    lab: Lab
    jobs: list[SimJob]
    holds: list[list[list[tuple[float, float]]]]  # host -> GPU -> [(start, end)]
    # (predicted, lo, hi, actual, ...) hours: what the probe returned, the actual time last
    eta_errors: list[tuple[float, ...]]


def run(hosts: list[LabHost], jobs: list[SimJob], start: float, end: float, eval_from: float,
        *, chooser: Chooser | None, seed: int = 0,
        observe: Callable[[Lab, SimJob, float, FleetHistory], None] | None = None,
        eta_probe: EtaProbe | None = None,
        on_release: Callable[[Lab, float], None] | None = None) -> RunResult:  # fmt: skip
    """Replay ``jobs``; requesters submitted from ``eval_from`` follow ``chooser`` (None: they
    go by habit like everyone else, and ``observe`` sees each of them arrive, warm-up days
    included). ``eta_probe`` is asked whenever a following requester finds nothing (scored:
    its estimates against the actual time are ``eta_errors``) and, in the warm-up days,
    whenever any requester would find nothing (not scored: a server would have answered
    them too). ``on_release`` sees the lab after every job's end. The clock runs until every
    requester has started (or given up) after ``end``."""
    t0 = math.floor(start / 3600) * 3600
    n_hours = math.ceil((end - t0) / 3600) + 24 * 10
    lab = Lab(hosts, t0, n_hours, seed)
    rng = random.Random(f"habit:{seed}")
    events: list[tuple[float, int, int, int, tuple]] = []
    seq = 0

    def push(t: float, kind: int, ji: int, payload: tuple = ()) -> None:
        nonlocal seq
        heapq.heappush(events, (t, kind, seq, ji, payload))
        seq += 1

    for j in jobs:
        push(j.submit, _ARRIVE, j.idx)
    holds: list[list[list[tuple[float, float]]]] = [[[] for _ in range(h.gpu_count)] for h in hosts]
    queues: dict[int, list[int]] = {}  # habit jobs waiting, per GPU count, in arrival order
    hist: FleetHistory | None = None
    hist_at = -math.inf
    eta_open: list[tuple[SimJob, float, tuple[float, ...]]] = []
    eta_done: list[tuple[float, ...]] = []
    pending_requests = 0
    waiting_req: dict[int, int] = {}  # requesters waiting (insertion order = arrival order)

    def history(now: float) -> FleetHistory:
        nonlocal hist, hist_at
        if hist is None or now - hist_at >= REFRESH_SECONDS:
            hist, hist_at = lab.history(now), now
        return hist

    def begin(job: SimJob, h: int, gpus: tuple[int, ...], now: float) -> None:
        lab.occupy(job, h, gpus, now)
        for g in gpus:
            holds[h][g].append((now, now + job.duration))
        push(now + job.duration, _END, job.idx)

    def follows(job: SimJob) -> bool:
        return job.request is not None and chooser is not None and job.submit >= eval_from

    def ask(job: SimJob, now: float) -> bool:
        nonlocal pending_requests
        assert job.request is not None and chooser is not None
        job.asks += 1
        choice = None
        if lab.fits_anywhere(job.request):
            choice = chooser(job.request, lab.snapshot(now), history(now))
        if choice is None:
            if not job.missed:
                job.missed = "nothing fitted"
                if eta_probe is not None:
                    est = eta_probe(job.request, lab.snapshot(now), history(now))
                    if est is not None:
                        eta_open.append((job, now, est))
            if now - job.submit < GIVE_UP_SECONDS:
                # in line with everyone else (by arrival), and asking again now and then
                waiting_req[job.idx] = job.gpus
                push(now + RETRY_SECONDS, _RETRY, job.idx)
            else:
                waiting_req.pop(job.idx, None)
                pending_requests -= 1
            return False
        waiting_req.pop(job.idx, None)
        h = next(i for i, x in enumerate(hosts) if x.name == choice.host)  # type: ignore[attr-defined]
        gpus = tuple(choice.gpus)  # type: ignore[attr-defined]
        job.copy_seconds = copy_seconds(job.request, choice.host)  # type: ignore[attr-defined]
        push(now + SETUP_SECONDS + job.copy_seconds, _START, job.idx, (h, gpus))
        return True

    def drain(now: float) -> None:
        """Freed GPUs go to whoever has waited longest and fits (habit jobs and requesters
        alike, by arrival; a requester asks its recommender at that moment)."""
        told_nothing: set[int] = set()  # requesters whose recommender had nothing this time
        while queues or waiting_req:
            room = max(lab.free_n)
            heads = [(q[0], k) for k, q in queues.items() if k <= room and q]
            for ri, k in waiting_req.items():
                if ri in told_nothing:
                    continue
                if k <= room and lab.fits_anywhere(jobs[ri].request):  # type: ignore[arg-type]
                    heads.append((ri, -1))
                    break  # the earliest waiting requester that fits
            if not heads:
                return
            ji, k = min(heads)
            if k < 0:
                if not ask(jobs[ji], now):
                    told_nothing.add(ji)  # the line goes on without it
                continue
            found = lab.habit_place(jobs[ji], rng)
            if found is None:
                return
            queues[k].pop(0)
            if not queues[k]:
                del queues[k]
            begin(jobs[ji], found[0], found[1], now)

    def check_eta(now: float) -> None:
        still = []
        for job, asked, est in eta_open:
            assert job.request is not None
            if lab.fits_anywhere(job.request):
                eta_done.append((*est, (now - asked) / 3600))
            elif now - asked < GIVE_UP_SECONDS:
                still.append((job, asked, est))
        eta_open[:] = still

    while events:
        now, kind, _, ji, payload = heapq.heappop(events)
        if now >= end and pending_requests <= 0:
            break
        job = jobs[ji]
        if kind == _END:
            lab.release(job)
            if eta_open:
                check_eta(now)
            if on_release is not None:
                on_release(lab, now)
            drain(now)
        elif kind == _ARRIVE:
            if follows(job):
                pending_requests += 1
                ask(job, now)
                continue
            if job.request is not None and observe is not None:
                observe(lab, job, now, history(now))
            if (job.request is not None and eta_probe is not None and now < eval_from
                    and not lab.fits_anywhere(job.request)):  # fmt: skip
                eta_probe(job.request, lab.snapshot(now), history(now))
            found = lab.habit_place(job, rng)
            if found is None:
                queues.setdefault(job.gpus, []).append(ji)
            else:
                begin(job, found[0], found[1], now)
        elif kind == _RETRY:
            if ji in waiting_req:  # not served in line meanwhile
                ask(job, now)
        else:  # a requester ready to start on its answer
            h, gpus = payload
            if lab.all_free(h, gpus):
                begin(job, h, gpus, now)
                pending_requests -= 1
            else:
                job.missed = job.missed or "taken before start"
                ask(job, now)
    return RunResult(lab, jobs, holds, eta_done)
