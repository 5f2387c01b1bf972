"""The stated chance ``p_free_for_duration``: the ranking model's chance, recalibrated. Pure.

The ranking's chance (``rank.poisson_cdf``: the host sees fewer takes in the window than it
has spare free GPUs) orders hosts well but is over-confident: the hour tier misses takes by
jobs shorter than an hour, and "your GPUs are taken last" only holds for some habits. So the
number an answer *states* comes from two steps fitted together on the training clusters'
replays (tuning seeds only; docs/recommender.md, "Calibration"):

1. a logistic model over what is known when the question is asked (``features``): the
   ranking model's log-odds, the requested hours, the expected takes on the host in the
   window, the host's spare free GPUs and taken share now, how full the fleet is now, the
   fleet's takes expected in the window per free GPU, how long holds usually last (short
   jobs: GPUs turn over fast), and the takes of the last hour (GPUs whose job started less
   than an hour ago, fleet-wide per free GPU over the window, and on the host), and the
   history's own answer: of the hours a GPU of this host was free, the share after which it
   stayed free for the window (shrunk to the fleet's; ``history.stay_free``), to the power
   of the GPUs asked, and the fleet's same share over the history's last five days only; a
   host with no history enters with the fleet's rates, as in
   the ranking;
2. an isotonic (monotone, piecewise-linear) map of that output to the observed share.

``fit`` does both from (features, outcome) samples; ``bench/recommend_bench.py
--calibration fit`` prints the constants below from a fresh fit. Nothing here reads the
outcome at answer time: the map is fixed constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

FEATURES = ("model_log_odds", "log_hours", "log1p_expected_takes", "spare_share",
            "taken_share", "fleet_free_share", "log1p_fleet_takes_per_free_gpu",
            "log_median_hold_hours", "log1p_recent_takes_per_free_gpu",
            "log1p_host_recent_takes", "history_stay_log_odds",
            "fleet_recent_stay_log_odds")  # fmt: skip
_CLIP = 1e-4
_RIDGE = 1e-3


class StatedChance(Protocol):
    """What turns feature rows into stated chances: ``Calibration`` (the offline map) or
    ``online.Recalibrated`` (that map refitted on the fleet's own past answers)."""

    def apply(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Calibration:
    coef: tuple[float, ...]  # intercept, then one per used feature
    knots_x: tuple[float, ...]  # isotonic map: logistic output -> stated chance
    knots_y: tuple[float, ...]
    fitted_on: str = ""
    used: tuple[str, ...] = FEATURES  # which of FEATURES enter the logistic model

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Stated chances for feature rows ``x`` (n, len(FEATURES)); never 0 or 1."""
        cols = [FEATURES.index(f) for f in self.used]
        z = self.coef[0] + np.asarray(x, dtype=float)[:, cols] @ np.asarray(self.coef[1:])
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        if len(self.knots_x) >= 2:
            p = np.interp(p, self.knots_x, self.knots_y)
        return np.clip(p, 0.005, 0.995)


def features(p_model: np.ndarray, hours: float, expected_takes: np.ndarray,
             spare_share: np.ndarray, taken_share: np.ndarray, fleet_free_share: float,
             fleet_takes_per_free_gpu: float, median_hold_hours: float,
             recent_takes_per_free_gpu: float, host_recent_takes: np.ndarray,
             history_stay: np.ndarray, fleet_recent_stay: float = 0.5,
             ) -> np.ndarray:  # fmt: skip
    """One row per answer (vectors over the answers' hosts)."""
    n = np.asarray(p_model).size
    return np.column_stack([
        _logit(np.asarray(p_model, dtype=float)),
        np.full(n, np.log(max(hours, 1 / 60))),
        np.log1p(np.maximum(np.asarray(expected_takes, dtype=float), 0.0)),
        np.asarray(spare_share, dtype=float),
        np.asarray(taken_share, dtype=float),
        np.full(n, fleet_free_share),
        np.full(n, np.log1p(max(fleet_takes_per_free_gpu, 0.0))),
        np.full(n, np.log(max(median_hold_hours, 1 / 60))),
        np.full(n, np.log1p(max(recent_takes_per_free_gpu, 0.0))),
        np.log1p(np.asarray(host_recent_takes, dtype=float)),
        _logit(np.asarray(history_stay, dtype=float)),
        np.full(n, _logit(np.asarray([fleet_recent_stay], dtype=float))[0]),
    ])  # fmt: skip


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1 - _CLIP)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def _logistic(x: np.ndarray, y: np.ndarray, wt: np.ndarray, iters: int = 50) -> np.ndarray:
    """Weighted maximum-likelihood logistic regression (Newton steps, a little ridge)."""
    a = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(a.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ beta, -30, 30)))
        grad = a.T @ (wt * (y - p)) - _RIDGE * beta
        hess = (a * (wt * p * (1 - p))[:, None]).T @ a + _RIDGE * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta


def _isotonic(p: np.ndarray, y: np.ndarray, wt: np.ndarray, bins: int = 40
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Weighted pool-adjacent-violators over quantile bins of ``p``: (bin centre, share)."""
    order = np.argsort(p)
    groups = [g for g in np.array_split(order, min(bins, len(order))) if g.size]
    blocks: list[list[float]] = []  # [sum w*y, sum w, sum w*x]
    for g in groups:
        w = wt[g]
        blocks.append([float((w * y[g]).sum()), float(w.sum()), float((w * p[g]).sum())])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c, sx = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
            blocks[-1][2] += sx
    kx = np.asarray([b[2] / b[1] for b in blocks])
    ky = np.asarray([b[0] / b[1] for b in blocks])
    return kx, ky


def fit(x: np.ndarray, ok: np.ndarray, weight: np.ndarray | None = None,
        fitted_on: str = "", used: tuple[str, ...] = FEATURES) -> Calibration:  # fmt: skip
    """Fit both steps on (features, stayed free) samples, each with a weight (e.g. so that
    every cluster counts the same however many answers it gave)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(ok, dtype=float)
    if len(x) < 50:
        raise ValueError(f"calibration: {len(x)} samples are too few to fit (need 50)")
    wt = np.ones(len(x)) if weight is None else np.asarray(weight, dtype=float)
    wt = wt * (len(x) / wt.sum())
    unknown = set(used) - set(FEATURES)
    if unknown:
        raise ValueError(f"calibration: unknown feature(s) {', '.join(sorted(unknown))}")
    beta = _logistic(x[:, [FEATURES.index(f) for f in used]], y, wt)
    raw = Calibration(tuple(float(b) for b in beta), (), (), used=used)
    kx, ky = _isotonic(raw.apply(x), y, wt)
    return Calibration(raw.coef, tuple(float(v) for v in kx), tuple(float(v) for v in ky),
                       fitted_on, used)  # fmt: skip


# Fitted by (docs/recommender.md, "Calibration"; the features chosen by leaving one training
# cluster out at a time, not on the held-out clusters):
#   bench/recommend_bench.py --calibration fit --vc 11cb48 ... (loads 0.8/1.0/1.5, 6214e9
#   0.8/1.0; tuning seeds 100, 101; 8 hosts; every cluster weighted the same)
DEFAULT = Calibration(
    coef=(
        -1.42596, 0.245539, 0.176247, 0.173409,
    ),
    knots_x=(
        0.189416, 0.312985, 0.335885, 0.346478, 0.362904, 0.460297, 0.576233, 0.62662,
        0.666242, 0.76282, 0.832507, 0.858048,
    ),
    knots_y=(
        0.19634, 0.24163, 0.309122, 0.320098, 0.435422, 0.453545, 0.550295, 0.647835,
        0.678625, 0.717454, 0.911785, 0.939795,
    ),
    fitted_on='vc 11cb48,103959,0e4a51,2869ce,6214e9; loads [0.8, 1.0, 1.5]; seeds 100,101; 8 hosts',
    used=('model_log_odds', 'log_hours', 'history_stay_log_odds'),
)
