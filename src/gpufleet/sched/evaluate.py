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
BASELINE_METHOD = "model-mean"  # the per-model mean step time, the bar to beat
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
        return (
            [float(family == f) for f in families]
            + [float(r.gpu_model == g) for g in gpus]
            + [
                math.log2(max(batch, 1)),
                float(scale),
                math.log(GPU_TFLOPS.get(r.gpu_model, 10.0)),
                effect if effect is not None else 0.0,
            ]
        )

    x = np.array([features(r) for r in train])
    y = np.array([math.log(r.step_time_s) for r in train])
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=1, random_state=seed)
    forest.fit(x, y)
    return [float(math.exp(p)) for p in forest.predict(np.array([features(r) for r in test]))]


def _model_mean(train: list[BenchRow], test: list[BenchRow]) -> list[float]:
    """Baseline: the model's geometric-mean step time over the GPU models it was measured on
    (NaN -- not predicted -- when the model was never measured)."""
    logs: dict[str, list[float]] = {}
    for r in train:
        logs.setdefault(r.model, []).append(math.log(r.step_time_s))
    return [float(math.exp(np.mean(logs[r.model]))) if r.model in logs else math.nan for r in test]


def _predict(method: str, train: list[BenchRow], test: list[BenchRow]) -> list[float]:
    if method == "forest":
        return _forest_predict(train, test)
    if method == BASELINE_METHOD:
        return _model_mean(train, test)
    predictor = Predictor(
        train,
        rank=1 if method == "lowrank" else 0,
        method="neighbors" if method == "neighbors" else "additive",
    )
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
            if any(x.model == r.model for x in rest) and any(
                x.gpu_model == r.gpu_model for x in rest
            ):
                folds.append(
                    (
                        [
                            x
                            for x in rest
                            if not (x.model == r.model and x.gpu_model == r.gpu_model)
                        ],
                        [r],
                    )
                )
    elif holdout == "model":
        for m in sorted({r.model for r in alone}):
            folds.append(([x for x in alone if x.model != m], [x for x in alone if x.model == m]))
    elif holdout == "gpu_model":
        for g in sorted({r.gpu_model for r in alone}):
            folds.append(
                ([x for x in alone if x.gpu_model != g], [x for x in alone if x.gpu_model == g])
            )
    else:
        raise ValueError(f"holdout must be one of {', '.join(HOLDOUTS)}")
    pairs: list[tuple[float, float]] = []
    for train, test in folds:
        pairs += zip(_predict(method, train, test), [r.step_time_s for r in test], strict=True)
    covered = sum(1 for p, _ in pairs if math.isfinite(p))
    return {"mape_pct": _mape(pairs), "held_out": len(pairs), "predicted": covered}


