"""Gavel's heterogeneity-aware policies as the linear programs of the paper (Narayanan et al.,
"Heterogeneity-Aware Cluster Scheduling Policies for Deep Learning Workloads", OSDI'20), solved
with scipy's HiGHS, and its round-based mechanism.

**The allocation.** ``X[m, j]`` is the fraction of time job ``m`` spends on GPU model ``j``;
``T[m, j]`` its throughput there (here ``1 / runtime ratio``: reference-GPU seconds of work per
second; 0 where it cannot run: not listed for it, excluded after an OOM, or more GPUs than the
model has); ``s_m`` its GPU count (Gavel's *scale factor*); ``n_j`` the GPUs of model ``j``. Every
objective shares the paper's constraints: ``0 <= X[m, j]`` (and ``X[m, j] = 0`` where
``T[m, j] = 0``), ``sum_j X[m, j] <= 1`` per job, ``sum_m s_m X[m, j] <= n_j`` per GPU model.
Effective throughput: ``throughput(m, X) = sum_j T[m, j] X[m, j]``.

- ``max_min`` (``gavel-lp``, the paper's heterogeneity-aware LAS): maximise
  ``min_m s_m throughput(m, X) / (w_m throughput(m, X_equal))``, ``X_equal`` the allocation that
  gives every job the same time share of each GPU model in proportion to its count (so
  ``throughput(m, X_equal)`` is proportional to ``sum_j n_j T[m, j]``); ``w_m = 1``; the ``s_m``
  factor is Gavel's own (a job on ``s`` GPUs gets ``1/s`` of the time a 1-GPU job gets: equal
  GPU-time). As an LP: maximise ``z`` with ``z <= sum_j c[m, j] X[m, j]`` for every job.
- ``makespan`` (``gavel-lp-makespan``, the paper's "minimise makespan"): minimise
  ``max_m R_m / throughput(m, X)``, ``R_m`` the job's predicted remaining work (reference-GPU
  seconds, from the online runtime predictor, never the truth). Gavel's code binary-searches the
  makespan with a feasibility LP per guess; with ``z = 1 / makespan`` it is one LP of the same form
  as max-min: maximise ``z`` with ``z <= sum_j (T[m, j] / R_m) X[m, j]``.
- ``min_jct`` (``gavel-lp-jct``): the paper gives no linear program for average JCT (the sum of
  ``R_m / throughput(m, X)`` is convex, not linear; its JCT baseline is AlloX). This is **our**
  linear form of it, within Gavel's framework: maximise ``sum_m throughput(m, X) / R_m``, the rate
  at which the jobs in play finish their predicted remaining work; its optimum gives each GPU
  model to the jobs with the highest ``T[m, j] / R_m`` (heterogeneity-aware shortest remaining
  predicted time first).

**The round mechanism** (the paper's section 5 and Gavel's ``scheduler.py``): rounds of 6 minutes.
At a round, when a job arrived (into the window below), finished or failed since the last
solution, the LP is solved again over the jobs in play and the time each job received is reset.
Each job's priority on GPU model ``j`` is ``X[m, j] / (time received on j / time since the
reset)``, or ``X[m, j] x 1e9`` if it has received none there since the reset (Gavel uses
``X x 1e9`` only before any time was counted on the model; see the differences below); ties by
the deficit (``X[m, j] x elapsed - received``), then by
``X[m, j]``. GPU models are visited in cluster order and, within one, the (job, model) entries in
decreasing priority; a job is taken if it is not taken yet, has throughput there and its GPUs fit
in what is left of the model (Gavel's ``_schedule_jobs_on_workers_helper`` without its global
queue; like Gavel, entries with zero allocation are still taken when GPUs are left). A running job
taken on its own model keeps its GPUs (Gavel's lease extension); every other running job is
preempted; the jobs taken are placed largest first (Gavel's order against fragmentation). A job
whose GPUs cannot be found (whole hosts under the realistic cost model) waits for the next round.

**What differs from Gavel, and why.** (1) The jobs in play are the running jobs and the oldest
``window_factor x GPUs`` waiting ones (Gavel solves over every active job): on Philly thousands
can wait, and a few hundred jobs per LP keep a solve in milliseconds. (2) Nothing happens between
rounds unless ``fill_between_rounds`` (off by default: Gavel's simulator waits for the round),
which starts waiting jobs on free GPUs in the same priority order, without preempting. (3) No
space sharing (Gavel's packing variant): like every other baseline here, one job per GPU.
(4) Gavel's scheduler credits every job with half a round at each reset and when it arrives, so
its priority is ``X / (received + 180 s)`` up to a factor common to the model; here a job that
received nothing since the reset ranks first (``X x 1e9``), so every job with an allocation gets
a turn before any gets a second. The two orders agree when all jobs have received time; resets
happen at every change of the jobs in play (on Philly, every few rounds). Not measured.

The policy reads only what a scheduler may: the jobs' spec and runtime ratios, the work observed
(``work_seconds``) and, for the two predictive objectives, the online predictor's predictions
(updated at each finish). ``stats`` counts the solves, the largest LP and the CPU seconds spent
in the solver (``time.process_time``: measured, never used for a decision).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.policy import Policy, RuntimeEstimator, SchedulerContext, allowed_models
from gpufleet.sched.queue import BlockList
from gpufleet.sched.simjob import SimJob

OBJECTIVES = ("max_min", "makespan", "min_jct")
NEW_JOB_PRIORITY = 1e9  # Gavel's factor for a job that has received no time since the reset


@dataclass
class Allocation:
    """The solution of one LP: ``x[m, j]`` and the objective's value (``z`` for max-min and
    makespan: the least normalised throughput, or 1 / makespan; the total rate for min_jct)."""

    x: np.ndarray
    value: float
    status: str


def _check(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ValueError(f"gavel LP: {name} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"gavel LP: {name} has a value that is not finite")
    if np.any(array < 0):
        bad = np.argwhere(array < 0)[0].tolist()
        raise ValueError(f"gavel LP: {name} is negative at {bad}")


def solve_allocation(
    throughput: np.ndarray,
    scale: np.ndarray,
    capacity: np.ndarray,
    objective: str = "max_min",
    remaining: np.ndarray | None = None,
    *,
    efficient: bool = True,
) -> Allocation:
    """Solve one of Gavel's LPs (see the module docstring).

    ``throughput``: jobs x GPU models, 0 where a job cannot run; ``scale``: GPUs per job;
    ``capacity``: GPUs per model; ``remaining``: predicted remaining work per job (makespan and
    min_jct only, > 0). A job with no throughput anywhere gets a zero row and does not bound the
    max-min value. Raises ValueError naming the bad argument.

    ``efficient`` (max-min and makespan): the paper's LP only fixes the worst-off job's share,
    so it has many optima, and a simplex solver returns a vertex that can leave time unused (one
    job on the fast GPU 62% of the time and idle otherwise). A second LP then picks, among the
    optima (the min held at its optimum, to 1e-7), the one with the largest sum of the same
    normalised throughputs. The objective's value is the paper's either way.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"gavel LP: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    throughput = np.asarray(throughput, dtype=float)
    if throughput.ndim != 2:
        raise ValueError(f"gavel LP: throughput must be jobs x GPU models, got {throughput.ndim}-D")
    n_jobs, n_models = throughput.shape
    scale = np.asarray(scale, dtype=float)
    capacity = np.asarray(capacity, dtype=float)
    _check("throughput", throughput, (n_jobs, n_models))
    _check("scale", scale, (n_jobs,))
    _check("capacity", capacity, (n_models,))
    if np.any(scale <= 0):
        raise ValueError(
            f"gavel LP: scale (GPUs per job) must be positive, job {int(np.argmin(scale))}"
        )
    if objective != "max_min":
        if remaining is None:
            raise ValueError(f"gavel LP: objective {objective} needs the remaining work per job")
        remaining = np.asarray(remaining, dtype=float)
        _check("remaining", remaining, (n_jobs,))
        if np.any(remaining <= 0):
            raise ValueError(
                f"gavel LP: remaining work must be positive, job {int(np.argmin(remaining))}"
            )
    if n_jobs == 0:
        return Allocation(np.zeros((0, n_models)), 0.0, "optimal")

    usable = throughput > 0
    if objective == "max_min":
        equal = throughput @ capacity / max(capacity.sum(), 1e-12)  # throughput(m, X_equal)
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = np.where(
                usable, throughput * (scale / np.where(equal > 0, equal, 1.0))[:, None], 0.0
            )
    else:
        assert remaining is not None
        coef = throughput / remaining[:, None]
    top = coef.max()
    if top <= 0:
        return Allocation(np.zeros((n_jobs, n_models)), 0.0, "optimal")
    coef = coef / top  # conditioning: the optimum's X does not change

    n_x = n_jobs * n_models
    rows_job = np.repeat(np.arange(n_jobs), n_models)
    cols_x = np.arange(n_x)
    # sum_j x[m, j] <= 1
    r1, c1, v1 = rows_job, cols_x, np.ones(n_x)
    # sum_m s_m x[m, j] <= n_j
    r2 = n_jobs + np.tile(np.arange(n_models), n_jobs)
    c2, v2 = cols_x, np.repeat(scale, n_models)
    b = [np.ones(n_jobs), capacity]
    bounds_hi = np.where(usable, 1.0, 0.0).ravel()
    if objective == "min_jct":
        shape = (n_jobs + n_models, n_x)
        a = coo_matrix(
            (np.concatenate([v1, v2]), (np.concatenate([r1, r2]), np.concatenate([c1, c2]))),
            shape=shape,
        ).tocsr()
        bounds = np.column_stack([np.zeros(n_x), bounds_hi])
        res = linprog(-coef.ravel(), A_ub=a, b_ub=np.concatenate(b), bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"gavel LP ({objective}): HiGHS says {res.message}")
        x = np.clip(res.x.reshape(n_jobs, n_models), 0.0, 1.0)
        return Allocation(x, float((coef * top * x).sum()), "optimal")

    # max z  s.t.  z - sum_j coef[m, j] x[m, j] <= 0 for each job that can run somewhere
    bounded = np.flatnonzero(usable.any(axis=1))
    base = n_jobs + n_models
    r3_x = base + np.searchsorted(bounded, rows_job)
    keep = np.isin(rows_job, bounded) & (coef.ravel() > 0)
    r3 = np.concatenate([r3_x[keep], base + np.arange(len(bounded))])
    c3 = np.concatenate([cols_x[keep], np.full(len(bounded), n_x)])
    v3 = np.concatenate([-coef.ravel()[keep], np.ones(len(bounded))])
    shape = (base + len(bounded), n_x + 1)
    a = coo_matrix(
        (
            np.concatenate([v1, v2, v3]),
            (np.concatenate([r1, r2, r3]), np.concatenate([c1, c2, c3])),
        ),
        shape=shape,
    ).tocsr()
    cost = np.zeros(n_x + 1)
    cost[-1] = -1.0
    bounds = np.column_stack([np.zeros(n_x + 1), np.concatenate([bounds_hi, [np.inf]])])
    b_ub = np.concatenate([*b, np.zeros(len(bounded))])
    res = linprog(
        cost,
        A_ub=a,
        b_ub=b_ub,
        bounds=bounds,
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"gavel LP ({objective}): HiGHS says {res.message}")
    z = float(res.x[-1])
    if efficient and z > 0:
        cost = np.concatenate([-coef.ravel(), [0.0]])
        bounds[-1] = (z * (1 - 1e-7), z * (1 - 1e-7))
        second = linprog(
            cost,
            A_ub=a,
            b_ub=b_ub,
            bounds=bounds,
            method="highs",
        )
        if second.status == 0:
            res = second
    x = np.clip(res.x[:n_x].reshape(n_jobs, n_models), 0.0, 1.0)
    return Allocation(x, z * top, "optimal")


