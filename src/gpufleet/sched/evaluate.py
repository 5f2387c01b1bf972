"""Held-out error of the predictor on a benchmark table (``gpufleet predictor evaluate``).

Hold-out modes for the step time alone:
- ``pair``: each (model, GPU model) measurement is hidden in turn, when that model was measured on
  another GPU model and that GPU model ran other models;
- ``model``: all of one model's rows are hidden (it is predicted from its family);
- ``gpu_model``: all of one GPU model's rows are hidden (it is predicted from its TFLOPS).
Co-location slowdown is always checked with 10-fold cross-validation over the shared runs.
Methods compared: ``neighbors`` (item-based matrix completion: GPU speed ratios of the most
similar models), ``additive`` (log t = a_model + b_gpu: a per-GPU speed ratio), ``lowrank``
(additive plus a rank-1 interaction: matrix completion), ``forest`` (scikit-learn random forest
on model family, batch size, GPU count and GPU model, plus the model's additive effect).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from gpufleet.sched.bench_table import BenchRow, model_features
from gpufleet.sched.predictor import GPU_TFLOPS, Predictor

METHODS = ("neighbors", "additive", "lowrank", "forest")
HOLDOUTS = ("pair", "model", "gpu_model")


def _alone(rows: list[BenchRow]) -> list[BenchRow]:
    return [r for r in rows if not r.colocated]


def _forest_predict(train: list[BenchRow], test: list[BenchRow], seed: int = 0) -> list[float]:
    from sklearn.ensemble import RandomForestRegressor

    base = Predictor(train)
    families = sorted({model_features(r.model)[0] for r in train + test})
    gpus = sorted({r.gpu_model for r in train + test})

    def features(r: BenchRow) -> list[float]:
        family, batch, scale = model_features(r.model)
        effect = base._model_effect(r.model)[0]
        return ([float(family == f) for f in families] + [float(r.gpu_model == g) for g in gpus]
                + [math.log2(max(batch, 1)), float(scale), math.log(GPU_TFLOPS.get(r.gpu_model, 10.0)),
                   effect if effect is not None else 0.0])

    x = np.array([features(r) for r in train])
    y = np.array([math.log(r.step_time_s) for r in train])
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=1, random_state=seed)
    forest.fit(x, y)
    return [float(math.exp(p)) for p in forest.predict(np.array([features(r) for r in test]))]


def _predict(method: str, train: list[BenchRow], test: list[BenchRow]) -> list[float]:
    if method == "forest":
        return _forest_predict(train, test)
    predictor = Predictor(train, rank=1 if method == "lowrank" else 0,
                          method="neighbors" if method == "neighbors" else "additive")
    return [predictor.step_time(r.model, r.gpu_model).value for r in test]


def _mape(pairs: list[tuple[float, float]]) -> float:
    good = [(p, t) for p, t in pairs if math.isfinite(p)]
    return 100.0 * float(np.mean([abs(p - t) / t for p, t in good])) if good else math.nan


def alone_error(rows: list[BenchRow], holdout: str, method: str) -> dict[str, Any]:
    alone = _alone(rows)
    folds: list[tuple[list[BenchRow], list[BenchRow]]] = []
    if holdout == "pair":
        for r in alone:
            rest = [x for x in alone if x is not r]
            if (any(x.model == r.model for x in rest) and any(x.gpu_model == r.gpu_model for x in rest)):
                folds.append(([x for x in rest if not (x.model == r.model and x.gpu_model == r.gpu_model)], [r]))
    elif holdout == "model":
        for m in sorted({r.model for r in alone}):
            folds.append(([x for x in alone if x.model != m], [x for x in alone if x.model == m]))
    elif holdout == "gpu_model":
        for g in sorted({r.gpu_model for r in alone}):
            folds.append(([x for x in alone if x.gpu_model != g], [x for x in alone if x.gpu_model == g]))
    else:
        raise ValueError(f"holdout must be one of {', '.join(HOLDOUTS)}")
    pairs: list[tuple[float, float]] = []
    for train, test in folds:
        pairs += zip(_predict(method, train, test), [r.step_time_s for r in test], strict=True)
    covered = sum(1 for p, _ in pairs if math.isfinite(p))
    return {"mape_pct": _mape(pairs), "held_out": len(pairs), "predicted": covered}


def colocation_error(rows: list[BenchRow], method: str, folds: int = 10, seed: int = 0
                     ) -> dict[str, Any]:
    """10-fold error of the predicted slowdown (shared step time / alone step time)."""
    alone = {(r.model, r.gpu_model): r.step_time_s for r in _alone(rows)}
    shared = [r for r in rows if len(r.colocated) == 1 and (r.model, r.gpu_model) in alone]
    order = list(range(len(shared)))
    random.Random(seed).shuffle(order)
    pairs: list[tuple[float, float]] = []
    for k in range(folds):
        test_idx = set(order[k::folds])
        train = _alone(rows) + [r for i, r in enumerate(shared) if i not in test_idx]
        test = [shared[i] for i in sorted(test_idx)]
        truths = [r.step_time_s / alone[(r.model, r.gpu_model)] for r in test]
        if method == "forest":
            preds = _forest_colocation(train, test, alone)
        else:
            predictor = Predictor(train)
            preds = [predictor.slowdown(r.model, r.colocated[0], r.gpu_model).value for r in test]
        pairs += zip(preds, truths, strict=True)
    return {"mape_pct": _mape(pairs), "held_out": len(pairs)}


def _forest_colocation(train: list[BenchRow], test: list[BenchRow],
                       alone: dict[tuple[str, str], float]) -> list[float]:
    from sklearn.ensemble import RandomForestRegressor

    base = Predictor(train)

    def features(r: BenchRow) -> list[float]:
        own, other = r.model, r.colocated[0]
        additive = base.slowdown(own, other, r.gpu_model)
        f1, b1, _ = model_features(own)
        f2, b2, _ = model_features(other)
        return [math.log(additive.value) if additive.known else 0.0,
                math.log2(max(b1, 1)), math.log2(max(b2, 1)), float(hash(f1) % 97), float(hash(f2) % 97),
                math.log(alone.get((own, r.gpu_model), 1.0)), math.log(alone.get((other, r.gpu_model), 1.0))]

    shared_train = [r for r in train if r.colocated]
    x = np.array([features(r) for r in shared_train])
    y = np.array([math.log(r.step_time_s / alone[(r.model, r.gpu_model)]) for r in shared_train])
    forest = RandomForestRegressor(n_estimators=200, random_state=0).fit(x, y)
    return [float(math.exp(p)) for p in forest.predict(np.array([features(r) for r in test]))]


def evaluate(rows: list[BenchRow], holdout: str, methods: tuple[str, ...] = METHODS,
             on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"holdout": holdout, "methods": {}}
    for method in methods:
        if on_step:
            on_step(method)
        out["methods"][method] = {
            "step_time": alone_error(rows, holdout, method),
            "colocation_slowdown": colocation_error(rows, method),
        }
    best = min(methods, key=lambda m: out["methods"][m]["step_time"]["mape_pct"])
    out["best_method"] = best
    return out
