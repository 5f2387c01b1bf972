"""Runtime, memory and co-location predictor, trained from a benchmark table.

Method (chosen by measurement, docs/scheduler.md): in log space, a step time is a per-model effect
plus a per-GPU-model effect (``log t = a_model + b_gpu``, a two-way additive model fitted by
alternating means), optionally with a rank-k interaction (matrix completion). Co-location
slowdown is the same idea per GPU model: ``log s = alpha_own + beta_other``. Unseen models fall
back to their family's models at the same GPU count (nearest batch size); an unseen GPU model
falls back to its FP32 TFLOPS relative to the known ones; with neither, the predictor says it
does not know (``Prediction.known is False``) and the stated rule is: run the job with the GPU to
itself first and learn from what is observed (``observe``).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gpufleet.sched.bench_table import BenchRow, model_features

# FP32 TFLOPS per GPU (one die for K80), for GPU models missing from the table.
GPU_TFLOPS = {"k80": 4.37, "p100": 9.3, "v100": 15.7, "t4": 8.1, "a100": 19.5, "h100": 67.0}


# distance weights of the neighbour method (family differs, per log2 batch size, GPU count
# differs) and the softening of inverse-distance weights, and k = 4 neighbours: what an inner
# leave-one-pair-out picks (evaluate.nested_pair_error; 241 of 246 outer folds pick exactly these).
NEIGHBOR_WEIGHTS = (2.0, 0.4, 0.6, 0.02)


def fit_additive(
    entries: list[tuple[int, int, float]],
    n_rows: int,
    n_cols: int,
    rank: int = 0,
    reg: float = 0.1,
    iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``y[i, j] = a[i] + b[j] + u[i] . v[j]`` to observed entries (rank 0: no interaction)."""
    a = np.zeros(n_rows)
    b = np.zeros(n_cols)
    u = np.zeros((n_rows, rank))
    v = np.full((n_cols, rank), 0.1)
    if not entries:
        return a, b, u, v
    rows = np.array([e[0] for e in entries])
    cols = np.array([e[1] for e in entries])
    y = np.array([e[2] for e in entries])
    row_count = np.bincount(rows, minlength=n_rows).astype(float)
    col_count = np.bincount(cols, minlength=n_cols).astype(float)
    for _ in range(iterations):
        inter = np.einsum("ij,ij->i", u[rows], v[cols]) if rank else 0.0
        a = np.bincount(rows, y - b[cols] - inter, n_rows) / np.maximum(row_count, 1)
        b = np.bincount(cols, y - a[rows] - inter, n_cols) / np.maximum(col_count, 1)
        if rank:
            resid = y - a[rows] - b[cols]
            for i in range(n_rows):  # ridge regression per row, then per column
                mask = rows == i
                if mask.any():
                    vv = v[cols[mask]]
                    u[i] = np.linalg.solve(vv.T @ vv + reg * np.eye(rank), vv.T @ resid[mask])
            for j in range(n_cols):
                mask = cols == j
                if mask.any():
                    uu = u[rows[mask]]
                    v[j] = np.linalg.solve(uu.T @ uu + reg * np.eye(rank), uu.T @ resid[mask])
    return a, b, u, v


@dataclass(frozen=True)
class Prediction:
    value: float
    known: bool
    rule: str  # how it was obtained: "table", "family", "tflops", "unknown: ..."


