"""What the queue page and ``GET /api/v1/jobs`` show (one function for both): pending jobs with
the reason they wait and a projected start, running jobs with host, GPUs, elapsed and predicted
end, finished jobs with true vs predicted runtime, the counts and the service's status.

The projected start is an estimate, and says so: the pending jobs in the order the policy
would see them arrive (priority first), each given the first moment its GPU count is free in
one GPU-model pool, counting running jobs to end at their predicted end (never before now) and
the jobs projected ahead of it to hold their GPUs for their predicted runtime. It ignores host
boundaries and preemption; the policy decides, this only projects.
"""

from __future__ import annotations

import heapq
from typing import Any

from gpufleet.i18n import ENGLISH, pmsg
from gpufleet.queue import store as st
from gpufleet.queue.driver import PRIORITY_SECONDS, QueueDriver, num_gpus
from gpufleet.queue.store import JobRecord

FORECAST_LIMIT = 200


def projected_starts(
    driver: QueueDriver, running: list[JobRecord], pending: list[JobRecord], now: float
) -> dict[int, float]:
    pools: dict[str, list[tuple[float, int]]] = {}  # model -> heap of (free at, GPUs)
    for model, free in driver.cluster.free_by_model.items():
        pools[model] = [(now, free)] if free > 0 else []
    for record in running:
        model = record.gpu_model or ""
        if model not in pools:
            continue
        end = (record.start_seconds or now) + (record.predicted_runtime_seconds or 0.0)
        heapq.heappush(pools[model], (max(now, end), num_gpus(record.gpus)))
    out: dict[int, float] = {}
    order = sorted(pending, key=lambda r: r.submit_seconds - r.priority * PRIORITY_SECONDS)
    for record in order[:FORECAST_LIMIT]:
        view = driver.jobs.get(record.id)
        models = list(view.runtime_ratio_by_model) if view is not None else list(pools)
        need = num_gpus(record.gpus)
        best: tuple[float, str] | None = None
        for model in models:
            pool = sorted(pools.get(model, []))
            have = 0
            for at, gpus in pool:
                have += gpus
                if have >= need:
                    if best is None or at < best[0]:
                        best = (at, model)
                    break
        if best is None:
            continue
        at, model = best
        out[record.id] = at
        pool = sorted(pools[model])
        taken, rest = 0, []
        for free_at, gpus in pool:
            if taken < need and free_at <= at:
                use = min(gpus, need - taken)
                taken += use
                if gpus > use:
                    rest.append((free_at, gpus - use))
            else:
                rest.append((free_at, gpus))
        rest.append((at + (record.predicted_runtime_seconds or 0.0), need))
        heapq.heapify(rest)
        pools[model] = rest
    return out


def row(record: JobRecord, driver: QueueDriver, now: float) -> dict[str, Any]:
    out = record.to_json()
    out["spec"] = {k: v for k, v in record.spec.items() if v not in (None, [], "")}
    if record.state in (st.PENDING, st.HELD):
        # English for programs, and the same as a message (i18n.Msg) for the page and the CLI
        why = (
            pmsg("job state", "held")
            if record.state == st.HELD
            else driver.waiting_reason_msg(record.id)
        )
        out["waiting_reason"] = why.render(ENGLISH) if why is not None else ""
        out["waiting_reason_i18n"] = why.as_json() if why is not None else None
        out["waited_seconds"] = now - record.submit_seconds
    if record.state in st.ACTIVE and record.start_seconds is not None:
        out["elapsed_seconds"] = now - record.start_seconds
        if record.predicted_runtime_seconds is not None:
            out["predicted_end_seconds"] = record.start_seconds + record.predicted_runtime_seconds
    return out


def queue_view(
    store: st.JobStore,
    driver: QueueDriver,
    status: dict[str, Any],
    now: float,
    state: str | None = None,
    user: str | None = None,
    history_limit: int = 100,
) -> dict[str, Any]:
    live = store.jobs(states=[st.PENDING, st.HELD, st.DISPATCHING, st.RUNNING], user=user)
    running = [r for r in live if r.state in st.ACTIVE]
    pending = [r for r in live if r.state == st.PENDING]
    starts = projected_starts(driver, running, pending, now)
    if state is not None:
        records = store.jobs(states=[state], user=user, limit=history_limit * 10, newest_first=True)
    else:
        finished = store.jobs(states=sorted(st.FINAL), user=user, limit=history_limit,
                              newest_first=True)  # fmt: skip
        records = live + finished
    rows = []
    for record in records:
        item = row(record, driver, now)
        if record.id in starts:
            item["projected_start_seconds"] = starts[record.id]
        rows.append(item)
    return {
        "now": now,
        "jobs": rows,
        "counts": dict(store.counts()),
        "status": status,
        "held_gpus": driver.held_gpus(),
    }