def colocation_error(
    rows: list[BenchRow], method: str, folds: int = 10, seed: int = 0
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


def _forest_colocation(
    train: list[BenchRow], test: list[BenchRow], alone: dict[tuple[str, str], float]
) -> list[float]:
    from sklearn.ensemble import RandomForestRegressor

    base = Predictor(train)

    def features(r: BenchRow) -> list[float]:
        own, other = r.model, r.colocated[0]
        additive = base.slowdown(own, other, r.gpu_model)
        f1, b1, _ = model_features(own)
        f2, b2, _ = model_features(other)
        return [
            math.log(additive.value) if additive.known else 0.0,
            math.log2(max(b1, 1)),
            math.log2(max(b2, 1)),
            float(hash(f1) % 97),
            float(hash(f2) % 97),
            math.log(alone.get((own, r.gpu_model), 1.0)),
            math.log(alone.get((other, r.gpu_model), 1.0)),
        ]

    shared_train = [r for r in train if r.colocated]
    x = np.array([features(r) for r in shared_train])
    y = np.array([math.log(r.step_time_s / alone[(r.model, r.gpu_model)]) for r in shared_train])
    forest = RandomForestRegressor(n_estimators=200, random_state=0).fit(x, y)
    return [float(math.exp(p)) for p in forest.predict(np.array([features(r) for r in test]))]


def evaluate(
    rows: list[BenchRow],
    holdout: str,
    methods: tuple[str, ...] = METHODS,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"holdout": holdout, "methods": {}}
    for method in methods:
        if on_step:
            on_step(method)
        out["methods"][method] = {"step_time": alone_error(rows, holdout, method)}
        if method != BASELINE_METHOD:
            out["methods"][method]["colocation_slowdown"] = colocation_error(rows, method)
    out["methods"].setdefault(
        BASELINE_METHOD, {"step_time": alone_error(rows, holdout, BASELINE_METHOD)}
    )
    # a method that predicted nothing (or whose error is not a number) is never "best"
    scored = [
        m
        for m in methods
        if m != BASELINE_METHOD
        and out["methods"][m]["step_time"]["predicted"] > 0
        and math.isfinite(out["methods"][m]["step_time"]["mape_pct"])
    ]
    best = min(scored, key=lambda m: out["methods"][m]["step_time"]["mape_pct"], default=None)
    out["best_method"] = best
    base = out["methods"][BASELINE_METHOD]["step_time"]
    if best is None:
        out["beats_baseline"] = None
    elif base["predicted"] == 0 or not math.isfinite(base["mape_pct"]):
        out["beats_baseline"] = None  # the baseline predicts nothing in this holdout mode
    else:
        out["beats_baseline"] = out["methods"][best]["step_time"]["mape_pct"] < base["mape_pct"]
    return out


# -- honest hyper-parameters for the neighbour method: nested leave-one-pair-out ---------------
NEIGHBOR_GRID: dict[str, tuple[float, ...]] = {
    "k": (2.0, 3.0, 4.0, 5.0, 8.0),
    "w_family": (0.5, 1.0, 2.0),
    "w_batch": (0.1, 0.2, 0.4),
    "w_scale": (0.15, 0.3, 0.6),
    "soft": (0.02, 0.1),
}


def _grid(grid: dict[str, tuple[float, ...]]) -> np.ndarray:
    mesh = np.meshgrid(*grid.values(), indexing="ij")
    return np.stack(
        [m.ravel() for m in mesh], axis=1
    )  # columns: k, w_family, w_batch, w_scale, soft


def _candidates(
    observed: dict[tuple[str, str], float], model: str, gpu: str
) -> dict[str, tuple[float, float, float, float, float]]:
    """Per neighbour model: (shape distance, family differs, log2 batch gap, GPU count differs,
    log-time estimate) -- exactly the terms of ``Predictor._neighbors_log_time``."""
    mine = {g: y for (m, g), y in observed.items() if m == model and g != gpu}
    out: dict[str, tuple[float, float, float, float, float]] = {}
    if not mine:
        return out
    family, batch, scale = model_features(model)
    others = {m for (m, g) in observed if g == gpu and m != model}
    for other in others:
        common = [g for g in mine if (other, g) in observed]
        if not common:
            continue
        f2, b2, s2 = model_features(other)
        ref = common[0]
        shape = [
            abs((mine[g] - mine[ref]) - (observed[(other, g)] - observed[(other, ref)]))
            for g in common[1:]
        ]
        estimate = float(
            np.mean([mine[g] + observed[(other, gpu)] - observed[(other, g)] for g in common])
        )
        out[other] = (
            float(np.mean(shape)) if shape else 0.5,
            float(f2 != family),
            abs(math.log2(max(batch, 1)) - math.log2(max(b2, 1))),
            float(s2 != scale),
            estimate,
        )
    return out


Cands = dict[str, tuple[float, float, float, float, float]]


def _grid_predictions(cands: list[Cands], grid: np.ndarray) -> np.ndarray:
    """Log-time prediction of every problem (rows of ``cands``) under every grid point: [G, P]."""
    width = max((len(c) for c in cands), default=0)
    n = len(cands)
    feats = np.full((n, max(width, 1), 5), np.nan)
    for i, c in enumerate(cands):
        if c:
            feats[i, : len(c)] = np.array(list(c.values()))
    valid = ~np.isnan(feats[:, :, 0])
    out = np.full((len(grid), n), np.nan)
    for gi, (k, wf, wb, ws, soft) in enumerate(grid):
        dist = feats[:, :, 0] + wf * feats[:, :, 1] + wb * feats[:, :, 2] + ws * feats[:, :, 3]
        dist = np.where(valid, dist, np.inf)
        order = np.argsort(dist, axis=1, kind="stable")[:, : int(k)]
        d = np.take_along_axis(dist, order, axis=1)
        e = np.take_along_axis(feats[:, :, 4], order, axis=1)
        w = np.where(np.isfinite(d), 1.0 / (soft + np.where(np.isfinite(d), d, 0.0)) ** 2, 0.0)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[gi] = np.where(total > 0, (w * np.nan_to_num(e)).sum(axis=1) / total, np.nan)
    return out


def nested_pair_error(
    rows: list[BenchRow], grid: dict[str, tuple[float, ...]] | None = None
) -> dict[str, Any]:
    """Pair-held-out MAPE of the neighbour method with its hyper-parameters chosen, for each held-out
    pair, by an inner leave-one-pair-out over the *other* pairs only (the held-out pair is never
    seen while choosing). Returns the MAPE and how often each choice was made."""
    alone = _alone(rows)
    logs: dict[tuple[str, str], list[float]] = {}
    truth: dict[tuple[str, str], list[float]] = {}
    for r in alone:
        logs.setdefault((r.model, r.gpu_model), []).append(math.log(r.step_time_s))
        truth.setdefault((r.model, r.gpu_model), []).append(r.step_time_s)
    observed = {key: float(np.mean(v)) for key, v in logs.items()}
    points = _grid(grid or NEIGHBOR_GRID)

    def eligible(obs: dict[tuple[str, str], float], key: tuple[str, str]) -> bool:
        return any(m == key[0] and g != key[1] for m, g in obs) and any(
            g == key[1] and m != key[0] for m, g in obs
        )

    targets = [key for key in observed if eligible(observed, key)]
    base = {
        key: _candidates({k: v for k, v in observed.items() if k != key}, *key) for key in targets
    }
    pairs: list[tuple[float, float]] = []
    chosen: dict[str, int] = {}
    for outer in targets:
        train = {k: v for k, v in observed.items() if k != outer}
        inner_keys = [u for u in targets if u != outer and eligible(train, u)]
        cands: list[Cands] = []
        for u in inner_keys:
            if u[0] == outer[0]:  # the held-out pair was one of u's own GPU models
                cands.append(_candidates({k: v for k, v in train.items() if k != u}, *u))
                continue
            c = dict(base[u])
            if outer[0] in c:  # the held-out pair belonged to this neighbour: recompute it
                del c[outer[0]]
                sub = {k: v for k, v in train.items() if k != u}
                again = _candidates({k: v for k, v in sub.items() if k[0] in (u[0], outer[0])}, *u)
                if outer[0] in again:
                    c[outer[0]] = again[outer[0]]
            cands.append(c)
        inner = _grid_predictions(cands, points)
        actual = np.array([observed[u] for u in inner_keys])
        with np.errstate(invalid="ignore"):
            err = np.nanmean(np.abs(np.exp(inner - actual) - 1.0), axis=1)
        best = int(np.nanargmin(err))
        label = ",".join(f"{v:g}" for v in points[best])
        chosen[label] = chosen.get(label, 0) + 1
        log_t = _grid_predictions([base[outer]], points[best : best + 1])[0, 0]
        if not math.isfinite(log_t):
            pred = (
                Predictor([r for r in alone if (r.model, r.gpu_model) != outer])
                .step_time(*outer)
                .value
            )
        else:
            pred = math.exp(log_t)
        pairs += [(pred, t) for t in truth[outer]]
    return {
        "mape_pct": _mape(pairs),
        "held_out": len(pairs),
        "chosen": dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
        "grid_columns": list((grid or NEIGHBOR_GRID).keys()),
    }
