"""Non-preemptive baselines: FIFO, FIFO with EASY backfill, and the oracle SJF study.

They place like the literature does: memory-unaware (GPU count only), first GPU model in cluster
order with enough free GPUs. A job that ran out of memory waits again (the simulator excludes GPU
models too small for it).

``sjf`` is an **oracle**: the runner hands it the true runtimes (``sjf-noisy``: the true runtimes
times log-normal noise). It is a study of what perfect (or noisy-perfect) knowledge would give,
never a baseline a claim is made against. EASY uses the online runtime predictor (the same one
the gpufleet policy is given), as a real EASY would use the users' estimates.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.sched.policy import (
    Policy,
    RuntimeEstimator,
    SchedulerContext,
    allowed_models,
    first_fit_placement,
)
from gpufleet.sched.queue import SortedQueue
from gpufleet.sched.reservation import Reservation, predicted_remaining, reserve
from gpufleet.sched.simjob import SimJob


class Fifo(Policy):
    """First come, first placed; the head of the queue blocks everyone behind it."""

    name = "fifo"

    def __init__(self) -> None:
        self.queue = SortedQueue(lambda j: (j.arrival_seconds,))

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self.queue.add(job)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self.queue.add(job)

    def on_withdraw(self, job: SimJob, now_seconds: float) -> None:
        if job.job_id in self.queue:
            self.queue.remove(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        models = ctx.cluster.spec.gpu_models
        while (job := self.queue.first()) is not None:
            placement = first_fit_placement(job, ctx.cluster, models)
            if placement is None:
                return
            self.queue.remove(job)
            ctx.start(job, placement)


class ShortestJobFirst(Fifo):
    """ORACLE study: shortest runtime first, the runtimes handed to it by the runner (true, or
    true x noise for the noisy-oracle study); skips jobs that do not fit and places any that do.
    """

    name = "sjf"
    oracle = True
    scan_limit = 256

    def __init__(self, oracle_seconds: Mapping[int, float], name: str = "sjf") -> None:
        self.name = name
        self.queue = SortedQueue(lambda j: (oracle_seconds[j.job_id], j.arrival_seconds))

    def schedule(self, ctx: SchedulerContext) -> None:
        cluster = ctx.cluster
        models = cluster.spec.gpu_models
        room = max(cluster.free_count)  # most free GPUs on one host
        smallest_host = min(h.num_gpus for h in cluster.hosts)
        for job in self.queue.head(self.scan_limit):
            if room == 0:
                return
            if room < job.num_gpus <= smallest_host:
                continue
            placement = first_fit_placement(job, cluster, models)
            if placement is not None:
                self.queue.remove(job)
                ctx.start(job, placement)
                room = max(cluster.free_count)


class EasyBackfill(Fifo):
    """FIFO; when the head does not fit it gets a reservation at its predicted earliest start,
    and later jobs start now if they fit and do not delay it (predicted runtimes)."""

    name = "easy"
    backfill_depth = 512

    def __init__(self, estimator: RuntimeEstimator) -> None:
        super().__init__()
        self.estimator = estimator
        self.reservation: Reservation | None = None

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self.estimator.observe(job, job.work_seconds)

    def schedule(self, ctx: SchedulerContext) -> None:
        super().schedule(ctx)  # start jobs from the head while they fit
        head = self.queue.first()
        self.reservation = None
        if head is None:
            return
        cluster = ctx.cluster
        now = ctx.now_seconds
        models = cluster.spec.gpu_models
        self.reservation = reserve(
            head, cluster, ctx.running, now, allowed_models(head, models), self.estimator
        )
        res = self.reservation
        reserved = res.host_ids if res is not None else frozenset()

        reserved_model = res.gpu_model if res is not None else None

        def largest_free(model: str, skip_reserved: bool) -> int:
            return max(
                (
                    cluster.free_count[h]
                    for h in cluster.hosts_by_model[model]
                    if not (skip_reserved and model == reserved_model and h in reserved)
                ),
                default=0,
            )

        room = {m: (largest_free(m, False), largest_free(m, True) if res else None) for m in models}
        for job in self.queue.head(self.backfill_depth):
            if job is head:
                continue
            if not any(r[0] for r in room.values()):
                return
            for model in allowed_models(job, models):
                any_host, unreserved = room[model]
                if job.num_gpus <= cluster.host_size(model) and job.num_gpus > any_host:
                    continue
                end = now + predicted_remaining(job, model, now, self.estimator)
                may_block = res is not None and res.gpu_model == model and end > res.start_seconds
                if (
                    may_block
                    and job.num_gpus <= cluster.host_size(model)
                    and job.num_gpus > (unreserved or 0)
                ):
                    continue
                placement = cluster.find_whole(
                    job.num_gpus, model, avoid_hosts=reserved if may_block else ()
                )
                if placement is None:
                    continue
                self.queue.remove(job)
                ctx.start(job, placement)
                room[model] = (
                    largest_free(model, False),
                    largest_free(model, True) if res else None,
                )
                break
