"""The Tiresias policy as it was before its passes were made incremental (commit 9278aed of
``src/gpufleet/sched/tiresias.py``, kept verbatim below this note): every pass walked every
queue and rebuilt each queue's order, and visited every running job for the demotions and the
wake-up. ``test_tiresias_speed.py`` checks that the policy now decides exactly like it.

The original module docstring follows.
Tiresias (Gu et al., NSDI'19) as its authors' simulator runs it: discretised 2D-LAS (``dlas-gpu``,
attained service in GPU-seconds) or 1D (``dlas``, seconds). Preemptive; no runtime knowledge.

The mechanics follow SymbioticLab/Tiresias ``simulator/run_sim.py`` (described in
``../shared/data/tiresias/README.md``), so that its published figures can be reproduced:

- queues 0..K with limits ``thresholds`` (reference: 3,250 and 7,200 GPU-seconds, 3 queues); a new
  job joins the tail of queue 0;
- at every event (arrival, finish, or a running job reaching its queue limit) the running jobs'
  executed time is brought up to date and a job at or past its queue's limit is demoted to the
  tail of the next queue (running jobs visited in arrival order);
- then one pass: all GPUs are freed and the queues are walked from 0 in their order; a job that
  fits (GPU count) runs, one that does not is skipped (so smaller jobs behind it may start) and
  is preempted if it was running; after the pass each queue is reordered with its running jobs
  first and its pending jobs after them (each part in its previous order);
- the next demotion wake-up of a running job is ``now + ceil((limit - executed_s) / gpus)``
  under GPU time, a quirk of the reference (``executed_s`` is in seconds, not GPU-seconds:
  multi-GPU jobs are demoted a little late); ``now + limit - executed_s`` under 1D;
- no promotion in the reference (``solve_starvation = 0``); ``promote_factor > 0`` turns on the
  paper's starvation guard: a pending job that has run before and has waited ``promote_factor`` x
  its executed time since it last ran goes back to the tail of queue 0 with its executed time reset.

Under the realistic cost model the same decisions are placed on whole hosts (the job's GPUs found
after the preemptions of the pass; a job that finds none waits for the next pass) and every
preemption costs the simulator's restart. The pass counts GPUs per model, as the reference
does, so the model it counts a new job on need not be where the job can be placed (a job
counted on the V100s, displacing two running V100 jobs, may find no whole V100 host and start
on idle K80s; the next pass restarts the two). Placing first on idle GPUs and preempting only
for what still found none was tried (2026-12-03) and made it far worse (103959 at load 1.5:
1.4 M preemptions instead of 4,072, avg JCT 92 h instead of 48 h): the count and the
placements then disagree for the jobs that are kept, too. Not kept.
"""

from __future__ import annotations

import math

from gpufleet.sched.policy import Policy, SchedulerContext, allowed_models
from gpufleet.sched.simjob import SimJob

REFERENCE_THRESHOLDS = (3250.0, 7200.0)