class Predictor:
    """Predicts seconds per step, GPU memory and co-location slowdown; learns online."""

    def __init__(
        self, rows: Iterable[BenchRow], rank: int = 0, method: str = "neighbors", neighbors: int = 4
    ) -> None:
        self.rank = rank
        self.method = method
        self.neighbors = neighbors
        self.rows = list(rows)
        self.corrections: dict[tuple[str, str], float] = {}  # log(observed/predicted), smoothed
        self._fit()

    # -- fitting ------------------------------------------------------------------------------
    def _fit(self) -> None:
        alone = [r for r in self.rows if not r.colocated]
        self.models = sorted({r.model for r in alone})
        self.gpus = sorted({r.gpu_model for r in alone})
        mi = {m: i for i, m in enumerate(self.models)}
        gi = {g: i for i, g in enumerate(self.gpus)}
        samples: dict[tuple[int, int], list[float]] = defaultdict(list)
        for r in alone:
            samples[(mi[r.model], gi[r.gpu_model])].append(math.log(r.step_time_s))
        entries = [(i, j, float(np.mean(v))) for (i, j), v in samples.items()]
        self.observed = {(self.models[i], self.gpus[j]): y for i, j, y in entries}
        self.a, self.b, self.u, self.v = fit_additive(
            entries, len(self.models), len(self.gpus), self.rank
        )
        memory: dict[str, list[float]] = defaultdict(list)
        for r in self.rows:
            if r.gpu_mem_mib is not None and not r.colocated:
                memory[r.model].append(r.gpu_mem_mib)
        self.memory_mib = {m: max(v) for m, v in memory.items()}
        # co-location: log(step time shared / step time alone), per GPU model
        self.colo: dict[str, tuple[dict[str, float], dict[str, float], float]] = {}
        by_gpu: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        for r in self.rows:
            if len(r.colocated) == 1 and (r.model, r.gpu_model) in self.observed:
                slowdown = math.log(r.step_time_s) - self.observed[(r.model, r.gpu_model)]
                by_gpu[r.gpu_model].append((r.model, r.colocated[0], slowdown))
        for gpu, items in by_gpu.items():
            own = sorted({o for o, _, _ in items})
            other = sorted({x for _, x, _ in items})
            oi = {m: i for i, m in enumerate(own)}
            xi = {m: i for i, m in enumerate(other)}
            a, b, _, _ = fit_additive(
                [(oi[o], xi[x], s) for o, x, s in items], len(own), len(other)
            )
            mean = float(np.mean([s for _, _, s in items]))
            self.colo[gpu] = (
                {m: float(a[oi[m]]) for m in own},
                {m: float(b[xi[m]]) for m in other},
                mean,
            )

    # -- predictions --------------------------------------------------------------------------
    def _model_effect(self, model: str) -> tuple[float | None, str]:
        if model in self.models:
            return float(self.a[self.models.index(model)]), "table"
        family, batch, scale = model_features(model)
        kin = [
            (abs(math.log2(max(b, 1)) - math.log2(max(batch, 1))), self.a[i])
            for i, m in enumerate(self.models)
            for f, b, s in [model_features(m)]
            if f == family and s == scale
        ]
        if not kin:
            return None, f"unknown: model {model!r} was never benchmarked"
        nearest = min(d for d, _ in kin)
        return float(np.mean([a for d, a in kin if d == nearest])), "family"

    def _gpu_effect(self, gpu_model: str) -> tuple[float | None, str]:
        if gpu_model in self.gpus:
            return float(self.b[self.gpus.index(gpu_model)]), "table"
        known = [g for g in self.gpus if g in GPU_TFLOPS]
        if gpu_model not in GPU_TFLOPS or not known:
            return None, f"unknown: GPU model {gpu_model!r} was never benchmarked"
        est = [
            self.b[self.gpus.index(g)] + math.log(GPU_TFLOPS[g] / GPU_TFLOPS[gpu_model])
            for g in known
        ]
        return float(np.mean(est)), "tflops"

    def _neighbors_log_time(self, model: str, gpu_model: str) -> float | None:
        """Item-based matrix completion: the model's time on GPU models it ran on, times the
        speed ratio between GPU models of the most similar models (similar ratios between the
        other GPU models, same family, near batch size, same GPU count)."""
        mine = {g: y for (m, g), y in self.observed.items() if m == model}
        if not mine or gpu_model in mine:
            return None
        family, batch, scale = model_features(model)
        scored: list[tuple[float, float]] = []
        for other in self.models:
            if other == model or (other, gpu_model) not in self.observed:
                continue
            common = [g for g in mine if (other, g) in self.observed]
            if not common:
                continue
            f2, b2, s2 = model_features(other)
            ref = common[0]
            shape = [
                abs(
                    (mine[g] - mine[ref])
                    - (self.observed[(other, g)] - self.observed[(other, ref)])
                )
                for g in common[1:]
            ]
            w_family, w_batch, w_scale, _ = NEIGHBOR_WEIGHTS
            distance = (
                (float(np.mean(shape)) if shape else 0.5)
                + w_family * (f2 != family)
                + w_batch * abs(math.log2(max(batch, 1)) - math.log2(max(b2, 1)))
                + w_scale * (s2 != scale)
            )
            estimate = float(
                np.mean(
                    [
                        mine[g] + self.observed[(other, gpu_model)] - self.observed[(other, g)]
                        for g in common
                    ]
                )
            )
            scored.append((distance, estimate))
        if not scored:
            return None
        scored.sort()
        top = scored[: self.neighbors]
        weights = [1.0 / (NEIGHBOR_WEIGHTS[3] + d) ** 2 for d, _ in top]
        return sum(w * e for w, (_, e) in zip(weights, top, strict=True)) / sum(weights)

    def step_time(self, model: str, gpu_model: str) -> Prediction:
        """Seconds per step of ``model`` alone on one ``gpu_model`` (its GPU count in the name)."""
        correction = self.corrections.get((model, gpu_model), 0.0)
        if (model, gpu_model) in self.observed:
            return Prediction(
                math.exp(self.observed[(model, gpu_model)] + correction), True, "measured"
            )
        if self.method == "neighbors":
            log_t = self._neighbors_log_time(model, gpu_model)
            if log_t is not None:
                return Prediction(math.exp(log_t + correction), True, "neighbors")
        a, rule_a = self._model_effect(model)
        b, rule_b = self._gpu_effect(gpu_model)
        if a is None or b is None:
            rule = rule_a if a is None else rule_b
            return Prediction(
                math.nan,
                False,
                rule + "; rule: run it with the GPU to itself first "
                "and learn from the observed runtime",
            )
        log_t = a + b
        if self.rank and rule_a == "table" and rule_b == "table":
            log_t += float(self.u[self.models.index(model)] @ self.v[self.gpus.index(gpu_model)])
        log_t += self.corrections.get((model, gpu_model), 0.0)
        rule = "table" if rule_a == rule_b == "table" else f"{rule_a}+{rule_b}"
        return Prediction(math.exp(log_t), True, rule)

    def slowdown(self, model: str, other: str, gpu_model: str) -> Prediction:
        """Step time sharing a GPU with ``other`` over step time alone (>= 1 in practice)."""
        if gpu_model not in self.colo:
            return Prediction(math.nan, False, f"unknown: no co-location runs on {gpu_model!r}")
        own, others, mean = self.colo[gpu_model]
        if model not in own and other not in others:
            return Prediction(math.nan, False, "unknown: neither model was run shared")
        value = own.get(model, mean / 2) + others.get(other, mean / 2)
        return Prediction(math.exp(value), True, "table")

    def memory(self, model: str) -> Prediction:
        if model in self.memory_mib:
            return Prediction(self.memory_mib[model] * 2**20, True, "table")
        return Prediction(math.nan, False, f"unknown: no memory measured for {model!r}")

    # -- online learning ----------------------------------------------------------------------
    def observe(self, model: str, gpu_model: str, step_time_s: float, weight: float = 0.3) -> None:
        """A finished job's observed seconds per step; moves later predictions towards it."""
        predicted = self.step_time(model, gpu_model)
        if not predicted.known:
            self.rows.append(BenchRow(gpu_model, model, (), step_time_s))
            self._fit()
            return
        error = math.log(step_time_s / predicted.value)
        key = (model, gpu_model)
        self.corrections[key] = self.corrections.get(key, 0.0) + weight * error

    # -- the hooks the simulator's trace builder and policies use -------------------------------
    def runtime_ratio(self, job_type: str, scale: int, gpu_model: str) -> float | None:
        """Predicted runtime on ``gpu_model`` over runtime on a V100."""
        name = job_type if scale == 1 else f"{job_type} x{scale}"
        here, v100 = self.step_time(name, gpu_model), self.step_time(name, "v100")
        if not (here.known and v100.known):
            return None
        return here.value / v100.value

    def memory_bytes(self, job_type: str, scale: int) -> int | None:
        pred = self.memory(job_type)
        return int(pred.value) if pred.known else None

    def colocation_factor(self, job_type: str, other_type: str, gpu_model: str) -> float | None:
        pred = self.slowdown(job_type, other_type, gpu_model)
        return 1.0 / pred.value if pred.known else None


