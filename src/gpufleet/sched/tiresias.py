"""Tiresias 2D-LAS (Gu et al., NSDI'19), as a baseline: preemptive, no runtime knowledge.

Priority is the job's attained service in GPU-seconds (GPUs x time run), discretised into a few
queues; within a queue jobs go in arrival order. Whenever something changes, the highest-priority
jobs that fit get the GPUs and running jobs that lost their place are preempted (progress kept,
restart cost paid by the simulator). A job that has waited longer than ``promote_factor`` times
what it has run is promoted to the first queue, Tiresias' guard against starvation.
"""

from __future__ import annotations

import heapq
import math

from gpufleet.sched.policy import Policy, SchedulerContext, allowed_models
from gpufleet.sched.queue import SortedQueue
from gpufleet.sched.simjob import SimJob


class Tiresias(Policy):
    name = "tiresias"
    thresholds_gpu_seconds: tuple[float, ...] = (3600.0, 36000.0)
    promote_factor = 8.0
    scan_limit = 64

    def __init__(self) -> None:
        self.levels = [
            SortedQueue(lambda j: (j.arrival_seconds,))
            for _ in range(len(self.thresholds_gpu_seconds) + 1)
        ]
        self.level_of: dict[int, int] = {}
        self.offset: dict[int, float] = {}  # attained service forgiven at promotion
        self._running: dict[int, SimJob] | None = None
        self._crossings: dict[int, tuple[float, int]] = {}

    def _level(self, attained: float) -> int:
        level = 0
        for threshold in self.thresholds_gpu_seconds:
            if attained >= threshold:
                level += 1
        return level

    def _enqueue(self, job: SimJob, now_seconds: float) -> None:
        level = self._level(job.attained_gpu_seconds - self.offset.get(job.job_id, 0.0))
        self.level_of[job.job_id] = level
        self.levels[level].add(job)

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self._enqueue(job, now_seconds)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self._enqueue(job, now_seconds)

    def _promote_starving(self, now: float) -> None:
        for level in self.levels[1:]:
            for job in level.head(64):
                waited = now - job.last_wait_from_seconds
                if waited > self.promote_factor * max(job.run_seconds, 1.0):
                    level.remove(job)
                    self.offset[job.job_id] = job.attained_gpu_seconds
                    self.level_of[job.job_id] = 0
                    self.levels[0].add(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        cluster = ctx.cluster
        self._running = ctx.running  # type: ignore[assignment]
        self._promote_starving(now)
        first_level = next((i for i, q in enumerate(self.levels) if len(q)), None)
        if first_level is None:
            return
        if not any(cluster.free_by_model.values()):
            # nothing free: only a waiting job that outranks a running one changes anything
            head = self.levels[first_level].first()
            assert head is not None
            outranked = False
            for job in ctx.running.values():
                level = self._level(job.attained_now(now) - self.offset.get(job.job_id, 0.0))
                if level > first_level or (
                    level == first_level and job.arrival_seconds > head.arrival_seconds
                ):
                    outranked = True
                    break
            if not outranked:
                return
        capacity = {m: cluster.spec.gpus_of(m) for m in cluster.spec.gpu_models}
        total = sum(capacity.values())
        by_level: list[list[tuple[float, int, SimJob]]] = [[] for _ in self.levels]
        for job in ctx.running.values():
            attained = job.attained_now(now) - self.offset.get(job.job_id, 0.0)
            by_level[self._level(attained)].append((job.arrival_seconds, job.job_id, job))
        keep: set[int] = set()
        admit: list[tuple[SimJob, str]] = []
        for level, queue in enumerate(self.levels):
            waiting = ((j.arrival_seconds, j.job_id, j) for j in queue.head(self.scan_limit))
            for _, _, job in heapq.merge(
                sorted(by_level[level], key=lambda e: e[:2]), waiting, key=lambda e: e[:2]
            ):
                if total <= 0:
                    break
                if job.placement is not None:
                    model = job.placement.gpu_model
                    if capacity[model] >= job.num_gpus:
                        capacity[model] -= job.num_gpus
                        total -= job.num_gpus
                        keep.add(job.job_id)
                    continue
                for model in allowed_models(job, cluster.spec.gpu_models):
                    if capacity[model] >= job.num_gpus:
                        capacity[model] -= job.num_gpus
                        total -= job.num_gpus
                        admit.append((job, model))
                        break
        if admit:
            for job in list(ctx.running.values()):
                if job.job_id not in keep:
                    ctx.preempt(job)
                    self._enqueue(job, now)
        for job, model in admit:
            placement = cluster.find_whole(job.num_gpus, model)
            if placement is None:
                for other in allowed_models(job, cluster.spec.gpu_models):
                    placement = cluster.find_whole(job.num_gpus, other)
                    if placement is not None:
                        break
            if placement is None:
                continue
            self.levels[self.level_of.pop(job.job_id)].remove(job)
            ctx.start(job, placement)

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        """When the next running job crosses a queue threshold (and may lose its GPUs)."""
        if not self._running or not any(len(q) for q in self.levels):
            return None
        crossings = self._crossings
        for job_id in list(crossings):
            if job_id not in self._running:
                del crossings[job_id]
        for job_id, job in self._running.items():
            if job_id not in crossings or crossings[job_id][1] != job.version:
                crossings[job_id] = (self.crossing_time(job, now_seconds), job.version)
        soonest = min((t for t, _ in crossings.values()), default=math.inf)
        return soonest if soonest < math.inf else None

    def crossing_time(self, job: SimJob, now_seconds: float) -> float:
        attained = job.attained_now(now_seconds) - self.offset.get(job.job_id, 0.0)
        for threshold in self.thresholds_gpu_seconds:
            if attained < threshold:
                return now_seconds + (threshold - attained) / job.num_gpus
        return math.inf
