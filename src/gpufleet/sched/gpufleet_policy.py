"""gpufleet's own policy: a Gittins index over attained service, learnt online. The reasoning is in
docs/scheduler.md; in short:

1. **What it knows.** Only what a scheduler knows: each job's GPU count, its attained service
   (GPU-seconds held so far), what it observed of the jobs that have finished, and, optionally,
   the online runtime predictor's guess. No runtime is read from the trace.
2. **Order: the Gittins index of attained service** (Gittins 1989; Tiresias's own ``gittins``
   variant). From the attained service of the jobs that have *finished* (a sample of the job-size
   distribution, the latest ``window`` of them), the index of a job that has had ``a`` GPU-seconds
   is ``max_D P(S - a <= D | S > a) / E[min(S - a, D) | S > a]``: the best rate at which serving it
   a little longer finishes jobs. Higher index first, ties in arrival order (or, with
   ``predictor_ties``, shortest predicted runtime first). Until ``min_samples`` jobs have
   finished, least attained service first (LAS), which is where the Gittins index of a
   distribution with a decreasing hazard rate lands anyway. The table is kept on a grid of
   attained-service values (sample quantiles) and rebuilt as finished jobs accumulate.
3. **Preemptive passes** like 2D-LAS: at each event the jobs are walked in index order and the
   GPUs go to those that fit (a job that does not fit is skipped); a running job that lost its
   place is preempted (its progress kept). Under the realistic cost model a running job keeps its
   GPUs unless the waiting job's index beats its index by ``preempt_margin`` (a restart and maybe
   a data copy is paid), and a job is placed on its data host or the hosts it last ran on when it
   can be.
4. **No starvation.** A job that has waited longer than ``starve_after_seconds`` plus
   ``starve_factor`` x its time held so far (since arrival or since it last ran) ranks before every
   job that is not starving (oldest first), so a big job behind a stream of small ones gets its
   GPUs in bounded time.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from gpufleet.sched.cluster import ClusterSpec, Placement
from gpufleet.sched.policy import Policy, RuntimeEstimator, SchedulerContext, allowed_models
from gpufleet.sched.queue import SortedQueue
from gpufleet.sched.simjob import SimJob


def gittins_table(
    samples: np.ndarray, grid_points: int = 64, min_quantum: float = 60.0, monotone: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Grid of attained service values (0 and sample quantiles) and the Gittins index at each.

    ``index[i]`` is for attained service in ``[grid[i], grid[i+1])``. A job is served at least
    until the next grid point (decisions are only revisited there), so the quanta ``D`` considered
    are at least that step (and ``min_quantum``); past the largest sample the index is 0 (nothing
    is known beyond it)."""
    x = np.sort(np.asarray(samples, dtype=float))
    qs = np.quantile(x, np.linspace(0.0, 1.0, grid_points)) if x.size else np.zeros(1)
    grid = np.unique(np.concatenate(([0.0], qs)))
    index = np.zeros(grid.size)
    for i, a in enumerate(grid):
        rest = x[x > a] - a
        n = rest.size
        if n == 0:
            continue
        step = max(min_quantum, (grid[i + 1] - a) if i + 1 < grid.size else 0.0)
        total = np.cumsum(rest)
        k = np.arange(1, n + 1, dtype=float)
        spent = total + (n - k) * rest
        ok = rest >= step
        best = float(np.max(k[ok] / spent[ok])) if ok.any() else 0.0
        c = int(np.searchsorted(rest, step, side="right"))  # done within one step
        first = (float(total[c - 1]) if c else 0.0) + (n - c) * step
        index[i] = max(best, c / first if first > 0 else 0.0)
    if monotone:
        index = np.minimum.accumulate(index)
    return grid, index


