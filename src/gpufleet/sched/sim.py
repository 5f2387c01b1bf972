"""Event-driven simulator: replays jobs through a policy on a described cluster.

Time only moves forward through a heap of events (arrival, finish, OOM, policy wake-up). After all
events of one instant are handled, the policy's ``schedule`` runs once. Runtimes, GPU memory and
co-location slowdowns are the jobs' *true* values (``JobTruth``), which the simulator keeps in a
private mapping; the policy sees only the jobs' views (``SimJob``) through a ``PolicyContext``.

Two cost models, one switch (``SimConfig.cost_model``), the same for every policy of a comparison
and printed with its results:

- ``reference``: what published simulators (Tiresias's, Gavel's) assume. GPUs are counted: each
  GPU model is one pool, node boundaries play no part; preemption is free (a job resumes with its
  progress, no restart cost); no data transfer; GPU memory is not modelled (no OOM).
- ``realistic``: whole hosts (a job spans as few hosts as it must); a restart after a preemption
  costs ``restart_cost_seconds``; the job's data is copied to each host of its placement that does
  not hold it yet (``data_size / bandwidth``, paid once per host: the copy stays there); a
  placement whose true GPU memory overflows fails with OOM after ``oom_detect_seconds``, and the
  job is then never again placed on a GPU model with that little memory.

Both: a job progresses at ``1 / true_duration[model]`` of its work per second, times the
co-location factor while it shares its GPU; preemption keeps the progress made (checkpoint).
A job that can never run on the cluster (more GPUs than any usable GPU model has, or more memory
than any GPU holds) is refused at submission, or at the OOM that proves it, with the reason; it
is counted apart and never handed to (or kept by) the policy.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.sched.cluster import ClusterSpec, ClusterState, Host, Placement
from gpufleet.sched.policy import Policy, PolicyContext
from gpufleet.sched.simjob import FINISHED, RUNNING, WAITING, JobTruth, SimInput, SimJob

_FINISH, _OOM, _ARRIVAL, _WAKEUP = 0, 1, 2, 3

ColocationFn = Callable[[str, str, str], float]

COST_MODELS = ("reference", "realistic")
REFUSED = "refused"


@dataclass(frozen=True)
class SimConfig:
    cost_model: str = "realistic"
    restart_cost_seconds: float = 60.0
    oom_detect_seconds: float = 60.0
    queue_samples: int = 2000

    def __post_init__(self) -> None:
        if self.cost_model not in COST_MODELS:
            raise ValueError(
                f"cost model: {self.cost_model!r} is not one of {', '.join(COST_MODELS)}"
            )

    @property
    def reference(self) -> bool:
        return self.cost_model == "reference"

    def describe(self) -> str:
        if self.reference:
            return "reference (GPUs counted per GPU model, free preemption, no data transfer)"
        return (
            f"realistic (whole hosts, restart {self.restart_cost_seconds:g} s, data copied once "
            f"per host, OOM detected after {self.oom_detect_seconds:g} s)"
        )


def pooled(spec: ClusterSpec) -> ClusterSpec:
    """The reference model's cluster: one pool (one host) per GPU model, same GPUs."""
    hosts: list[Host] = []
    for model in spec.gpu_models:
        memory = max(h.gpu_memory_bytes for h in spec.hosts if h.gpu_model == model)
        hosts.append(Host(len(hosts), f"{model}-pool", model, spec.gpus_of(model), memory))
    return ClusterSpec(tuple(hosts), spec.bandwidth_bytes_per_second)


@dataclass
class JobRecord:
    job_id: int
    num_gpus: int
    arrival_seconds: float
    first_start_seconds: float | None
    finish_seconds: float | None
    run_seconds: float
    best_alone_seconds: float
    mean_jobs_in_system: float


@dataclass
class SimResult:
    policy: str
    jobs: list[JobRecord]
    total_gpus: int
    busy_gpu_seconds: float
    oom_failures: int
    preemptions: int
    unfinished_jobs: int
    sim_wall_s: float
    queue_length: list[tuple[float, int]] = field(default_factory=list)
    memory_overcommits: int = 0  # placements whose claimed memory exceeded a GPU (policy bug)
    refused: dict[int, str] = field(default_factory=dict)  # job id -> why it can never run
    cost_model: str = "realistic"


