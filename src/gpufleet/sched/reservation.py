"""When could a waiting job start? The shadow time and the GPUs to hold for it (EASY backfill,
and gpufleet's reservations for starving jobs). Uses *predicted* remaining runtimes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpufleet.sched.cluster import ClusterState
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


def predicted_end(job: SimJob, now_seconds: float) -> float:
    """Predicted end of a running job: now plus its predicted remaining time on its GPU model."""
    assert job.placement is not None
    model = job.placement.gpu_model
    remaining = job.predicted_duration_seconds.get(model, math.inf) * (
        1.0 - job.progress_at(now_seconds)
    )
    start = max(now_seconds, job.progress_from_seconds)
    # A job past its prediction is assumed to end soon (in 10% of its prediction).
    return start + max(remaining, 0.1 * job.predicted_duration_seconds.get(model, 0.0))


def reserve(
    job: SimJob,
    cluster: ClusterState,
    running: Mapping[int, SimJob],
    now_seconds: float,
    gpu_models: Iterable[str],
) -> Reservation | None:
    """Earliest (predicted) time and hosts where ``job`` gets its GPUs, over the given models."""
    best: Reservation | None = None
    need = job.num_gpus
    ends_of: dict[int, float] = {}

    def end_of(job_id: int) -> float:
        if job_id not in ends_of:
            ends_of[job_id] = predicted_end(running[job_id], now_seconds)
        return ends_of[job_id]

    for model in gpu_models:
        if cluster.spec.gpus_of(model) < need:
            continue
        per_host: list[tuple[int, list[float]]] = []
        for h in cluster.hosts_by_model[model]:
            ends = []
            for holders in cluster.occupants[h]:
                if not holders:
                    ends.append(now_seconds)
                else:
                    ends.append(max(end_of(j) for j in holders))
            ends.sort()
            per_host.append((h, ends))
        if need <= cluster.host_size(model):
            options = [(ends[need - 1], h) for h, ends in per_host if len(ends) >= need]
            if not options:
                continue
            t, h = min(options)
            candidate = Reservation(job.job_id, t, model, frozenset([h]))
        else:
            pool = sorted((t, h) for h, ends in per_host for t in ends)
            t = pool[need - 1][0]
            hosts = frozenset(h for tt, h in pool[:need])
            candidate = Reservation(job.job_id, t, model, hosts)
        if best is None or candidate.start_seconds < best.start_seconds:
            best = candidate
    return best