class GpufleetPolicy(Policy):
    name = "gpufleet"
    uses_memory = True

    def __init__(
        self,
        spec: ClusterSpec,
        estimator: RuntimeEstimator | None = None,
        *,
        realistic: bool = True,
        min_samples: int = 20,
        window: int = 4000,
        grid_points: int = 128,
        preempt_margin: float = 1.5,
        starve_after_seconds: float = 24 * 3600.0,
        starve_factor: float = 4.0,
        predictor_ties: bool = False,
        scan_limit: int = 512,
        monotone: bool = True,
        sticky: bool = True,
        min_quantum: float = 60.0,
        gpu_time: bool = True,
    ) -> None:
        self.gpu_time = gpu_time
        self.min_quantum = min_quantum
        self.monotone = monotone
        self.sticky = sticky
        self.spec = spec
        self.estimator = estimator
        self.realistic = realistic
        self.min_samples = min_samples
        self.window = window
        self.grid_points = grid_points
        self.preempt_margin = preempt_margin if realistic else 1.0
        self.starve_after_seconds = starve_after_seconds
        self.starve_factor = starve_factor
        self.predictor_ties = predictor_ties and estimator is not None
        self.scan_limit = scan_limit
        self.samples: list[float] = []
        self._built_at = 0
        self.grid = np.zeros(1)
        self.index = np.zeros(1)
        self._grid_list: list[float] = [0.0]
        self._index_list: list[float] = [0.0]
        self.waiting: dict[int, SimJob] = {}
        # waiting jobs by rank (their attained service does not change while they wait, so
        # their index changes only when the table is rebuilt), and by when they began waiting
        self.ranked = SortedQueue(self._wait_key)
        self.by_wait = SortedQueue(lambda j: (j.last_wait_from_seconds,))
        self.starve_scan = 16
        self.last_hosts: dict[int, int] = {}
        self.memory_of = {h.gpu_model: h.gpu_memory_bytes for h in spec.hosts}
        self._tie: dict[int, float] = {}
        self._next_wakeup = math.inf

    # -- what it learns ---------------------------------------------------------------------
    def _service(self, job: SimJob, now: float) -> float:
        """Attained service: GPU-seconds (``gpu_time``, as 2D-LAS) or seconds held."""
        return job.attained_now(now) if self.gpu_time else job.held_now(now)

    def _wait_key(self, job: SimJob) -> tuple[float, float, float]:
        return (
            -self.gittins(self._service(job, job.last_wait_from_seconds)),
            self._tie.get(job.job_id, 0.0),
            job.arrival_seconds,
        )

    def _add_waiting(self, job: SimJob) -> None:
        self.waiting[job.job_id] = job
        self.ranked.add(job)
        self.by_wait.add(job)

    def _remove_waiting(self, job: SimJob) -> None:
        del self.waiting[job.job_id]
        self.ranked.remove(job)
        self.by_wait.remove(job)

    def _rebuild(self) -> None:
        recent = np.array(self.samples[-self.window :])
        self.grid, self.index = gittins_table(recent, self.grid_points, monotone=self.monotone)
        self._grid_list = self.grid.tolist()
        self._index_list = self.index.tolist()
        self._built_at = len(self.samples)
        self.ranked = SortedQueue(self._wait_key)
        for job in self.waiting.values():
            self.ranked.add(job)

    def gittins(self, attained: float) -> float:
        """The job's Gittins index (LAS before enough jobs have finished)."""
        if len(self.samples) < self.min_samples:
            return 1.0 / (1.0 + attained)
        i = bisect.bisect_right(self._grid_list, attained) - 1
        return self._index_list[max(i, 0)]

    def _next_crossing(self, attained: float) -> float:
        """Attained service at which the job's index next changes (inf: never)."""
        if len(self.samples) < self.min_samples:
            return math.inf  # LAS: the order between running jobs does not change
        i = bisect.bisect_right(self._grid_list, attained)
        return self._grid_list[i] if i < len(self._grid_list) else math.inf

    # -- events -------------------------------------------------------------------------------
    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        if self.predictor_ties and self.estimator is not None:
            self._tie[job.job_id] = self.estimator.predict_seconds(job) * job.num_gpus
        self._add_waiting(job)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self._add_waiting(job)

    def on_withdraw(self, job: SimJob, now_seconds: float) -> None:
        if job.job_id in self.waiting:
            self._remove_waiting(job)
        self._tie.pop(job.job_id, None)

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self.samples.append(self._service(job, now_seconds))
        self._tie.pop(job.job_id, None)
        self.last_hosts.pop(job.job_id, None)
        if self.estimator is not None:
            self.estimator.observe(job, job.work_seconds)
        n = len(self.samples)
        if n >= self.min_samples and (n - self._built_at >= max(20, self._built_at // 10)):
            self._rebuild()

    # -- helpers ------------------------------------------------------------------------------
    def usable_models(self, job: SimJob) -> list[str]:
        memory = job.known_gpu_memory_bytes()
        return [
            m
            for m in allowed_models(job, self.spec.gpu_models)
            if self.spec.gpus_of(m) >= job.num_gpus
            and (memory is None or memory <= self.memory_of[m])
        ]

    def starving(self, job: SimJob, now: float) -> bool:
        waited = now - job.last_wait_from_seconds
        return waited > self.starve_after_seconds + self.starve_factor * job.held_now(now)

    def _key(
        self, job: SimJob, now: float, running: bool
    ) -> tuple[float, float, float, float, float]:
        index = self.gittins(self._service(job, now))
        if running:
            index *= self.preempt_margin
        starving = 0.0 if (not running and self.starving(job, now)) else 1.0
        tie = self._tie.get(job.job_id, 0.0)
        sticky = 0.0 if (running and self.sticky) else 1.0
        return (starving, -index, sticky, tie, job.arrival_seconds + job.job_id * 1e-9)

    def _place(self, job: SimJob, model: str, ctx: SchedulerContext) -> Placement | None:
        cluster = ctx.cluster
        hosts = cluster.hosts_by_model[model]
        prefer = self.last_hosts.get(job.job_id, job.data_host)
        if prefer is not None and prefer not in hosts:
            prefer = None
        return cluster.find_whole(job.num_gpus, model, prefer_host=prefer)

    # -- the decision -------------------------------------------------------------------------
    def schedule(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        cluster = ctx.cluster
        if not self.waiting:
            self._plan_wakeup(ctx)
            return
        ranked = [(self._key(j, now, True), j) for j in ctx.running.values()]
        seen: set[int] = set()
        for job in self.by_wait.head(self.starve_scan):
            if self.starving(job, now):
                ranked.append((self._key(job, now, False), job))
                seen.add(job.job_id)
        ranked += [
            (self._key(j, now, False), j)
            for j in self.ranked.head(self.scan_limit)
            if j.job_id not in seen
        ]
        ranked.sort(key=lambda e: e[0])
        capacity = {m: cluster.spec.gpus_of(m) for m in cluster.spec.gpu_models}
        left = sum(capacity.values())
        keep: set[int] = set()
        admit: list[tuple[SimJob, str]] = []
        for _, job in ranked:
            if left <= 0:
                break
            if job.placement is not None:
                model = job.placement.gpu_model
                if capacity[model] >= job.num_gpus:
                    capacity[model] -= job.num_gpus
                    left -= job.num_gpus
                    keep.add(job.job_id)
                continue
            models = [m for m in self.usable_models(job) if capacity[m] >= job.num_gpus]
            if not models:
                continue
            model = min(models, key=lambda m: job.runtime_ratio_by_model[m])
            capacity[model] -= job.num_gpus
            left -= job.num_gpus
            admit.append((job, model))
        if admit:
            for job in [j for j in ctx.running.values() if j.job_id not in keep]:
                ctx.preempt(job)
                self._add_waiting(job)
        for job, model in admit:
            placement = self._place(job, model, ctx)
            if placement is None:
                for other in self.usable_models(job):
                    placement = self._place(job, other, ctx)
                    if placement is not None:
                        break
            if placement is None:
                continue
            self._remove_waiting(job)
            self.last_hosts[job.job_id] = placement.host_ids[0]
            ctx.start(job, placement)
        self._plan_wakeup(ctx)

    def _plan_wakeup(self, ctx: SchedulerContext) -> None:
        """Next time a running job's index changes (it may then lose its GPUs)."""
        now = ctx.now_seconds
        soonest = math.inf
        if self.waiting:
            for job in ctx.running.values():
                attained = self._service(job, now)
                crossing = self._next_crossing(attained)
                if math.isfinite(crossing):
                    rate = job.num_gpus if self.gpu_time else 1.0
                    soonest = min(soonest, now + (crossing - attained) / rate)
        self._next_wakeup = soonest

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return self._next_wakeup if math.isfinite(self._next_wakeup) else None
