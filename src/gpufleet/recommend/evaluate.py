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

from gpufleet.philly import TraceJob
from gpufleet.recommend.baselines import Recommender, all_recommenders
from gpufleet.recommend.fleet import FleetSnap
from gpufleet.recommend.history import FleetHistory
from gpufleet.recommend.lab import Lab, SimJob, cluster_rate, run, window_jobs
from gpufleet.recommend.labfleet import build_lab
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


def gpufleet_eta(req: RecommendRequest, snap: FleetSnap, hist: FleetHistory
                 ) -> tuple[float, float, float] | None:  # fmt: skip
    ans = recommend(req, snap, hist, reasons=False)
    if ans.choices or ans.eta is None:
        return None
    return ans.eta.in_hours, ans.eta.low_hours, ans.eta.high_hours


def run_scenario(trace: list[TraceJob], cfg: Config, vc: str | None, load: float, habit: str,
                 seed: int, recs: dict[str, Recommender] | None = None,
                 ) -> tuple[dict[str, dict[str, float]], list[tuple[float, float, float, float]]]:  # fmt: skip
    """Every recommender's closed-loop figures for one scenario and seed; gpufleet's
    time-to-free errors (predicted, low, high, actual hours)."""
    hosts, jobs, start, eval_from, end = scenario_jobs(trace, cfg, vc, load, habit, seed)
    recs = recs or all_recommenders(seed)
    out: dict[str, dict[str, float]] = {}
    etas: list[tuple[float, float, float, float]] = []
    for name, rec in recs.items():
        probe = gpufleet_eta if name == "gpufleet" else None
        res = run(hosts, _fresh(jobs), start, end, eval_from, chooser=rec, seed=seed,
                  eta_probe=probe)  # fmt: skip
        out[name] = measure(res, eval_from, end)
        if probe is not None:
            etas += res.eta_errors
    return out, etas


# (stated chance, the GPUs really stayed free, the host had history, calibrate.features row)
CalSample = tuple[float, bool, bool, tuple[float, ...]]


def calibration_samples(trace: list[TraceJob], cfg: Config, vc: str | None, load: float,
                        habit: str, seed: int, weights: Weights | None = None,
                        ) -> list[CalSample]:  # fmt: skip
    """(stated p_free_for_duration, the GPUs really stayed free, the host had history, the
    features it was computed from) for every answer gpufleet gave in a replay where nobody
    follows it (a study: the outcome the number claims is only observable when nobody acts
    on it)."""
    hosts, jobs, start, eval_from, end = scenario_jobs(trace, cfg, vc, load, habit, seed)
    Said = tuple[int, tuple[int, ...], float, bool, tuple[float, ...]]
    asked: list[tuple[float, RecommendRequest, list[Said]]] = []
    index_of = {h.name: i for i, h in enumerate(hosts)}

    def observe(lab: Lab, job: SimJob, now: float, hist: FleetHistory) -> None:
        assert job.request is not None
        ans = recommend(job.request, lab.snapshot(now), hist, reasons=False, weights=weights)
        asked.append((now, job.request, [
            (index_of[c.host], c.gpus, c.p_free, hist.host(c.host).hours_known > 0, c.features)
            for c in ans.choices if not c.parts
        ]))  # fmt: skip

    res = run(hosts, _fresh(jobs), start, end, eval_from, chooser=None, seed=seed,
              observe=observe)  # fmt: skip
    out = []
    for t, req, answers in asked:
        stop = t + req.hours * 3600
        for h, gpus, p, known, feats in answers:
            if stop > end:
                continue  # the outcome is not known inside the replay
            taken = any(t < s <= stop for g in gpus for s, _ in res.holds[h][g])
            out.append((p, not taken, known, feats))
    return out


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


def eta_summary(errors: list[tuple[float, float, float, float]]) -> dict[str, Any]:
    if not errors:
        return {"estimates": 0}
    abs_err = sorted(abs(p - a) for p, _, _, a in errors)
    inside = sum(1 for _, lo, hi, a in errors if lo <= a <= hi) / len(errors)
    return {
        "estimates": len(errors),
        "abs_error_median_hours": _q(abs_err, 0.5),
        "abs_error_p90_hours": _q(abs_err, 0.9),
        "predicted_median_hours": _q(sorted(p for p, *_ in errors), 0.5),
        "actual_median_hours": _q(sorted(a for *_, a in errors), 0.5),
        "inside_interval": inside,
    }


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