class Tiresias(Policy):
    name = "tiresias"

    def __init__(
        self,
        thresholds: tuple[float, ...] = REFERENCE_THRESHOLDS,
        *,
        gpu_time: bool = True,
        promote_factor: float = 0.0,
    ) -> None:
        self.thresholds = tuple(thresholds)
        self.gpu_time = gpu_time
        self.promote_factor = promote_factor
        self.queues: list[list[SimJob]] = [[] for _ in range(len(self.thresholds) + 1)]
        self.qid: dict[int, int] = {}
        self.offset: dict[int, float] = {}  # seconds held forgiven at a promotion
        self.pending_for: dict[int, float] = {}  # seconds pending since it last ran (promotion)
        self.active: dict[int, SimJob] = {}  # every job in the system, in arrival order
        self.last_seen = 0.0
        self.next_jump = math.inf
        # a job's usable GPU models, with the count of exclusions they were made for (the
        # simulator only ever adds an exclusion, at an OOM)
        self._models: dict[int, tuple[int, list[str]]] = {}

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self.active[job.job_id] = job
        self.qid[job.job_id] = 0
        self.queues[0].append(job)

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self.queues[self.qid.pop(job.job_id)].remove(job)
        del self.active[job.job_id]
        self._models.pop(job.job_id, None)
        self.offset.pop(job.job_id, None)
        self.pending_for.pop(job.job_id, None)

    def on_withdraw(self, job: SimJob, now_seconds: float) -> None:
        if job.job_id in self.active:
            self.on_finish(job, now_seconds)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        """An OOM: the job stays in its queue, pending (the simulator excludes the GPU model)."""

    def _allowed(self, job: SimJob, models: list[str]) -> list[str]:
        known = self._models.get(job.job_id)
        excluded = len(job.excluded_gpu_models)
        if known is None or known[0] != excluded:
            known = self._models[job.job_id] = (excluded, allowed_models(job, models))
        return known[1]

    def executed(self, job: SimJob, now: float) -> float:
        """Seconds run since arrival or the last promotion (the reference's ``executed_time``)."""
        return job.held_now(now) - self.offset.get(job.job_id, 0.0)

    def _service(self, job: SimJob, now: float) -> float:
        executed = self.executed(job, now)
        return executed * job.num_gpus if self.gpu_time else executed

    def _update(self, ctx: SchedulerContext) -> None:
        """Demote running jobs past their queue's limit; promote starving ones (if enabled)."""
        now = ctx.now_seconds
        last = len(self.queues) - 1
        elapsed = now - self.last_seen
        self.last_seen = now
        if self.promote_factor > 0:
            jobs = list(self.active.values())
        else:  # only the running jobs due for demotion, in arrival order (as all of them)
            jobs = sorted(
                (
                    j
                    for j in ctx.running.values()
                    if self.qid[j.job_id] < last
                    and self._service(j, now) >= self.thresholds[self.qid[j.job_id]]
                ),
                key=lambda j: (j.arrival_seconds, j.job_id),
            )
        for job in jobs:
            q = self.qid[job.job_id]
            if job.placement is not None:
                if q < last and self._service(job, now) >= self.thresholds[q]:
                    self.queues[q].remove(job)
                    self.queues[q + 1].append(job)
                    self.qid[job.job_id] = q + 1
                continue
            executed = self.executed(job, now)
            if executed <= 0:
                continue
            waited = self.pending_for.get(job.job_id, 0.0) + elapsed
            self.pending_for[job.job_id] = waited
            if q > 0 and waited >= executed * self.promote_factor:
                self.queues[q].remove(job)
                self.queues[0].append(job)
                self.qid[job.job_id] = 0
                self.offset[job.job_id] = job.held_now(now)
                self.pending_for[job.job_id] = 0.0

    def schedule(self, ctx: SchedulerContext) -> None:
        cluster = ctx.cluster
        self._update(ctx)
        models = list(cluster.spec.gpu_models)
        capacity = {m: cluster.spec.gpus_of(m) for m in models}
        left = sum(capacity.values())
        widest = max(capacity.values(), default=0)  # the most GPUs any one model has left
        keep: set[int] = set()
        admit: list[SimJob] = []
        for queue in self.queues:
            for job in queue:
                if left <= 0:
                    break
                placement = job.placement
                if placement is not None:
                    model = placement.gpu_model
                    if capacity[model] >= job.num_gpus:
                        capacity[model] -= job.num_gpus
                        left -= job.num_gpus
                        keep.add(job.job_id)
                        widest = max(capacity.values())
                    continue
                if job.num_gpus > widest:
                    continue  # fits no model's GPUs left (the check below, made cheap)
                for model in self._allowed(job, models):
                    if capacity[model] >= job.num_gpus:
                        capacity[model] -= job.num_gpus
                        left -= job.num_gpus
                        admit.append(job)
                        widest = max(capacity.values())
                        break
        for job in [j for j in ctx.running.values() if j.job_id not in keep]:
            ctx.preempt(job)
            self.pending_for[job.job_id] = 0.0
        for job in admit:
            self._place(ctx, job, models)
        for i, queue in enumerate(self.queues):
            if queue:
                self.queues[i] = [j for j in queue if j.placement is not None] + [
                    j for j in queue if j.placement is None
                ]
        self.next_jump = self._next_jump(ctx)

    def _place(self, ctx: SchedulerContext, job: SimJob, models: list[str]) -> bool:
        for model in self._allowed(job, models):
            placement = ctx.cluster.find_whole(job.num_gpus, model)
            if placement is not None:
                ctx.start(job, placement)
                self.pending_for[job.job_id] = 0.0
                return True
        return False

    def _next_jump(self, ctx: SchedulerContext) -> float:
        now = ctx.now_seconds
        last = len(self.queues) - 1
        soonest = math.inf
        for job in ctx.running.values():
            q = self.qid[job.job_id]
            if q >= last:
                continue
            executed = self.executed(job, now)
            if self.gpu_time:  # the reference's quirk: seconds against a GPU-seconds limit
                jump = now + math.ceil((self.thresholds[q] - executed) / job.num_gpus)
            else:
                jump = now + self.thresholds[q] - executed
            soonest = min(soonest, jump)
        if self.promote_factor > 0:
            for job in self.active.values():
                if job.placement is None and self.qid[job.job_id] > 0:
                    executed = self.executed(job, now)
                    wait = executed * self.promote_factor - self.pending_for.get(job.job_id, 0.0)
                    if executed > 0 and wait > 0:
                        soonest = min(soonest, now + wait)
        return soonest

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return self.next_jump if math.isfinite(self.next_jump) else None
