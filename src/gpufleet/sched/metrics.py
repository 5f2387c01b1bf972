"""Summary figures of one simulation run (the JSON ``gpufleet simulate`` prints per policy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gpufleet.sched.sim import SimResult

LARGE_JOB_GPUS = 8


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def summarize(result: SimResult) -> dict[str, Any]:
    done = [j for j in result.jobs if j.finish_seconds is not None]
    finish = [float(j.finish_seconds or 0.0) for j in done]
    jct = np.array([f - j.arrival_seconds for f, j in zip(finish, done, strict=True)], dtype=float)
    run = np.array([j.best_alone_seconds for j in done], dtype=float)
    run = np.where(np.isfinite(run), run, 0.0)
    queue = np.array(
        [
            max(0.0, f - j.arrival_seconds - j.run_seconds)
            for f, j in zip(finish, done, strict=True)
        ],
        dtype=float,
    )
    first_arrival = min((j.arrival_seconds for j in result.jobs), default=0.0)
    last_finish = max(finish, default=first_arrival)
    makespan = float(last_finish - first_arrival)
    rho = []
    for j, t in zip(done, jct, strict=True):
        if not math.isfinite(j.best_alone_seconds) or j.best_alone_seconds <= 0:
            continue
        share = max(1.0, j.mean_jobs_in_system * j.num_gpus / result.total_gpus)
        rho.append(t / (j.best_alone_seconds * share))
    large_waits = [q for j, q in zip(done, queue, strict=True) if j.num_gpus >= LARGE_JOB_GPUS]
    large_waits += [
        makespan - j.arrival_seconds + first_arrival
        for j in result.jobs
        if j.finish_seconds is None and j.num_gpus >= LARGE_JOB_GPUS
    ]
    return {
        "avg_jct_s": float(jct.mean()) if jct.size else 0.0,
        "p50_jct_s": _pct(jct, 50),
        "p99_jct_s": _pct(jct, 99),
        "makespan_s": makespan,
        "avg_queue_s": float(queue.mean()) if queue.size else 0.0,
        "avg_wait_s": float((jct - run).mean()) if jct.size else 0.0,
        "p99_queue_s": _pct(queue, 99),
        "gpu_utilization": (
            result.busy_gpu_seconds / (result.total_gpus * makespan) if makespan > 0 else 0.0
        ),
        "ftf_rho": float(np.mean(rho)) if rho else 0.0,
        "ftf_rho_max": float(np.max(rho)) if rho else 0.0,
        "max_wait_large_s": float(max(large_waits, default=0.0)),
        "oom_failures": result.oom_failures,
        "preemptions": result.preemptions,
        "unfinished_jobs": result.unfinished_jobs,
        "refused_jobs": len(result.refused),
        "cost_model": result.cost_model,
        "jobs": len(result.jobs),
        "sim_wall_s": result.sim_wall_s,
        "jobs_per_second": len(result.jobs) / result.sim_wall_s if result.sim_wall_s > 0 else 0.0,
    }
