"""When could a waiting job start? The shadow time and the hosts to hold for it (EASY backfill,
and gpufleet's reservations). Uses *predicted* remaining runtimes (a ``RuntimeEstimator``).

A job that needs ``k`` hosts (``ClusterState.hosts_needed``) can start at the first time ``t`` at
which some ``k`` hosts of one GPU model together have enough GPUs free -- exactly the hosts
``find_whole`` would then pick -- not when enough GPUs are free anywhere: a reservation on GPUs
scattered over more hosts than the job may span would hold GPUs it can never use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpufleet.sched.cluster import ClusterState
from gpufleet.sched.policy import RuntimeEstimator
from gpufleet.sched.simjob import SimJob


@dataclass(frozen=True, slots=True)
class Reservation:
    job_id: int
    start_seconds: float
    gpu_model: str
    host_ids: frozenset[int]

    def blocks(self, gpu_model: str, host_ids: Iterable[int], end_seconds: float) -> bool:
        """Would a job on these hosts, predicted to end then, delay the reserved job?"""
        if gpu_model != self.gpu_model or end_seconds <= self.start_seconds:
            return False
        return not self.host_ids.isdisjoint(host_ids)


def predicted_remaining(
    job: SimJob, model: str, now_seconds: float, estimator: RuntimeEstimator
) -> float:
    """Predicted seconds left on ``model``: the prediction less the work observed so far; a job
    past its prediction is assumed to need another 10% of it."""
    ratio = job.runtime_ratio_by_model.get(model, math.inf)
    total = estimator.predict_seconds(job)
    done = job.work_seconds
    if job.placement is not None and now_seconds > job.computing_since_seconds:
        done += (now_seconds - job.computing_since_seconds) / job.runtime_ratio_by_model.get(
            job.placement.gpu_model, 1.0
        )
    return max(total - done, 0.1 * total) * ratio


def predicted_end(job: SimJob, now_seconds: float, estimator: RuntimeEstimator) -> float:
    """Predicted end of a running job on its GPU model."""
    assert job.placement is not None
    start = max(now_seconds, job.computing_since_seconds)
    return start + predicted_remaining(job, job.placement.gpu_model, now_seconds, estimator)


def reserve(
    job: SimJob,
    cluster: ClusterState,
    running: Mapping[int, SimJob],
    now_seconds: float,
    gpu_models: Iterable[str],
    estimator: RuntimeEstimator,
) -> Reservation | None:
    """Earliest (predicted) time and hosts where ``job`` gets its GPUs, over the given models."""
    best: Reservation | None = None
    need = job.num_gpus
    ends_of: dict[int, float] = {}

    def end_of(job_id: int) -> float:
        """Predicted end of a holder; never, for one the caller does not list as running (a
        live queue's GPUs held by something it does not schedule)."""
        if job_id not in ends_of:
            holder = running.get(job_id)
            ends_of[job_id] = (
                math.inf if holder is None else predicted_end(holder, now_seconds, estimator)
            )
        return ends_of[job_id]

    for model in gpu_models:
        if cluster.spec.gpus_of(model) < need:
            continue
        spans = cluster.hosts_needed(need, model)
        per_host: list[tuple[int, list[float]]] = []
        for h in cluster.hosts_by_model[model]:
            ends = sorted(
                now_seconds if not holders else max(end_of(j) for j in holders)
                for holders in cluster.occupants[h]
            )
            per_host.append((h, ends))
        for t in sorted({e for _, ends in per_host for e in ends}):
            if best is not None and t >= best.start_seconds:
                break
            free_at = sorted(
                ((sum(1 for e in ends if e <= t), h) for h, ends in per_host), reverse=True
            )[:spans]
            if sum(count for count, _ in free_at) >= need:
                best = Reservation(job.job_id, t, model, frozenset(h for _, h in free_at))
                break
    return best
