"""The closed-loop evaluation (docs/recommender.md): every recommender in the same lab, per
virtual cluster x load x habit, over several seeds, with 95% intervals.

Per scenario and seed, one closed-loop replay per recommender (``lab.run``): its requesters
go where it says and hold those GPUs for their real durations. Figures per recommender:
hit rate, requester wait, everyone's wait, Gini and busiest-20% share of per-host GPU-hours,
utilisation (all over the scored days). Across seeds: the mean and a 95% t-interval, and the
per-seed difference to the best baseline *for that habit* (the baseline with the highest mean
hit rate there) with its interval.

Studies (labelled as such, not baselines): the calibration of ``p_free_for_duration`` in a
replay where nobody follows the answers (what the number literally claims: that nobody takes
those GPUs in the requested hours), and the error of the "when will something fit" estimate
against when a fitting set really freed up in gpufleet's closed loop.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gpufleet.philly import TraceJob
from gpufleet.recommend import calibrate
from gpufleet.recommend.baselines import Recommender, all_recommenders
from gpufleet.recommend.fleet import FleetSnap
from gpufleet.recommend.history import FleetHistory
from gpufleet.recommend.lab import Lab, SimJob, cluster_rate, copy_seconds, run, window_jobs
from gpufleet.recommend.labfleet import build_lab
from gpufleet.recommend.online import (
    DEFAULT_PARAMS,
    FOLLOW_SECONDS,
    ChanceLedger,
    EtaLedger,
    EtaParams,
    OnlineParams,
    Said,
    offline,
)
from gpufleet.recommend.rank import Weights, recommend
from gpufleet.recommend.request import RecommendRequest

TAIL_SHARE = 0.2
# t quantiles (0.975) by degrees of freedom, for the intervals over seeds
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}  # fmt: skip
TRAINING_VCS = ("6214e9", "11cb48", "103959", "0e4a51", "ed69ec", "2869ce", "e13805")


@dataclasses.dataclass
class Config:
    hosts: int = 16
    # the scored days hold about this many jobs (within the day limits below), so small and
    # large clusters give about as many scored requests
    scored_jobs: int = 1200
    min_eval_days: float = 2.0
    max_eval_days: float = 40.0
    min_warmup_days: float = 4.0  # the recommenders' history before the first scored request
    request_every: int = 8  # every 8th job asks the recommender under test
    start: str = "2017-10-02"  # the simulated calendar (a Monday)

    @classmethod
    def quick(cls) -> Config:
        return cls(hosts=8, scored_jobs=300, min_eval_days=1, max_eval_days=5,
                   min_warmup_days=2)  # fmt: skip

    def days(self, jobs_per_day: float) -> tuple[float, float]:
        """(warm-up, scored) days for a cluster arriving at ``jobs_per_day``."""
        scored = min(self.max_eval_days, max(self.min_eval_days, self.scored_jobs / jobs_per_day))
        return max(self.min_warmup_days, min(14.0, scored)), scored


def gini(values: Iterable[float]) -> float:
    xs = sorted(max(0.0, v) for v in values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    cum = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * cum) / (n * total) - (n + 1) / n


def busiest_share(values: Iterable[float], share: float = TAIL_SHARE) -> float:
    xs = sorted(values, reverse=True)
    total = sum(xs)
    k = max(1, round(len(xs) * share))
    return sum(xs[:k]) / total if total else 0.0


def interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (half-width 0 for one value: say how many seeds)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m, m
    half = _T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def _t0(cfg: Config) -> float:
    return datetime.fromisoformat(cfg.start).replace(tzinfo=UTC).timestamp()


def scenario_jobs(trace: list[TraceJob], cfg: Config, vc: str | None, load: float, habit: str,
                  seed: int) -> tuple[list[Any], list[SimJob], float, float, float]:  # fmt: skip
    hosts = build_lab(cfg.hosts, seed)
    start = _t0(cfg)
    warm, scored = cfg.days(cluster_rate(trace, vc, hosts, load))
    jobs = window_jobs(trace, vc, hosts, load, start, warm + scored, cfg.request_every, habit,
                       seed)  # fmt: skip
    eval_from = start + warm * 86400
    return hosts, jobs, start, eval_from, eval_from + scored * 86400


def measure(res: Any, eval_from: float, end: float) -> dict[str, float]:
    """The closed-loop figures of one replay over the scored days."""
    reqs = [j for j in res.jobs if j.request is not None and eval_from <= j.submit < end]
    last = max([j.start for j in res.jobs if j.start >= 0] + [end])
    req_waits = [((j.start if j.start >= 0 else last) - j.submit) / 60 for j in reqs]
    everyone = [((j.start if j.start >= 0 else last) - j.submit) / 60
                for j in res.jobs if eval_from <= j.submit < end]  # fmt: skip
    per_host = [0.0] * len(res.lab.hosts)
    for h, gpus in enumerate(res.holds):
        for spans in gpus:
            for a, b in spans:
                per_host[h] += max(0.0, min(b, end) - max(a, eval_from)) / 3600
    gpus_total = sum(h.gpu_count for h in res.lab.hosts)
    hits = [1.0 if (j.start >= 0 and not j.missed) else 0.0 for j in reqs]
    roomy = [h for h, j in zip(hits, reqs, strict=True) if j.missed != "nothing fitted"]
    return {
        "requests": float(len(reqs)),
        "hit_rate": statistics.fmean(hits) if hits else math.nan,
        # a secondary figure: among requesters that found room on arrival (what the choice
        # of place decides; at high load most find none, whoever answers)
        "hit_rate_when_room": statistics.fmean(roomy) if roomy else math.nan,
        "requester_wait_minutes": statistics.fmean(req_waits) if req_waits else math.nan,
        "everyone_wait_minutes": statistics.fmean(everyone) if everyone else math.nan,
        "gini": gini(per_host),
        "busiest_20pct_share": busiest_share(per_host),
        "utilisation": sum(per_host) / (gpus_total * (end - eval_from) / 3600),
        "missed_nothing_fitted": sum(1 for j in reqs if j.missed == "nothing fitted")
        / max(1, len(reqs)),
        "missed_taken_before_start": sum(1 for j in reqs if j.missed == "taken before start")
        / max(1, len(reqs)),
    }


class GpufleetEta:
    """gpufleet's "when will something fit" as the server states it: the estimate, and its
    80% range from this fleet's own past estimates (``online.EtaLedger``) once enough of them
    are settled. Settled like on the server: after every change of the lab (a job's end),
    each waiting estimate whose request fits now is settled at that moment.

    Returns (estimate, low, high, the estimate's own low, its own high) hours and how many
    settled past estimates the stated range came from (0: it is the estimate's own range,
    from past holds), to report both."""

    def __init__(self, params: EtaParams | None = EtaParams()) -> None:
        self.ledger = EtaLedger(params) if params is not None else None
        self.waiting: dict[int, RecommendRequest] = {}
        self.asked = 0

    def __call__(self, req: RecommendRequest, snap: FleetSnap, hist: FleetHistory
                 ) -> tuple[float, ...] | None:  # fmt: skip
        ans = recommend(req, snap, hist, reasons=False)
        e = ans.eta
        if ans.choices or e is None:
            return None
        if self.ledger is None:
            return e.in_hours, e.low_hours, e.high_hours, e.low_hours, e.high_hours, 0
        lo, hi, n = self.ledger.range(e.in_hours, e.low_hours, e.high_hours, snap.now)
        key = self.asked
        self.asked += 1
        self.ledger.record(key, snap.now, e.in_hours)
        self.waiting[key] = req
        return e.in_hours, lo, hi, e.low_hours, e.high_hours, n

    def on_release(self, lab: Lab, now: float) -> None:
        if self.ledger is None:
            return
        for key, req in list(self.waiting.items()):
            if key not in self.ledger.estimates:
                del self.waiting[key]  # dropped from the ledger (too old)
            elif lab.fits_anywhere(req):
                self.ledger.settle(key, now)
                del self.waiting[key]


def run_scenario(trace: list[TraceJob], cfg: Config, vc: str | None, load: float, habit: str,
                 seed: int, recs: dict[str, Recommender] | None = None,
                 eta: EtaParams | None = EtaParams(),
                 ) -> tuple[dict[str, dict[str, float]], list[tuple[float, ...]]]:  # fmt: skip
    """Every recommender's closed-loop figures for one scenario and seed; gpufleet's
    time-to-free errors (predicted, low, high, the estimate's own low and high, the past
    estimates the range came from, actual hours; low-high is the stated range: from past
    estimates' errors once there are enough, else (and with ``eta`` None) from past
    holds)."""
    hosts, jobs, start, eval_from, end = scenario_jobs(trace, cfg, vc, load, habit, seed)
    recs = recs or all_recommenders(seed)
    out: dict[str, dict[str, float]] = {}
    etas: list[tuple[float, ...]] = []
    for name, rec in recs.items():
        probe = GpufleetEta(eta) if name == "gpufleet" else None
        res = run(hosts, _fresh(jobs), start, end, eval_from, chooser=rec, seed=seed,
                  eta_probe=probe, on_release=probe.on_release if probe else None)  # fmt: skip
        out[name] = measure(res, eval_from, end)
        if probe is not None:
            etas += res.eta_errors
    return out, etas


# (stated chance, the GPUs really stayed free, the host had history, calibrate.features row,
# the offline map's chance)
CalSample = tuple[Any, ...]


@dataclasses.dataclass
class Answered:
    """One single-host answer of the calibration study: what was said, and (after the
    replay) what happened."""

    at: float
    host: str
    gpus: tuple[int, ...]
    hours: float
    p0: float  # the offline map's chance
    stated: float  # what the answer said: the online map's chance (or p0 without it)
    top: bool
    follow_seconds: float
    known: bool  # the host had history
    features: tuple[float, ...]
    # filled in after the replay: each GPU's first take after ``at`` (None: none), whether
    # none was taken in the window (None: the window ends after the replay), scored (asked
    # in the scored days, the window over inside them)
    first_takes: tuple[float | None, ...] = ()
    ok: bool | None = None
    scored: bool = False


def calibration_study(trace: list[TraceJob], cfg: Config, vc: str | None, load: float,
                      habit: str, seed: int, weights: Weights | None = None,
                      online: OnlineParams | None = DEFAULT_PARAMS) -> list[Answered]:  # fmt: skip
    """Every single-host answer gpufleet gave in a replay where nobody follows it (a study:
    the outcome the number claims is only observable when nobody acts on it), warm-up days
    included (a server would have answered those too).

    With ``online``, the stated chance is the offline map recalibrated on this fleet's own
    past answers as the server does it: before each answer the ledger settles what the lab
    has shown by then (``Lab.first_take``: takes so far) and refits on the outcomes whose
    window is over; the answer is then recorded. Nothing later reaches it."""
    hosts, jobs, start, eval_from, end = scenario_jobs(trace, cfg, vc, load, habit, seed)
    w = weights or Weights()
    base = offline(w.calibration)
    ledger = ChanceLedger(online) if online is not None else None
    said: list[Answered] = []

    def observe(lab: Lab, job: SimJob, now: float, hist: FleetHistory) -> None:
        assert job.request is not None
        ww = w
        if ledger is not None:
            ledger.settle(now, lab.first_take)
            ww = dataclasses.replace(w, calibration=ledger.recalibration(now, base))
        ans = recommend(job.request, lab.snapshot(now), hist, reasons=False, weights=ww)
        for rank_, c in enumerate(ans.choices):
            if c.parts:
                continue
            p0 = float(base.apply(np.asarray([c.features]))[0])
            follow = FOLLOW_SECONDS + copy_seconds(job.request, c.host)
            a = Answered(now, c.host, c.gpus, job.request.hours, p0, c.p_free, rank_ == 0,
                         follow, hist.host(c.host).hours_known > 0, c.features)  # fmt: skip
            if ledger is not None:
                ledger.record(Said(len(said), now, c.host, c.gpus, a.hours, p0, a.top,
                                   follow))  # fmt: skip
            said.append(a)

    res = run(hosts, _fresh(jobs), start, end, eval_from, chooser=None, seed=seed,
              observe=observe)  # fmt: skip
    index_of = {h.name: i for i, h in enumerate(hosts)}
    for a in said:
        spans = [res.holds[index_of[a.host]][g] for g in a.gpus]
        a.first_takes = tuple(min((s for s, _ in sp if s > a.at), default=None) for sp in spans)
        stop = a.at + a.hours * 3600
        if stop <= end:
            a.ok = not any(t is not None and t <= stop for t in a.first_takes)
            a.scored = a.at >= eval_from
    return said


def replay_online(said: Sequence[Answered], params: OnlineParams) -> list[float]:
    """The stated chances an online map with ``params`` would have given, from a saved
    study (its answers in the order they were given): the same ledger, fed the same takes,
    each only once it has happened (for tuning ``OnlineParams`` without replaying the lab)."""
    takes = {(a.host, g, a.at): t for a in said for g, t in zip(a.gpus, a.first_takes, strict=True)}
    ledger = ChanceLedger(params)
    out = []
    now = -math.inf
    rec = None
    for i, a in enumerate(said):
        if a.at != now or rec is None:
            now = a.at
            ledger.settle(now, lambda h, g, after: takes.get((h, g, after)))
            rec = ledger.recalibration(now, calibrate.DEFAULT)
        out.append(float(rec.map(np.asarray([a.p0]))[0]))
        ledger.record(Said(i, a.at, a.host, a.gpus, a.hours, a.p0, a.top, a.follow_seconds))
    return out


def calibration_samples(trace: list[TraceJob], cfg: Config, vc: str | None, load: float,
                        habit: str, seed: int, weights: Weights | None = None,
                        online: OnlineParams | None = DEFAULT_PARAMS) -> list[CalSample]:  # fmt: skip
    """(stated p_free_for_duration, the GPUs really stayed free, the host had history, the
    features it was computed from, the offline map's chance) for every scored answer of
    ``calibration_study``."""
    return [(a.stated, a.ok, a.known, a.features, a.p0)
            for a in calibration_study(trace, cfg, vc, load, habit, seed, weights, online)
            if a.scored]  # fmt: skip


def reliability(samples: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Reliability by decile of the stated chance, Brier score, and the Brier score of the
    base rate (always saying the overall share). Samples: (stated chance, came true, ...)."""
    if not samples:
        return {"answers": 0, "rows": [], "brier": None, "brier_base_rate": None}
    rate = statistics.fmean(1.0 if s[1] else 0.0 for s in samples)
    rows = []
    for d in range(10):
        lo, hi = d / 10, (d + 1) / 10
        xs = [(s[0], s[1]) for s in samples if lo <= s[0] < hi or (d == 9 and s[0] == 1.0)]
        if xs:
            stated = statistics.fmean(p for p, _ in xs)
            seen = statistics.fmean(1.0 if ok else 0.0 for _, ok in xs)
            rows.append({"decile": f"{lo:.1f}-{hi:.1f}", "answers": len(xs), "stated": stated,
                         "observed": seen, "error_points": 100 * (seen - stated)})  # fmt: skip
    return {
        "answers": len(samples),
        "rows": rows,
        "brier": statistics.fmean((s[0] - (1.0 if s[1] else 0.0)) ** 2 for s in samples),
        "brier_base_rate": statistics.fmean((rate - (1.0 if s[1] else 0.0)) ** 2 for s in samples),
        "base_rate": rate,
    }


def eta_summary(errors: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Errors: (predicted, low, high, [the estimate's own low, its own high, past estimates
    used,] actual) hours; ``inside_interval``: the share of actual times inside the stated
    range (low-high), ``inside_own_interval``: inside the estimate's own range (from past
    holds); ``from_past_estimates``: the share of estimates whose stated range came from
    past estimates, and the two shares inside among those."""
    if not errors:
        return {"estimates": 0}
    abs_err = sorted(abs(e[0] - e[-1]) for e in errors)
    out = {
        "estimates": len(errors),
        "abs_error_median_hours": _q(abs_err, 0.5),
        "abs_error_p90_hours": _q(abs_err, 0.9),
        "predicted_median_hours": _q(sorted(e[0] for e in errors), 0.5),
        "actual_median_hours": _q(sorted(e[-1] for e in errors), 0.5),
        "inside_interval": sum(1 for e in errors if e[1] <= e[-1] <= e[2]) / len(errors),
        "below_interval": sum(1 for e in errors if e[-1] < e[1]) / len(errors),
    }
    own = [e for e in errors if len(e) >= 6]
    if own:
        out["inside_own_interval"] = sum(1 for e in own if e[3] <= e[-1] <= e[4]) / len(own)
        out["range_width_median_ratio"] = _q(sorted(
            (e[2] + 1 / 60) / (e[1] + 1 / 60) for e in own), 0.5)  # fmt: skip
        out["own_range_width_median_ratio"] = _q(sorted(
            (e[4] + 1 / 60) / (e[3] + 1 / 60) for e in own), 0.5)  # fmt: skip
    online = [e for e in errors if len(e) >= 7 and e[5] > 0]
    out["from_past_estimates"] = len(online) / len(errors)
    if online:
        out["inside_when_from_past"] = sum(1 for e in online if e[1] <= e[-1] <= e[2]) / len(online)
        out["inside_own_when_from_past"] = sum(1 for e in online
                                               if e[3] <= e[-1] <= e[4]) / len(online)  # fmt: skip
    return out


def _q(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _fresh(jobs: list[SimJob]) -> list[SimJob]:
    return [dataclasses.replace(j, start=-1.0, host=-1, gpu_idx=(), missed="", asks=0,
                                copy_seconds=0.0) for j in jobs]  # fmt: skip


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Across seeds: each recommender's mean and interval per figure; gpufleet against the
    best baseline for hit rate (per-seed difference), wait and spread (means)."""
    names = list(per_seed[0])
    keys = [k for k in per_seed[0][names[0]] if k != "requests"]
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name in names:
        table[name] = {k: interval([s[name][k] for s in per_seed if not math.isnan(s[name][k])]
                                   or [math.nan]) for k in keys}  # fmt: skip
    baselines = [n for n in names if n != "gpufleet"]
    best = max(baselines, key=lambda n: table[n]["hit_rate"][0])
    diff = interval([s["gpufleet"]["hit_rate"] - s[best]["hit_rate"] for s in per_seed])
    g = table["gpufleet"]
    verdict = {
        "best_baseline": best,
        "hit_margin_points": tuple(100 * x for x in diff),
        # +10 points or more on the mean of the seeds, and the interval excludes 0
        "hit_target_met": diff[0] * 100 >= 10.0 and diff[1] > 0,
        "wait_no_worse": g["requester_wait_minutes"][0]
        <= table[best]["requester_wait_minutes"][0] + 1e-9,
        "lowest_gini": all(g["gini"][0] < table[n]["gini"][0] for n in baselines),
        "lowest_busiest": all(
            g["busiest_20pct_share"][0] < table[n]["busiest_20pct_share"][0] for n in baselines
        ),
    }
    return {"table": table, "verdict": verdict, "seeds": len(per_seed)}


def latency(trace_hosts: int = 1000, requests: int = 300, seed: int = 0,
            clock: Callable[[], float] | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """p50/p99 ms of one answer with its reasons at ``trace_hosts`` hosts, per path."""
    from gpufleet.recommend.latency import latency_paths

    return latency_paths(trace_hosts, requests, seed, clock)