class Simulator:
    """Drives one policy over one list of jobs. The inputs are mutated; pass fresh copies."""

    def __init__(
        self,
        spec: ClusterSpec,
        jobs: list[SimInput],
        policy: Policy,
        colocation: ColocationFn | None = None,
        config: SimConfig | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.spec = pooled(spec) if self.config.reference else spec
        self.cluster = ClusterState(self.spec)
        self.jobs: dict[int, SimJob] = {i.job.job_id: i.job for i in jobs}
        self.__truth: dict[int, JobTruth] = {i.job.job_id: i.truth for i in jobs}
        self.__data_on: dict[int, set[int]] = {}
        self.policy = policy
        self.colocation = colocation or (lambda a, b, m: 0.5)
        self.on_progress = on_progress
        self.now_seconds = 0.0
        self.running: dict[int, SimJob] = {}
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._wakeups: set[float] = set()
        self._oom_pending: set[int] = set()
        self._in_system = 0
        self._area = 0.0  # integral of jobs in system over time
        self._busy_area = 0.0  # integral of busy GPUs over time
        self._last_t = 0.0
        self._area_at_arrival: dict[int, float] = {}
        self._mean_in_system: dict[int, float] = {}
        self._reporting: set[int] = set()
        self.oom_failures = 0
        self.preemptions = 0
        self.memory_overcommits = 0
        self.finished = 0
        self.refused: dict[int, str] = {}
        self._waiting_count = 0
        self._queue_trace: list[tuple[float, int]] = []
        self._started_in_pass = 0
        self.context = PolicyContext(
            self.cluster,
            self.running,
            self._start,
            self._preempt,
        )

    # -- the two actions a policy has ---------------------------------------------------------
    def _start(self, job: SimJob, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        if job.status != WAITING:
            raise RuntimeError(f"job {job.job_id} started while {job.status}")
        truth = self.__truth[job.job_id]
        now = self.now_seconds
        self.cluster.allocate(job.job_id, placement, claimed_memory_bytes)
        if claimed_memory_bytes:
            for h, g in placement.gpus:
                if self.cluster.claimed_memory_bytes[h][g] > self.cluster.hosts[h].gpu_memory_bytes:
                    self.memory_overcommits += 1
        self._started_in_pass += 1
        self._waiting_count -= 1
        job.status = RUNNING
        job.placement = placement
        job.version += 1
        job.run_started_seconds = now
        if job.first_start_seconds is None:
            job.first_start_seconds = now
        overhead = 0.0
        if not self.config.reference:
            overhead = self._transfer_seconds(job, placement)
            if job.restart_pending:
                overhead += self.config.restart_cost_seconds
        job.restart_pending = False
        self.running[job.job_id] = job
        truth.progress_from_seconds = now + overhead
        truth.rate_per_second = 0.0
        job.computing_since_seconds = now + overhead
        if not self.config.reference:
            job.measured_gpu_memory_bytes = truth.gpu_memory_bytes
        if job.reports_progress:
            self._reporting.add(job.job_id)
            job.reported_progress = truth.progress_fraction
        if not self.config.reference and self._overflows(job, placement):
            self._oom_pending.add(job.job_id)
            self._push(
                now + overhead + self.config.oom_detect_seconds, _OOM, job.job_id, job.version
            )
            return
        self._set_rate(job)
        for other in self.cluster.co_holders(job.job_id):
            self._set_rate(self.running[other])

    def _preempt(self, job: SimJob) -> None:
        if job.status != RUNNING:
            raise RuntimeError(f"job {job.job_id} preempted while {job.status}")
        if not job.preemptible:
            raise RuntimeError(f"job {job.job_id} is not preemptible")
        self.preemptions += 1
        job.preemptions += 1
        job.restart_pending = True
        self._stop(job)

    # -- internals ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, job_id: int, version: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, kind, self._seq, job_id, version))

    def _transfer_seconds(self, job: SimJob, placement: Placement) -> float:
        """The data is copied to every host of the placement that lacks it (in parallel, so the
        time of one copy); each copy stays on its host."""
        if job.data_size_bytes <= 0:
            return 0.0
        have = self.__data_on.get(job.job_id)
        if have is None:
            have = self.__data_on[job.job_id] = (
                {job.data_host} if job.data_host is not None else set()
            )
        lacking = [h for h in placement.host_ids if h not in have]
        if not lacking:
            return 0.0
        have.update(lacking)
        return job.data_size_bytes / self.cluster.spec.bandwidth_bytes_per_second

    def _overflows(self, job: SimJob, placement: Placement) -> bool:
        hosts = self.cluster.hosts
        truth = self.__truth
        if not self.cluster.shared_gpus:  # the job is alone on each of its GPUs
            need = truth[job.job_id].gpu_memory_bytes
            return any(need > hosts[h].gpu_memory_bytes for h in placement.host_ids)
        for h, g in placement.gpus:
            used = sum(truth[j].gpu_memory_bytes for j in self.cluster.occupants[h][g])
            if used > self.cluster.hosts[h].gpu_memory_bytes:
                return True
        return False

    def _set_rate(self, job: SimJob) -> None:
        """Recompute a running job's speed (co-location may have changed) and its finish event."""
        if job.job_id in self._oom_pending:
            return
        truth = self.__truth[job.job_id]
        now = self.now_seconds
        assert job.placement is not None
        model = job.placement.gpu_model
        if truth.rate_per_second > 0:
            truth.progress_fraction = truth.progress_at(now)
        truth.progress_from_seconds = max(now, truth.progress_from_seconds)
        rate = 1.0 / truth.duration_seconds[model]
        for other_id in self.cluster.co_holders(job.job_id):
            if other_id not in self._oom_pending:
                rate *= self.colocation(job.job_type, self.jobs[other_id].job_type, model)
        truth.rate_per_second = rate
        job.version += 1
        remaining = max(0.0, 1.0 - truth.progress_fraction)
        end = truth.progress_from_seconds + remaining / rate
        if abs(end - round(end)) < 1e-6:  # whole-second traces stay whole (no float drift)
            end = float(round(end))
        self._push(end, _FINISH, job.job_id, job.version)

    def _stop(self, job: SimJob) -> None:
        """Take a running job off its GPUs (finish, OOM or preemption)."""
        truth = self.__truth[job.job_id]
        now = self.now_seconds
        if truth.rate_per_second > 0:
            truth.progress_fraction = min(1.0, truth.progress_at(now))
        held = now - job.run_started_seconds
        job.run_seconds += held
        job.attained_gpu_seconds += held * job.num_gpus
        assert job.placement is not None
        computed = max(0.0, now - job.computing_since_seconds)
        job.work_seconds += computed / job.runtime_ratio_by_model.get(job.placement.gpu_model, 1.0)
        truth.rate_per_second = 0.0
        job.version += 1
        others = self.cluster.co_holders(job.job_id)
        self.cluster.release(job.job_id)
        del self.running[job.job_id]
        self._oom_pending.discard(job.job_id)
        self._reporting.discard(job.job_id)
        job.placement = None
        if job.status == RUNNING:
            job.status = WAITING
            job.last_wait_from_seconds = now
            self._waiting_count += 1
        if job.reports_progress:
            job.reported_progress = truth.progress_fraction
        for other in others:
            self._set_rate(self.running[other])

    def _advance(self, t: float) -> None:
        if t < self._last_t:
            raise RuntimeError(f"time went backwards: {t} < {self._last_t}")
        dt = t - self._last_t
        if dt > 0:
            busy = self.cluster.spec.total_gpus - sum(self.cluster.free_by_model.values())
            self._area += self._in_system * dt
            self._busy_area += busy * dt
        self._last_t = t
        self.now_seconds = t
        self.context.now_seconds = t

    def refusal(self, job: SimJob) -> str | None:
        """Why a job can never run on this cluster, or None."""
        models = [m for m in self.spec.gpu_models if m in job.runtime_ratio_by_model]
        if not models:
            return "no GPU model of the cluster can run it"
        most = max(self.spec.gpus_of(m) for m in models)
        if job.num_gpus > most:
            return (
                f"asks for {job.num_gpus} GPUs; the largest usable GPU pool has {most} "
                f"({self.spec.describe()})"
            )
        if not self.config.reference and job.gpu_memory_bytes is not None:
            room = max(h.gpu_memory_bytes for h in self.spec.hosts if h.gpu_model in models)
            if job.gpu_memory_bytes > room:
                return (
                    f"asks for {job.gpu_memory_bytes / 2**30:.1f} GiB per GPU; the largest GPU "
                    f"holds {room / 2**30:.1f} GiB"
                )
        return None

    def _refuse(self, job: SimJob, reason: str) -> None:
        self.refused[job.job_id] = reason
        job.status = REFUSED
        self._in_system -= 1
        self._waiting_count -= 1

    def _handle(self, kind: int, job_id: int, version: int) -> None:
        job = self.jobs[job_id]
        now = self.now_seconds
        if kind == _ARRIVAL:
            self._in_system += 1
            self._waiting_count += 1
            job.last_wait_from_seconds = now
            reason = self.refusal(job)
            if reason is not None:
                self._refuse(job, reason)
                return
            self._area_at_arrival[job_id] = self._area
            self.policy.on_arrival(job, now)
        elif kind == _FINISH:
            if version != job.version or job.status != RUNNING:
                return
            job.status = FINISHED
            self._stop(job)
            self.__truth[job_id].progress_fraction = 1.0
            if job.reports_progress:
                job.reported_progress = 1.0
            job.finish_seconds = now
            self.finished += 1
            self._in_system -= 1
            jct = now - job.arrival_seconds
            area = self._area - self._area_at_arrival.pop(job_id)
            self._mean_in_system[job_id] = area / jct if jct > 0 else 1.0
            self.policy.on_finish(job, now)
        elif kind == _OOM:
            if version != job.version or job.status != RUNNING:
                return
            assert job.placement is not None
            memory = self.cluster.hosts[job.placement.host_ids[0]].gpu_memory_bytes
            self.oom_failures += 1
            job.oom_failures += 1
            self.__truth[job_id].progress_fraction = 0.0
            job.work_seconds = 0.0
            self._stop(job)
            if self.__truth[job_id].gpu_memory_bytes > memory:  # too big even alone
                for host in self.cluster.hosts:
                    if host.gpu_memory_bytes <= memory:
                        job.excluded_gpu_models.add(host.gpu_model)
            else:  # it overflowed beside another job: run it alone from now on
                job.exclusive = True
            if not [m for m in job.runtime_ratio_by_model if m not in job.excluded_gpu_models]:
                self._refuse(job, "ran out of GPU memory on every GPU model of the cluster")
                self._area_at_arrival.pop(job_id, None)
                return
            self.policy.on_failure(job, now, "oom")

    def run(self) -> SimResult:
        wall_start = time.perf_counter()
        for job in sorted(self.jobs.values(), key=lambda j: (j.arrival_seconds, j.job_id)):
            self._push(job.arrival_seconds, _ARRIVAL, job.job_id, 0)
        pending_arrivals = len(self.jobs)
        total = len(self.jobs)
        handled = 0
        ctx = self.context
        truth = self.__truth
        while self._heap:
            t = self._heap[0][0]
            self._advance(t)
            changed = False
            while self._heap and self._heap[0][0] <= t:
                _, kind, _, job_id, version = heapq.heappop(self._heap)
                if kind == _WAKEUP:
                    self._wakeups.discard(t)
                    changed = True
                    continue
                if kind == _ARRIVAL:
                    pending_arrivals -= 1
                elif version != self.jobs[job_id].version or self.jobs[job_id].status != RUNNING:
                    continue  # a finish or OOM that a later start, stop or rate change replaced
                changed = True
                self._handle(kind, job_id, version)
            if not changed:
                # Only superseded events: nothing happened in the modelled world, so there is
                # no scheduling pass (a pass here let a policy whose pass is not a fixed point
                # flip jobs at every such event; each flip left new superseded events behind,
                # and Tiresias on 103959 at load 1.5 never finished).
                continue
            for job_id in self._reporting:
                self.jobs[job_id].reported_progress = truth[job_id].progress_at(t)
            self._started_in_pass = 0
            self.policy.schedule(ctx)
            self._record_queue()
            wake = self.policy.next_wakeup_seconds(self.now_seconds)
            if (
                wake is not None
                and wake > self.now_seconds
                and math.isfinite(wake)
                and wake not in self._wakeups
                and (self.running or pending_arrivals or self._started_in_pass)
            ):
                self._wakeups.add(wake)
                self._push(wake, _WAKEUP, -1, 0)
            handled += 1
            if self.on_progress is not None and handled % 2000 == 0:
                self.on_progress(self.finished, total)
        if self.on_progress is not None:
            self.on_progress(self.finished, total)
        return self._result(time.perf_counter() - wall_start)

    def _record_queue(self) -> None:
        if not self._queue_trace or self._queue_trace[-1][1] != self._waiting_count:
            self._queue_trace.append((self.now_seconds, self._waiting_count))

    def _result(self, wall_s: float) -> SimResult:
        records = []
        for job in self.jobs.values():
            if job.job_id in self.refused:
                continue
            feasible = [
                d
                for m, d in self.__truth[job.job_id].duration_seconds.items()
                if self.cluster.spec.gpus_of(m) >= job.num_gpus
            ]
            records.append(
                JobRecord(
                    job.job_id,
                    job.num_gpus,
                    job.arrival_seconds,
                    job.first_start_seconds,
                    job.finish_seconds,
                    job.run_seconds,
                    min(feasible, default=math.inf),
                    self._mean_in_system.get(job.job_id, 1.0),
                )
            )
        step = max(1, len(self._queue_trace) // self.config.queue_samples)
        return SimResult(
            policy=self.policy.name,
            jobs=records,
            total_gpus=self.cluster.spec.total_gpus,
            busy_gpu_seconds=self._busy_area,
            oom_failures=self.oom_failures,
            preemptions=self.preemptions,
            unfinished_jobs=sum(
                1
                for j in self.jobs.values()
                if j.status != FINISHED and j.job_id not in self.refused
            ),
            sim_wall_s=wall_s,
            queue_length=self._queue_trace[::step],
            memory_overcommits=self.memory_overcommits,
            refused=dict(self.refused),
            cost_model=self.config.cost_model,
        )