def model_orders(
    allocation: np.ndarray,
    received: np.ndarray,
    elapsed_seconds: float,
    usable: np.ndarray,
) -> list[np.ndarray]:
    """Gavel's placement order, per GPU model (in order): the jobs (row indices) by decreasing
    priority ``X / (received / elapsed)`` (``X x 1e9`` for a job that received no time there),
    then deficit ``X x elapsed - received``, then allocation; jobs with no throughput on the model
    are left out. Ties keep the job order given (a stable sort)."""
    allocation = np.asarray(allocation, dtype=float)
    received = np.asarray(received, dtype=float)
    usable = np.asarray(usable, dtype=bool)
    if allocation.shape != received.shape or allocation.shape != usable.shape:
        raise ValueError(
            f"gavel round: allocation {allocation.shape}, received {received.shape} and usable "
            f"{usable.shape} must have the same shape"
        )
    if elapsed_seconds < 0 or not np.isfinite(elapsed_seconds):
        raise ValueError(f"gavel round: elapsed seconds must be >= 0, got {elapsed_seconds}")
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = received / elapsed_seconds if elapsed_seconds > 0 else np.zeros_like(received)
        priority = np.where(
            received > 0,
            allocation / np.where(fraction > 0, fraction, 1.0),
            allocation * NEW_JOB_PRIORITY,
        )
    deficit = allocation * elapsed_seconds - received
    index = np.arange(allocation.shape[0])
    out = []
    for j in range(allocation.shape[1]):
        rows = index[usable[:, j]]
        order = np.lexsort((-allocation[rows, j], -deficit[rows, j], -priority[rows, j]))
        out.append(rows[order])
    return out


