"""The Gavel-style policy as first written (Python keys, full sort at every re-plan): the reference
the incremental, vectorised ``gpufleet.sched.gavel_policy.GavelMaxMin`` must match decision for
decision (tests/sched/test_gavel_policy.py).

No LP: every round (``round_seconds``) the jobs in play -- those running plus the oldest waiting
ones, at most ``window_factor`` x GPUs -- are ranked by the normalised service they have received
per second in the system (normalised: a second on a GPU model counts as that model's throughput
for the job over the job's best throughput). The least-served job picks first, taking the GPU
model where its normalised throughput is highest among those with room. Jobs that keep their GPU
model keep running; others are preempted. Between rounds, free GPUs are filled in the same order
without preemption.
"""

from __future__ import annotations

from gpufleet.sched.policy import Policy, SchedulerContext, allowed_models
from gpufleet.sched.queue import SortedQueue
from gpufleet.sched.simjob import SimJob


class GavelReference(Policy):
    name = "gavel"
    round_seconds = 360.0
    window_factor = 2

    def __init__(self, spec: object = None) -> None:
        self.waiting = SortedQueue(lambda j: (j.arrival_seconds,))
        self.service: dict[int, float] = {}  # normalised seconds received, up to the last stop
        self.next_round = 0.0
        self._has_waiting = False
        self._best: dict[int, float] = {}

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self.waiting.add(job)
        self.service[job.job_id] = 0.0

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self.waiting.add(job)
        self._best.pop(job.job_id, None)  # its usable GPU models may have changed

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self.service.pop(job.job_id, None)
        self._best.pop(job.job_id, None)

    def _norm_speed(self, job: SimJob, model: str) -> float:
        best = self._best.get(job.job_id)
        if best is None:
            best = self._best[job.job_id] = min(
                job.runtime_ratio_by_model[m]
                for m in job.runtime_ratio_by_model
                if m not in job.excluded_gpu_models
            )
        return best / job.runtime_ratio_by_model[model]

    def _served(self, job: SimJob, now: float) -> float:
        served = self.service.get(job.job_id, 0.0)
        if job.placement is not None:
            served += (now - job.run_started_seconds) * self._norm_speed(
                job, job.placement.gpu_model
            )
        return served

    def _priority(self, job: SimJob, now: float) -> tuple[float, float]:
        in_system = max(1.0, now - job.arrival_seconds)
        return (self._served(job, now) / in_system, job.arrival_seconds)

    def _preempt(self, ctx: SchedulerContext, job: SimJob) -> None:
        self.service[job.job_id] = self._served(job, ctx.now_seconds)
        ctx.preempt(job)
        self.waiting.add(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        cluster = ctx.cluster
        models = cluster.spec.gpu_models
        full_round = now >= self.next_round
        if not full_round and not any(cluster.free_by_model.values()):
            self._has_waiting = len(self.waiting) > 0
            return
        window = self.waiting.head(self.window_factor * cluster.spec.total_gpus)
        if full_round:
            self.next_round = now + self.round_seconds
            candidates = list(ctx.running.values()) + window
        else:
            candidates = window
        if full_round:  # leased jobs (still within their first round of progress) go first
            candidates.sort(
                key=lambda j: (
                    j.placement is None or j.computing_since_seconds + self.round_seconds <= now,
                    self._priority(j, now),
                )
            )
        else:
            candidates.sort(key=lambda j: self._priority(j, now))
        capacity = {
            m: cluster.spec.gpus_of(m) if full_round else cluster.free_by_model[m] for m in models
        }
        chosen: list[tuple[SimJob, str]] = []
        for job in candidates:
            if sum(capacity.values()) == 0:
                break
            options = [m for m in allowed_models(job, models) if capacity[m] >= job.num_gpus]
            if not options:
                continue
            current = job.placement.gpu_model if job.placement is not None else None
            model = max(options, key=lambda m: (self._norm_speed(job, m), m == current))
            capacity[model] -= job.num_gpus
            chosen.append((job, model))
        if full_round:
            keep = {
                j.job_id
                for j, m in chosen
                if j.placement is not None and j.placement.gpu_model == m
            }
            for job in list(ctx.running.values()):
                # a job keeps its lease for at least one round of real progress
                if job.computing_since_seconds + self.round_seconds > now:
                    continue
                if job.job_id not in keep:
                    self._preempt(ctx, job)
        for job, model in chosen:
            if job.placement is not None:
                continue
            placement = cluster.find_whole(job.num_gpus, model)
            if placement is None:
                for other in allowed_models(job, models):
                    placement = cluster.find_whole(job.num_gpus, other)
                    if placement is not None:
                        break
            if placement is None:
                continue
            self.waiting.remove(job)
            ctx.start(job, placement)
        self._has_waiting = len(self.waiting) > 0

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return self.next_round if self._has_waiting else None
