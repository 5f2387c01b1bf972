"""Calibration learnt from the fleet's own past answers. Pure: no clock, no I/O.

Two ledgers, each fed by whoever runs the recommender (the server, from its live state and
its store; the evaluation harness, from its simulated lab) in exactly the same way:

- ``ChanceLedger``: every single-host answer's stated chance *before* this step (the offline
  map of ``calibrate.DEFAULT``, ``p0``) with its host, GPUs, window and ask time. An outcome
  is known only from what was seen by then: a take of one of its GPUs inside the window (not
  a stayed-free answer), or the window's end with no take seen (stayed free). It enters the
  fit only once its window has ended, whatever the outcome: a failure is known early and a
  success only at the end, so counting failures at once would over-represent them among
  recent answers. The map for new answers is a Platt recalibration of ``p0``,
  ``logit p = a + b logit p0``, fitted on those outcomes (recent ones weighted more, half-life
  ``half_life_hours``) and shrunk to the offline map: ``prior_weight`` pseudo-answers that
  come true at exactly the offline chance. With no settled outcome it *is* the offline map.
  The top answer is the one people follow, and the chance is about *other* people taking
  the GPUs: by default the map learns only from the answers below the top
  (``OnlineParams.top_answers``); with top answers, one whose GPUs are all taken within
  ``follow_seconds`` of the answer (the asker starting there) has no outcome.
- ``EtaLedger``: every "nothing fits" estimate of the time until a fitting set is free, and,
  once a fitting set was seen free, the actual time. The stated 80% range then comes from
  the errors of this fleet's past estimates (split-conformal on log((actual + 1 min) /
  (estimate + 1 min))): the estimate scaled by the 10th and 90th percentiles of those log
  ratios. The estimates still waiting are counted as censored (their actual time is at least
  what has elapsed: a Kaplan-Meier estimate), so long waits are not left out just because
  they are not over yet. Before ``min_settled`` settled estimates, the range of the estimate
  itself (``eta.estimate_eta``: past holds) is kept.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

from gpufleet.recommend.calibrate import Calibration, StatedChance

# an answer at the top of the list whose GPUs are all taken this soon after it was given is
# taken to have been followed (the server remembers its top answer this long, plus the copy)
FOLLOW_SECONDS = 900.0
_CLIP = 1e-4
_LO, _HI = 0.005, 0.995


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _CLIP, 1 - _CLIP)
    out: np.ndarray = np.log(p / (1 - p))
    return out


@dataclass(frozen=True)
class OnlineParams:
    """Chosen on the training clusters' tuning seeds (100, 101) with ``bench/recommend_bench.py
    --calibration tune`` (docs/recommender.md, "Online calibration")."""

    prior_weight: float = 50.0  # pseudo-answers at the offline map's chance
    half_life_hours: float = 12.0  # an outcome this old (since its window ended) counts half
    slope: bool = True  # fit a and b (False: the intercept a only)
    # learn from the top answers too (those whose GPUs were all taken within follow_seconds
    # left out as followed); False: only from the answers below the top, which people are
    # not sent to (no follow rule needed, fewer outcomes)
    top_answers: bool = False
    max_answers: int = 5000  # answers kept (waiting and settled together), the oldest dropped


DEFAULT_PARAMS = OnlineParams()


@dataclass(frozen=True)
class Recalibrated:
    """The offline map ``base``, then ``logit p = a + b logit p0`` (``answers``: the settled
    outcomes it was fitted on; 0: the offline map unchanged)."""

    base: StatedChance
    a: float = 0.0
    b: float = 1.0
    answers: int = 0
    weight: float = 0.0  # their recency-weighted count

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.map(self.base.apply(x))

    def map(self, p0: np.ndarray) -> np.ndarray:
        if self.answers == 0:
            return np.asarray(p0, dtype=float)
        z = self.a + self.b * _logit(p0)
        return np.clip(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), _LO, _HI)


def fit_recalibration(p0: np.ndarray, ok: np.ndarray, weight: np.ndarray,
                      params: OnlineParams = DEFAULT_PARAMS) -> tuple[float, float]:  # fmt: skip
    """(a, b) of ``logit p = a + b logit p0`` by weighted maximum likelihood, with
    ``params.prior_weight`` pseudo-answers (spread over the same answers, in proportion to
    their weight) whose outcome is the offline chance itself: few outcomes keep (0, 1)."""
    z = _logit(p0)
    w = np.asarray(weight, dtype=float)
    total = float(w.sum())
    if z.size == 0 or total <= 0:
        return 0.0, 1.0
    prior = params.prior_weight * w / total
    y = (w * np.asarray(ok, dtype=float) + prior * np.clip(p0, _CLIP, 1 - _CLIP)) / (w + prior)
    wt = w + prior
    cols = 2 if params.slope else 1
    a = np.column_stack([np.ones_like(z), z])[:, :cols]
    start = np.array([0.0, 1.0])

    def loss(beta: np.ndarray) -> float:
        m = np.clip(beta[0] + beta[1] * z, -30, 30)
        # weighted cross-entropy (soft labels), written stably
        return float(np.sum(wt * (np.logaddexp(0.0, m) - y * m)))

    beta = start.copy()
    cur = loss(beta)
    for _ in range(100):
        m = np.clip(beta[0] + beta[1] * z, -30, 30)
        p = 1.0 / (1.0 + np.exp(-m))
        grad = a.T @ (wt * (y - p))
        hess = (a * (wt * p * (1 - p))[:, None]).T @ a + 1e-9 * np.eye(cols)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:  # damped: halve the step until the loss does not grow
            trial = beta.copy()
            trial[:cols] += t * step
            new = loss(trial)
            if new <= cur + 1e-12:
                break
            t /= 2
        else:
            break
        beta, cur = trial, new
        if np.max(np.abs(t * step)) < 1e-9:
            break
    return float(beta[0]), float(beta[1])


# first_take(host, gpu, after): when the GPU was first seen taken after ``after`` (None: not
# seen taken since); only what is known by now
FirstTake = Callable[[str, int, float], "float | None"]


@dataclass(slots=True)
class Said:
    """One answer as it was stated."""

    key: Hashable
    at: float
    host: str
    gpus: tuple[int, ...]
    hours: float
    p0: float  # the offline map's chance (what the online map recalibrates)
    top: bool = False  # first in the list (the one people follow)
    follow_seconds: float = 0.0
    outcome: bool | None = None  # stayed free (None: not known yet)
    followed: bool = False  # no outcome: the asker took it
    settled_at: float | None = None
    ends: float = field(init=False)  # when the window is over

    def __post_init__(self) -> None:
        self.ends = self.at + self.hours * 3600


@dataclass
class ChanceLedger:
    params: OnlineParams = DEFAULT_PARAMS
    answers: OrderedDict[Hashable, Said] = field(default_factory=OrderedDict)

    def record(self, said: Said) -> None:
        self.answers[said.key] = said
        while len(self.answers) > self.params.max_answers:
            self.answers.popitem(last=False)

    def waiting(self) -> list[Said]:
        return [s for s in self.answers.values() if s.outcome is None and not s.followed]

    def settle(self, now: float, first_take: FirstTake) -> list[Said]:
        """Settle what is known by ``now``; returns the answers settled by this call."""
        done = []
        for s in self.waiting():
            if now <= s.at:
                continue
            seen = [t for g in s.gpus
                    if (t := first_take(s.host, g, s.at)) is not None and t <= now]  # fmt: skip
            first = min(seen) if seen else None
            if first is not None and first <= s.ends:
                follow_end = s.at + s.follow_seconds
                if s.top and s.follow_seconds > 0:
                    if len(seen) == len(s.gpus) and max(seen) <= follow_end:
                        s.followed, s.settled_at = True, now
                        done.append(s)
                        continue
                    if now < follow_end:
                        continue  # not known yet whether the asker took it
                s.outcome, s.settled_at = False, now
            elif now >= s.ends:
                s.outcome, s.settled_at = True, now
            else:
                continue
            done.append(s)
        return done

    def counted(self, now: float) -> list[Said]:
        """The outcomes the map may use at ``now``: settled, and their window over."""
        top = self.params.top_answers
        return [s for s in self.answers.values()
                if s.outcome is not None and s.ends <= now and (top or not s.top)]  # fmt: skip

    def recalibration(self, now: float, base: StatedChance) -> Recalibrated:
        use = self.counted(now)
        if not use:
            return Recalibrated(base)
        p0 = np.fromiter((s.p0 for s in use), float, len(use))
        ok = np.fromiter((s.outcome for s in use), float, len(use))
        age = (now - np.fromiter((s.ends for s in use), float, len(use))) / 3600
        w = 0.5 ** (np.maximum(age, 0.0) / self.params.half_life_hours)
        a, b = fit_recalibration(p0, ok, w, self.params)
        return Recalibrated(base, a, b, len(use), float(w.sum()))


# -- time to free ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EtaParams:
    min_settled: int = 10  # settled estimates before the range is this fleet's own
    max_kept: int = 400  # the latest estimates kept (waiting and settled)
    eps_hours: float = 1 / 60  # a minute: the actual time is often 0 (freed within it)
    coverage: float = 0.8


@dataclass(slots=True)
class Estimate:
    key: Hashable
    at: float
    hours: float  # the estimate (median)
    actual: float | None = None  # hours until a fitting set was seen free


@dataclass
class EtaLedger:
    params: EtaParams = EtaParams()
    estimates: OrderedDict[Hashable, Estimate] = field(default_factory=OrderedDict)

    def record(self, key: Hashable, at: float, hours: float) -> None:
        self.estimates[key] = Estimate(key, at, max(0.0, hours))
        while len(self.estimates) > self.params.max_kept:
            self.estimates.popitem(last=False)

    def waiting(self) -> list[Estimate]:
        return [e for e in self.estimates.values() if e.actual is None]

    def settle(self, key: Hashable, at: float) -> Estimate | None:
        """A fitting set was seen free at ``at``."""
        e = self.estimates.get(key)
        if e is None or e.actual is not None:
            return None
        e.actual = max(0.0, (at - e.at) / 3600)
        return e

    def ratios(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """log((actual + eps) / (estimate + eps)) of every kept estimate asked before ``now``
        and whether it is settled (else: a lower bound, from the time elapsed)."""
        eps = self.params.eps_hours
        vals, events = [], []
        for e in self.estimates.values():
            if e.at >= now:
                continue
            if e.actual is not None and e.at + e.actual * 3600 <= now:
                t, ev = e.actual, True
            else:
                t, ev = (now - e.at) / 3600, False
            vals.append(math.log((t + eps) / (e.hours + eps)))
            events.append(ev)
        return np.asarray(vals), np.asarray(events, dtype=bool)

    def range(self, hours: float, low: float, high: float, now: float
              ) -> tuple[float, float, int]:  # fmt: skip
        """The stated range for an estimate of ``hours`` made at ``now``: from this fleet's
        past errors (and how many settled estimates that is), or ``(low, high, 0)`` with
        too few of them."""
        vals, events = self.ratios(now)
        n = int(events.sum())
        if n < self.params.min_settled:
            return low, high, 0
        tail = (1 - self.params.coverage) / 2
        # split-conformal's finite-sample levels: with n errors, the k-th smallest and
        # largest for k = (n + 1) x tail (n = 10: the smallest and the largest)
        qlo, qhi = km_quantiles(vals, events, (max(0.0, ((n + 1) * tail - 1) / n),
                                               min(1.0, (n + 1) * (1 - tail) / n)))  # fmt: skip
        eps = self.params.eps_hours
        base = max(0.0, hours) + eps
        return max(0.0, base * math.exp(qlo) - eps), max(0.0, base * math.exp(qhi) - eps), n


def km_quantiles(values: np.ndarray, events: np.ndarray, qs: Iterable[float]) -> list[float]:
    """Quantiles of a distribution from observations ``values``, some of them censored
    (``events`` False: the true value is at least this), by the Kaplan-Meier estimate; a
    quantile beyond the last observed event is the largest value seen."""
    order = np.lexsort((~events, values))  # by value, events before censorings at a tie
    v, ev = values[order], events[order]
    at_risk = np.arange(v.size, 0, -1)
    surv = np.cumprod(np.where(ev, 1.0 - 1.0 / at_risk, 1.0))
    cdf = 1.0 - surv
    out = []
    for q in qs:
        if q <= 0:
            out.append(float(v[ev][0]) if ev.any() else float(v.min()))
            continue
        hit = np.flatnonzero(ev & (cdf >= q - 1e-12))
        out.append(float(v[hit[0]]) if hit.size else float(v.max()))
    return out


def offline(base: Calibration | StatedChance) -> StatedChance:
    """The map a ``Recalibrated`` recalibrates (or the map itself)."""
    return base.base if isinstance(base, Recalibrated) else base