def round_order(
    allocation: np.ndarray,
    received: np.ndarray,
    elapsed_seconds: float,
    usable: np.ndarray,
) -> list[tuple[int, int]]:
    """``model_orders`` as one list of (job row, model) entries, model by model."""
    return [
        (int(m), j)
        for j, rows in enumerate(model_orders(allocation, received, elapsed_seconds, usable))
        for m in rows
    ]


@dataclass
class GavelStats:
    solves: int = 0
    largest_lp_jobs: int = 0
    solve_cpu_seconds: float = 0.0
    max_solve_cpu_seconds: float = 0.0
    rounds: int = 0

    def as_dict(self) -> dict[str, Any]:
        per = self.solve_cpu_seconds / self.solves if self.solves else 0.0
        return {
            "lp_solves": self.solves,
            "lp_largest_jobs": self.largest_lp_jobs,
            "lp_cpu_s": self.solve_cpu_seconds,
            "lp_mean_ms": per * 1e3,
            "lp_max_ms": self.max_solve_cpu_seconds * 1e3,
            "rounds": self.rounds,
        }


class GavelLP(Policy):
    """Gavel's LP policies with its round mechanism (module docstring)."""

    round_seconds = 360.0
    window_factor = 2

    def __init__(
        self,
        spec: ClusterSpec,
        objective: str = "max_min",
        estimator: RuntimeEstimator | None = None,
        *,
        fill_between_rounds: bool = False,
        name: str | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(
                f"gavel-lp: objective {objective!r} is not one of {', '.join(OBJECTIVES)}"
            )
        if objective != "max_min" and estimator is None:
            raise ValueError(f"gavel-lp: objective {objective} needs a runtime estimator")
        self.objective = objective
        self.estimator = estimator
        self.fill_between_rounds = fill_between_rounds
        self.name = (
            name
            or {
                "max_min": "gavel-lp",
                "makespan": "gavel-lp-makespan",
                "min_jct": "gavel-lp-jct",
            }[objective]
        )
        self._models = list(spec.gpu_models)
        self._capacity = np.array([spec.gpus_of(m) for m in self._models], dtype=float)
        self._jobs: dict[int, SimJob] = {}  # active (not finished), arrival order
        self._waiting = BlockList()  # (arrival, job id) of waiting jobs
        # the jobs of the last LP (rows), their X, where they have throughput, the seconds each
        # received per GPU model since the reset, and whether each is still active
        self._ids: list[int] = []
        self._row: dict[int, int] = {}
        self._alloc = np.zeros((0, len(self._models)))
        self._usable = np.zeros((0, len(self._models)), dtype=bool)
        self._received = np.zeros((0, len(self._models)))
        self._alive = np.zeros(0, dtype=bool)
        self._on: dict[int, tuple[int, float]] = {}  # running job -> (model, counted up to)
        self._dirty = False
        self._reset_at = 0.0
        self.next_round = 0.0
        self.stats = GavelStats()

    # -- events ---------------------------------------------------------------------------
    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self._jobs[job.job_id] = job
        if len(self._waiting) < self._window():
            self._dirty = True
        self._waiting.add((job.arrival_seconds, job.job_id))

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self._forget(job.job_id)
        if self.estimator is not None:
            self.estimator.observe(job, job.work_seconds)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        # an OOM: the job waits again (the simulator may have excluded GPU models for it)
        self._count(job.job_id, now_seconds)
        self._on.pop(job.job_id, None)
        self._waiting.add((job.arrival_seconds, job.job_id))
        self._dirty = True

    def on_withdraw(self, job: SimJob, now_seconds: float) -> None:
        if job.job_id in self._jobs and job.job_id not in self._on:
            self._waiting.remove((job.arrival_seconds, job.job_id))
            self._forget(job.job_id)

    def _forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._on.pop(job_id, None)
        row = self._row.get(job_id)
        if row is not None:
            self._alive[row] = False
        self._dirty = True

    def _window(self) -> int:
        return int(self.window_factor * self._capacity.sum())

    # -- bookkeeping ----------------------------------------------------------------------
    def _count(self, job_id: int, now: float) -> None:
        """Add the time a running job held its GPUs since it was last counted."""
        on = self._on.get(job_id)
        if on is None:
            return
        model, since = on
        row = self._row.get(job_id)
        if row is not None and now > since:
            self._received[row, model] += now - since
        self._on[job_id] = (model, now)

    def _throughput_row(self, job: SimJob) -> np.ndarray:
        row = np.zeros(len(self._models))
        usable = allowed_models(job, self._models)
        for j, m in enumerate(self._models):
            if m in usable and job.num_gpus <= self._capacity[j]:
                row[j] = 1.0 / job.runtime_ratio_by_model[m]
        return row

    def _remaining(self, job: SimJob, now: float) -> float:
        """Predicted remaining work in reference-GPU seconds (reservation.predicted_remaining's
        rule: a job past its prediction is taken to need another 10% of it)."""
        assert self.estimator is not None
        total = max(self.estimator.predict_seconds(job), 1.0)
        done = job.work_seconds
        if job.placement is not None and now > job.computing_since_seconds:
            done += (now - job.computing_since_seconds) / job.runtime_ratio_by_model.get(
                job.placement.gpu_model, 1.0
            )
        return max(total - done, 0.1 * total)

    def _solve(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        ids = list(ctx.running) + [e[1] for e in self._waiting.head(self._window())]
        jobs = [self._jobs[i] for i in ids]
        n_models = len(self._models)
        throughput = (
            np.array([self._throughput_row(j) for j in jobs]) if jobs else np.zeros((0, n_models))
        )
        scale = np.array([j.num_gpus for j in jobs], dtype=float)
        remaining = (
            np.array([self._remaining(j, now) for j in jobs])
            if self.objective != "max_min"
            else None
        )
        started = time.process_time()
        result = solve_allocation(throughput, scale, self._capacity, self.objective, remaining)
        spent = time.process_time() - started
        stats = self.stats
        stats.solves += 1
        stats.solve_cpu_seconds += spent
        stats.max_solve_cpu_seconds = max(stats.max_solve_cpu_seconds, spent)
        stats.largest_lp_jobs = max(stats.largest_lp_jobs, len(jobs))
        self._ids = ids
        self._row = {i: k for k, i in enumerate(ids)}
        self._alloc = result.x
        self._usable = throughput > 0
        self._received = np.zeros((len(ids), n_models))  # Gavel's reset of the time received
        self._alive = np.ones(len(ids), dtype=bool)
        for job_id, (model, _) in self._on.items():
            self._on[job_id] = (model, now)
        self._reset_at = now
        self._dirty = False

    # -- the round ------------------------------------------------------------------------
    def schedule(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        running = ctx.running
        if len(self._on) != len(running):
            for job_id in [i for i in self._on if i not in running]:
                # stopped without a word to the policy: refused at an OOM on every model
                self._count(job_id, now)
                self._forget(job_id)
        if not self._jobs:
            return
        if now < self.next_round:
            if (
                self.fill_between_rounds
                and len(self._waiting)
                and any(ctx.cluster.free_by_model.values())
            ):
                if self._dirty:
                    self._solve(ctx)
                self._round(ctx, preempt=False)
            return
        self.next_round = now + self.round_seconds
        self.stats.rounds += 1
        for job_id in list(self._on):
            self._count(job_id, now)
        if self._dirty or not self._ids:
            self._solve(ctx)
        self._round(ctx, preempt=True)

    def _round(self, ctx: SchedulerContext, preempt: bool) -> None:
        now = ctx.now_seconds
        cluster = ctx.cluster
        if not self._ids:
            return
        received = self._received
        if not preempt:  # between rounds: the running jobs' current runs, not yet counted
            received = received.copy()
            for job_id, (model, since) in self._on.items():
                row = self._row.get(job_id)
                if row is not None and now > since:
                    received[row, model] += now - since
        usable = self._usable & self._alive[:, None]
        running = ctx.running
        if preempt:
            left = self._capacity.copy()
        else:
            left = np.array([cluster.free_by_model[m] for m in self._models], dtype=float)
        ids = self._ids
        jobs = self._jobs
        taken: dict[int, int] = {}
        if preempt:  # jobs that may not be preempted keep their GPUs: taken first
            for job in running.values():
                if not job.preemptible and job.placement is not None:
                    j = self._models.index(job.placement.gpu_model)
                    taken[job.job_id] = j
                    left[j] -= job.num_gpus
        orders = model_orders(self._alloc, received, now - self._reset_at, usable)
        for j, rows in enumerate(orders):
            room = left[j]
            for k in rows.tolist():
                if room <= 0:
                    break
                job_id = ids[k]
                if job_id in taken or (not preempt and job_id in running):
                    continue
                need = jobs[job_id].num_gpus
                if need > room:
                    continue
                room -= need
                taken[job_id] = j
            left[j] = room
        if preempt:
            for job in list(running.values()):
                pick = taken.get(job.job_id)
                assert job.placement is not None
                if pick is not None and self._models[pick] == job.placement.gpu_model:
                    continue  # the lease is extended: same GPUs, no restart
                self._count(job.job_id, now)
                self._on.pop(job.job_id, None)
                ctx.preempt(job)
                self._waiting.add((job.arrival_seconds, job.job_id))
        starts = sorted(
            (i for i in taken if i not in running),
            key=lambda i: (-jobs[i].num_gpus, jobs[i].arrival_seconds, i),
        )
        for job_id in starts:
            job = jobs[job_id]
            j = taken[job_id]
            placement = cluster.find_whole(job.num_gpus, self._models[j])
            if placement is None:
                continue  # no whole hosts free (realistic model): next round
            self._waiting.remove((job.arrival_seconds, job_id))
            ctx.start(job, placement)
            self._on[job_id] = (j, now)

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return self.next_round if self._jobs else None
