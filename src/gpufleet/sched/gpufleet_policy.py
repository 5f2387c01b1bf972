"""gpufleet's own policy. The reasoning is in docs/scheduler.md; in short:

1. **Order: shortest predicted job first on each GPU model, with aging.** Each GPU model has its
   own queue; a job's key there is its predicted runtime *on that model* (plus data transfer)
   plus ``aging`` x its arrival time. A job that has waited ``w`` seconds ranks as if it were
   ``aging * w`` seconds shorter, and keys never change while jobs wait (all age at the same rate),
   so each queue is one sorted list. A freed K80 goes to the job that is shortest *on a K80*: jobs
   that lose little on old GPUs go there, jobs that lose much wait for a fast one.
2. **Reservation and backfill.** When the head of a GPU model's queue does not fit, or the oldest
   job is starving -- it has waited past ``starve_after_seconds`` + the smaller of
   ``starve_factor`` x its predicted runtime and ``fifo_factor`` x the wait a FIFO of this cluster
   would have given it (a fluid estimate made at its arrival) -- that job gets a reservation on the
   hosts that free up first (predicted runtimes), one per GPU model; other jobs start there only
   when predicted to end before it.
3. **Data.** A job's own data host is preferred, and transfer time counts in its key.
4. **Memory safety and packing.** Only GPU models whose memory holds the predicted need (times
   ``memory_margin``) are used. A 1-GPU job that finds no free GPU may share a GPU with one running
   1-GPU job when the claimed memory of both fits and the predicted speed of each stays above
   ``min_colocation_factor`` of its speed alone.
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet.sched.cluster import ClusterSpec, Placement
from gpufleet.sched.policy import Policy, SchedulerContext, allowed_models
from gpufleet.sched.queue import SortedQueue
from gpufleet.sched.reservation import Reservation, reserve
from gpufleet.sched.simjob import SimJob

ColocationPredictFn = Callable[[str, str, str], float | None]


def _memoize(fn: ColocationPredictFn) -> ColocationPredictFn:
    cache: dict[tuple[str, str, str], float | None] = {}

    def cached(own: str, other: str, model: str) -> float | None:
        key = (own, other, model)
        if key not in cache:
            cache[key] = fn(own, other, model)
        return cache[key]

    return cached


class GpufleetPolicy(Policy):
    name = "gpufleet"
    uses_memory = True

    def __init__(
        self,
        spec: ClusterSpec,
        colocation: ColocationPredictFn | None = None,
        *,
        aging: float = 0.5,
        starve_after_seconds: float = 6 * 3600.0,
        starve_factor: float = 4.0,
        memory_margin: float = 1.10,
        min_colocation_factor: float = 0.6,
        scan_limit: int = 64,
        pack_depth: int = 4,
        preempt_ratio: float = 4.0,
        min_run_seconds: float = 1800.0,
        restart_cost_seconds: float = 60.0,
        starve_scan: int = 1,
        busy_aging: float = 0.1,
        busy_queue_per_gpu: float = 4.0,
        fifo_factor: float = 1.0,
    ) -> None:
        self.spec = spec
        self.colocation = _memoize(colocation) if colocation is not None else None
        self.aging = aging
        self.starve_after_seconds = starve_after_seconds
        self.starve_factor = starve_factor
        self.memory_margin = memory_margin
        self.min_colocation_factor = min_colocation_factor
        self.scan_limit = scan_limit
        self.pack_depth = pack_depth
        self.preempt_ratio = preempt_ratio
        self.min_run_seconds = min_run_seconds
        self.restart_cost_seconds = restart_cost_seconds
        self.starve_scan = starve_scan
        self.fifo_factor = fifo_factor
        self.starve_at: dict[int, float] = {}  # when each job starts starving (fixed at arrival)
        self._fifo_backlog_seconds = 0.0  # the fluid FIFO's work left, as of _fifo_at
        self._fifo_at = 0.0
        self.calm_aging = aging
        self.busy_aging = busy_aging
        self.busy_queue = busy_queue_per_gpu * spec.total_gpus
        self.bandwidth = spec.bandwidth_bytes_per_second
        self.memory_of = {h.gpu_model: h.gpu_memory_bytes for h in spec.hosts}
        self.hosts_of = {
            m: {h.host_id for h in spec.hosts if h.gpu_model == m} for m in spec.gpu_models
        }
        self.queues = {m: SortedQueue(self._key_for(m)) for m in spec.gpu_models}
        self.fifo = SortedQueue(lambda j: (j.arrival_seconds,))
        self.models_of: dict[int, list[str]] = {}
        self.reservations: dict[str, Reservation] = {}

    def _key_for(self, model: str) -> Callable[[SimJob], tuple[float]]:
        def key(job: SimJob) -> tuple[float]:
            transfer = 0.0 if job.data_host in self.hosts_of[model] else self.transfer_estimate(job)
            runtime = job.predicted_duration_seconds[model] * (1.0 - job.progress_fraction)
            return (runtime + transfer + self.aging * job.arrival_seconds,)

        return key

    # -- events -------------------------------------------------------------------------------
    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        best = job.best_predicted_seconds()
        patience = self.starve_factor * best
        if self.fifo_factor > 0:
            patience = min(patience, self.fifo_factor * self._fifo_wait(job, now_seconds))
        self.starve_at[job.job_id] = job.arrival_seconds + self.starve_after_seconds + patience
        self._enqueue(job)

    def _fifo_wait(self, job: SimJob, now: float) -> float:
        """How long a FIFO would make this job wait, in a fluid model of the cluster: the work
        that arrived before it (GPUs x predicted runtime on its best GPU model), drained at the
        cluster's whole speed for each job (every GPU, at that job's speed on its model). Then the
        job's own work joins the backlog."""
        self._fifo_backlog_seconds = max(0.0, self._fifo_backlog_seconds - (now - self._fifo_at))
        self._fifo_at = now
        wait = self._fifo_backlog_seconds
        best = job.best_predicted_seconds()
        rate = sum(
            self.spec.gpus_of(m) * best / job.predicted_duration_seconds[m]
            for m in self.usable_models(job)
        )
        if rate > 0:
            self._fifo_backlog_seconds += job.num_gpus * best / rate
        return wait

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self._enqueue(job)

    def _enqueue(self, job: SimJob) -> None:
        models = self.usable_models(job)
        self.models_of[job.job_id] = models
        for model in models:
            self.queues[model].add(job)
        self.fifo.add(job)

    def _start(self, ctx: SchedulerContext, job: SimJob, placement: Placement) -> None:
        for model in self.models_of.pop(job.job_id):
            self.queues[model].remove(job)
        self.fifo.remove(job)
        ctx.start(job, placement, self._claim_on(job, placement))

    # -- helpers ------------------------------------------------------------------------------
    def memory_fits(self, job: SimJob, model: str) -> bool:
        """Predicted need times the margin fits; or, where no GPU model has room for the margin,
        the bare predicted need fits (the job gets a whole GPU there, never shares)."""
        need = job.predicted_gpu_memory_bytes
        if need * self.memory_margin <= self.memory_of[model]:
            return True
        roomy = any(need * self.memory_margin <= mem for mem in self.memory_of.values())
        return not roomy and need <= self.memory_of[model]

    def claim(self, job: SimJob) -> int:
        return int(job.predicted_gpu_memory_bytes * self.memory_margin)

    def _claim_on(self, job: SimJob, placement: Placement) -> int:
        return min(self.claim(job), self.memory_of[placement.gpu_model])

    def usable_models(self, job: SimJob) -> list[str]:
        return [
            m
            for m in allowed_models(job, self.spec.gpu_models)
            if self.spec.gpus_of(m) >= job.num_gpus and self.memory_fits(job, m)
        ]

    def transfer_estimate(self, job: SimJob) -> float:
        return job.data_size_bytes / self.bandwidth if job.data_size_bytes > 0 else 0.0

    def transfer_seconds(self, job: SimJob, placement: Placement) -> float:
        if job.data_host is not None and placement.host_ids == (job.data_host,):
            return 0.0
        return self.transfer_estimate(job)

    def is_starving(self, job: SimJob, now: float) -> bool:
        """Waited past ``starve_after_seconds`` + the smaller of ``starve_factor`` x its predicted
        runtime and ``fifo_factor`` x what a FIFO would have made it wait (``_fifo_wait``)."""
        return now > self.starve_at[job.job_id]

    # -- the decision -------------------------------------------------------------------------
    def place_on(self, job: SimJob, model: str, ctx: SchedulerContext) -> Placement | None:
        """Whole GPUs of one model (data host preferred) that do not delay a reservation."""
        cluster = ctx.cluster
        prefer = job.data_host if job.data_host in self.hosts_of[model] else None
        placement = cluster.find_whole(job.num_gpus, model, prefer_host=prefer)
        if placement is None:
            return None
        res = self.reservations.get(model)
        if res is None or res.job_id == job.job_id:
            return placement
        end = (
            ctx.now_seconds
            + self.transfer_seconds(job, placement)
            + job.predicted_duration_seconds[model]
        )
        if not res.blocks(model, placement.host_ids, end):
            return placement
        return cluster.find_whole(job.num_gpus, model, avoid_hosts=res.host_ids)

    def shared_placement(
        self, job: SimJob, ctx: SchedulerContext, candidates: dict[str, list[tuple[int, int]]]
    ) -> Placement | None:
        """A GPU held by one 1-GPU job where both fit in memory and both keep enough speed."""
        if self.colocation is None or job.num_gpus != 1 or job.exclusive:
            return None
        cluster = ctx.cluster
        need = self.claim(job)
        best: tuple[float, Placement] | None = None
        for model in self.models_of.get(job.job_id, ()):
            memory = self.memory_of[model]
            res = self.reservations.get(model)
            for h, g in candidates.get(model, ()):
                holders = cluster.occupants[h][g]
                if len(holders) != 1 or cluster.claimed_memory_bytes[h][g] + need > memory:
                    continue
                other = ctx.running.get(holders[0])
                if other is None or other.num_gpus != 1 or other.exclusive:
                    continue
                mine = self.colocation(job.job_type, other.job_type, model)
                theirs = self.colocation(other.job_type, job.job_type, model)
                if mine is None or theirs is None or min(mine, theirs) < self.min_colocation_factor:
                    continue
                end = ctx.now_seconds + job.predicted_duration_seconds[model] / mine
                if res is not None and res.blocks(model, (h,), end):
                    continue
                if best is None or end < best[0]:
                    best = (end, Placement(((h, g),), model, shared=True))
        return best[1] if best else None

    def _best_on(self, model: str, ctx: SchedulerContext) -> tuple[float, SimJob, Placement] | None:
        """The first job in this model's queue that can start there now (reserving for the head
        when it cannot)."""
        free = ctx.cluster.free_by_model[model]
        queue = self.queues[model]
        if free == 0 or not len(queue):
            return None
        for rank, job in enumerate(queue.head(self.scan_limit)):
            placement = self.place_on(job, model, ctx) if job.num_gpus <= free else None
            if placement is not None:
                return (self._key_for(model)(job)[0], job, placement)
            if rank == 0:
                self._reserve(job, model, ctx)
        return None

    def _reserve(self, job: SimJob, model: str, ctx: SchedulerContext) -> None:
        if model not in self.reservations:
            res = reserve(job, ctx.cluster, ctx.running, ctx.now_seconds, [model])
            if res is not None:
                self.reservations[model] = res

    def schedule(self, ctx: SchedulerContext) -> None:
        cluster = ctx.cluster
        now = ctx.now_seconds
        self.reservations = {}
        self._follow_pressure()
        # Starving jobs, oldest first: each starts now or holds the GPUs that free up first
        # (one reservation per GPU model); a later one may not delay an earlier one's.
        for oldest in self.fifo.head(self.starve_scan):
            if now - oldest.arrival_seconds <= self.starve_after_seconds:
                break
            if not self.is_starving(oldest, now):
                continue
            models = self.models_of.get(oldest.job_id, [])
            for model in sorted(models, key=lambda m: oldest.predicted_duration_seconds[m]):
                found = self.place_on(oldest, model, ctx)
                if found is not None:
                    self._start(ctx, oldest, found)
                    break
            else:
                free_models = [m for m in models if m not in self.reservations]
                held = reserve(oldest, cluster, ctx.running, now, free_models)
                if held is not None:
                    self.reservations[held.gpu_model] = held
        # The best start on each GPU model; after a start only that model (and any model whose
        # best was the job just started) is looked at again.
        best: dict[str, tuple[float, SimJob, Placement] | None] = {
            m: self._best_on(m, ctx) for m in self.queues
        }
        while True:
            choices = [c for c in best.values() if c is not None]
            if not choices:
                break
            _, job, placement = min(choices, key=lambda c: c[0])
            self._start(ctx, job, placement)
            for model, choice in best.items():
                if model == placement.gpu_model or (choice is not None and choice[1] is job):
                    best[model] = self._best_on(model, ctx)
        if self.colocation is not None and len(self.fifo):
            self._pack(ctx)
        if self.preempt_ratio > 0 and len(self.fifo):
            self._preempt_for_short(ctx)

    def _follow_pressure(self) -> None:
        """Aging follows queue pressure: ``busy_aging`` while more than ``busy_queue`` jobs wait
        (``busy_queue_per_gpu`` x GPUs), back to the calm ``aging`` below half that. Waits are long
        there, and a fixed aging would turn the order into FIFO; the starving-job rule keeps the
        tail. A switch re-sorts the queues (rare: hysteresis of 2x)."""
        waiting = len(self.fifo)
        if self.aging != self.busy_aging and waiting > self.busy_queue:
            new = self.busy_aging
        elif self.aging != self.calm_aging and waiting < self.busy_queue / 2:
            new = self.calm_aging
        else:
            return
        self.aging = new
        for model, queue in self.queues.items():
            fresh = SortedQueue(self._key_for(model))
            for job in queue:
                fresh.add(job)
            self.queues[model] = fresh

    def _preempt_for_short(self, ctx: SchedulerContext) -> None:
        """Shortest remaining predicted time first: a waiting job that is far shorter than a
        running one (``preempt_ratio`` x, restart cost and data transfer included) takes its
        GPUs. A job runs at least ``min_run_seconds`` between preemptions, and the job holding
        a reservation is never displaced by this rule."""
        now = ctx.now_seconds
        for model, queue in self.queues.items():
            head = queue.first()
            if head is None or head.num_gpus > ctx.cluster.host_size(model):
                continue
            res = self.reservations.get(model)
            held = res.host_ids if res is not None and res.job_id != head.job_id else frozenset()
            short = head.predicted_duration_seconds[model] * (1.0 - head.progress_fraction)
            victim, victim_left = None, 0.0
            for job in ctx.running.values():
                placement = job.placement
                if (
                    placement is None
                    or placement.gpu_model != model
                    or placement.shared
                    or job.num_gpus < head.num_gpus
                    or len(placement.host_ids) != 1
                    or now - job.run_started_seconds < self.min_run_seconds
                    or placement.host_ids[0] in held
                ):
                    continue
                left = job.predicted_duration_seconds[model] * (1.0 - job.progress_at(now))
                overhead = self.restart_cost_seconds + self.transfer_estimate(job)
                if left > self.preempt_ratio * (short + overhead) and left > victim_left:
                    victim, victim_left = job, left
            if victim is None:
                continue
            ctx.preempt(victim)
            self._enqueue(victim)
            placement = self.place_on(head, model, ctx)
            if placement is not None:
                self._start(ctx, head, placement)

    def _pack(self, ctx: SchedulerContext) -> None:
        """Share GPUs with the first few waiting 1-GPU jobs of each GPU model."""
        cluster = ctx.cluster
        candidates = {m: cluster.shared_candidates(m) for m in self.queues}
        if not any(candidates.values()):
            return
        tried: set[int] = set()
        for queue in self.queues.values():
            for job in queue.head(self.pack_depth):
                if job.job_id in tried or job.job_id not in self.models_of:
                    continue
                tried.add(job.job_id)
                placement = self.shared_placement(job, ctx, candidates)
                if placement is not None:
                    self._start(ctx, job, placement)