# -- job runtime, learnt online from finished jobs ------------------------------------------------


class OnlineRuntimePredictor:
    """Predicts a job's runtime (on the reference GPU model) from what is known at submission,
    learning only from jobs that have finished (``observe``, called as each one finishes).

    In log space, a shrinkage estimate down a hierarchy of groups the job belongs to: everything,
    its VC, its VC x GPU count, its user, its user x GPU count. Each level's mean of the recent
    log runtimes (the last ``window``) is pulled towards the level above by ``prior_weight``
    pseudo-observations, so a group seen once moves the estimate a little and a group seen often
    decides it. With nothing finished yet it says ``default_seconds``. (Philly has no users or
    models, so there the VC x GPU count level is what it has.)"""

    def __init__(
        self, window: int = 50, prior_weight: float = 3.0, default_seconds: float = 3600.0
    ) -> None:
        self.window = window
        self.prior_weight = prior_weight
        self.default_log = math.log(default_seconds)
        self._recent: dict[tuple[str, ...], list[float]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self.observed = 0

    @staticmethod
    def _levels(job: SimJobLike) -> list[tuple[str, ...]]:
        gpus = str(job.num_gpus)
        levels: list[tuple[str, ...]] = [("all",), ("vc", job.vc), ("vcg", job.vc, gpus)]
        if job.user:
            levels += [("user", job.user), ("userg", job.user, gpus)]
        return levels

    def predict_log(self, job: SimJobLike) -> float:
        estimate = self.default_log
        for key in self._levels(job):
            values = self._recent.get(key)
            if not values:
                continue
            n = len(values)
            mean = self._sums[key] / n
            estimate = (n * mean + self.prior_weight * estimate) / (n + self.prior_weight)
        return estimate

    def predict_seconds(self, job: SimJobLike) -> float:
        return math.exp(self.predict_log(job))

    def observe(self, job: SimJobLike, seconds: float) -> None:
        value = math.log(max(seconds, 1.0))
        self.observed += 1
        for key in self._levels(job):
            values = self._recent.setdefault(key, [])
            values.append(value)
            self._sums[key] = self._sums.get(key, 0.0) + value
            if len(values) > self.window:
                self._sums[key] -= values.pop(0)


class VcMedianPredictor:
    """Trivial baseline: the median runtime of the VC's finished jobs so far."""

    def __init__(self, default_seconds: float = 3600.0) -> None:
        self.default_seconds = default_seconds
        self._by_vc: dict[str, list[float]] = {}

    def predict_seconds(self, job: SimJobLike) -> float:
        values = self._by_vc.get(job.vc)  # kept sorted
        if not values:
            return self.default_seconds
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def observe(self, job: SimJobLike, seconds: float) -> None:
        bisect.insort(self._by_vc.setdefault(job.vc, []), seconds)


class LastSameShapePredictor:
    """Trivial baseline: the runtime of the last finished job of the same shape (user and GPU
    count where the trace has users, else VC and GPU count)."""

    def __init__(self, default_seconds: float = 3600.0) -> None:
        self.default_seconds = default_seconds
        self._last: dict[tuple[str, int], float] = {}

    def predict_seconds(self, job: SimJobLike) -> float:
        return self._last.get(
            (job.user, job.num_gpus), self._last.get((job.vc, job.num_gpus), self.default_seconds)
        )

    def observe(self, job: SimJobLike, seconds: float) -> None:
        self._last[(job.user, job.num_gpus)] = seconds
        self._last[(job.vc, job.num_gpus)] = seconds


class SimJobLike(Protocol):
    num_gpus: int
    vc: str
    user: str


def evaluate_online(
    rows: Iterable[tuple[float, float, SimJobLike]],
    predictors: dict[str, Callable[[], Any]],
) -> dict[str, dict[str, float]]:
    """Replays ``(submit_seconds, duration_seconds, job)`` in submission order: each job is
    predicted at its submission from the jobs finished by then (a job is taken to finish at
    submit + duration, the earliest it could: what a scheduler would know at best), then
    observed when it finishes. Per predictor: MAPE (%), median APE (%) and Spearman's rank
    correlation with the truth over all jobs."""
    from scipy.stats import spearmanr

    ordered = sorted(rows, key=lambda r: r[0])
    out: dict[str, dict[str, float]] = {}
    for name, factory in predictors.items():
        predictor = factory()
        finishing: list[tuple[float, int]] = []
        guesses: list[float] = []
        truths: list[float] = []
        for index, (submit, duration, job) in enumerate(ordered):
            while finishing and finishing[0][0] <= submit:
                _, done = heapq.heappop(finishing)
                predictor.observe(ordered[done][2], ordered[done][1])
            guesses.append(predictor.predict_seconds(job))
            truths.append(duration)
            heapq.heappush(finishing, (submit + duration, index))
        truth = np.maximum(np.array(truths), 1.0)
        guess = np.array(guesses)
        ape = np.abs(guess - truth) / truth * 100
        rho = spearmanr(guess, truth).statistic if len(truth) > 2 else math.nan
        out[name] = {
            "jobs": float(len(truth)),
            "mape_pct": float(ape.mean()),
            "median_ape_pct": float(np.median(ape)),
            "spearman": float(rho) if np.isfinite(rho) else 0.0,
        }
    return out
