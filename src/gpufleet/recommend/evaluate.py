"""The evaluation harness: every recommender against the same replayed lab (docs/recommender.md).

1. **Shadow replay** (hit rate, wait): the lab runs as it does today (everyone by habit). At
   sampled request arrivals every recommender answers from the live state and the hour-tier
   history of that moment. A *hit*: no job lands on any recommended GPU during the requested
   hours. *Wait*: the user starts after 5 minutes plus the data copy (1 Gbit/s from where the
   data is); if the GPUs were taken meanwhile, when they are all free again.
2. **Follow replays** (load spread): one replay per recommender in which every request goes
   where that recommender says (asking again every 15 minutes while nothing fits) and
   everyone else keeps their habit; ``follow_draws`` replays per recommender, each with its
   own draw of the habit's random choices. Spread: Gini of per-host GPU-hours and the share of
   GPU-hours on the busiest 20% of hosts, over the evaluation weeks (mean over the draws).
3. **Latency**: one answer (with its reasons) on a 1,000-host fleet built from the lab's state,
   p50/p99 over many requests.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gpufleet.demo.trace import TraceJob
from gpufleet.recommend.baselines import Recommender, all_recommenders
from gpufleet.recommend.fleet import FleetSnap, HostSnap
from gpufleet.recommend.history import FleetHistory
from gpufleet.recommend.rank import Choice, FleetIndex, Weights, copy_hours, recommend
from gpufleet.recommend.request import RecommendRequest
from gpufleet.recommend.sim import REFRESH_SECONDS, Lab, SimJob, default_fleet, run, sim_jobs

SETUP_SECONDS = 300.0
TAIL_SHARE = 0.2


def gini(values: list[float]) -> float:
    xs = sorted(max(0.0, v) for v in values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    cum = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * cum) / (n * total) - (n + 1) / n


def busiest_share(values: list[float], share: float = TAIL_SHARE) -> float:
    xs = sorted(values, reverse=True)
    total = sum(xs)
    k = max(1, round(len(xs) * share))
    return sum(xs[:k]) / total if total else 0.0


def _parse_day(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclasses.dataclass
class Config:
    hosts: int = 40
    load: float = 0.6  # the trace is thinned so its GPU-time keeps at most this share busy
    start: str = "2017-10-05"  # history warm-up begins
    warmup_days: float = 14.0  # the recommenders' history before the first scored request
    eval_days: float = 35.0
    request_every: int = 5  # every 5th trace job is a request that follows the recommender
    shadow_samples: int = 1500
    # follow replays per recommender, each with its own draw of the habit (same jobs and
    # requests): the spread figures are their mean (one draw moves the Gini by ~0.01)
    follow_draws: int = 3
    latency_hosts: int = 1000
    latency_requests: int = 1000
    seed: int = 0

    @classmethod
    def quick(cls) -> Config:
        return cls(hosts=16, warmup_days=3, eval_days=3, shadow_samples=150,
                   latency_hosts=200, latency_requests=100, follow_draws=1)  # fmt: skip


def _hit(
    holds: list[list[tuple[float, float]]], gpus: tuple[int, ...], t: float, hours: float
) -> bool:
    end = t + hours * 3600
    return not any(t < s <= end for g in gpus for s, _ in holds[g])


def _start_time(
    holds: list[list[tuple[float, float]]], gpus: tuple[int, ...], t: float, ready: float
) -> float:
    tau = ready
    for _ in range(10000):
        moved = False
        for g in gpus:
            for s, e in holds[g]:
                if s <= tau < e and e > t:
                    tau, moved = e, True
        if not moved:
            return tau
    return tau


def evaluate(
    trace: list[TraceJob],
    cfg: Config,
    *,
    progress: Any = None,
    recommenders: dict[str, Recommender] | None = None,
    follow: bool = True,
) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    t_start = _parse_day(cfg.start)
    eval_from = t_start + cfg.warmup_days * 86400
    end = eval_from + cfg.eval_days * 86400
    hosts = default_fleet(cfg.hosts, cfg.seed)
    base_jobs = sim_jobs(trace, hosts, t_start, end, cfg.request_every, cfg.seed, cfg.load)
    n_requests = sum(1 for j in base_jobs if j.request is not None and j.submit >= eval_from)
    every = max(1, n_requests // max(1, cfg.shadow_samples))
    recs = recommenders or all_recommenders(cfg.seed)
    wall0 = time.perf_counter()

    # 1. shadow replay --------------------------------------------------------------------------
    samples: list[tuple[float, RecommendRequest, dict[str, Choice | None]]] = []
    state: dict[str, Any] = {"hist": None, "at": -math.inf, "n": 0, "latency": None}

    def observe(lab: Lab, job: SimJob, now: float) -> None:
        state["n"] += 1
        if (state["n"] - 1) % every:
            return
        if now - state["at"] >= REFRESH_SECONDS:
            state["hist"], state["at"] = lab.history(now), now
        snap = lab.snapshot(now)
        assert job.request is not None
        answers = {name: rec(job.request, snap, state["hist"]) for name, rec in recs.items()}
        samples.append((now, job.request, answers))
        if state["latency"] is None and len(samples) >= max(1, cfg.shadow_samples // 2):
            state["latency"] = (snap, state["hist"])

    shadow = run(hosts, _fresh(base_jobs), t_start, end, eval_from, observe=observe, seed=cfg.seed)
    say(f"shadow replay: {len(samples)} scored requests ({time.perf_counter() - wall0:.1f} s)")
    host_index = {h.name: i for i, h in enumerate(hosts)}
    rows: dict[str, dict[str, Any]] = {name: {"recommender": name} for name in recs}
    w = Weights()
    for name in recs:
        hits, waits, answered = 0, [], 0
        for t, req, answers in samples:
            ch = answers[name]
            if ch is None:
                continue
            answered += 1
            holds = shadow.holds[host_index[ch.host]]
            hits += _hit(holds, ch.gpus, t, req.hours)
            ready = t + SETUP_SECONDS + copy_hours(req, ch.host, w) * 3600
            waits.append((_start_time(holds, ch.gpus, t, ready) - t) / 60)
        rows[name].update({
            "requests": answered,
            "hit_rate": hits / answered if answered else None,
            "wait_mean_minutes": statistics.fmean(waits) if waits else None,
            "wait_p90_minutes": _quantile(waits, 0.9),
        })  # fmt: skip
    first = next(iter(recs))
    unanswered = sum(1 for _, _, a in samples if a[first] is None)

    # 2. follow replays ------------------------------------------------------------------------
    for name, rec in recs.items() if follow else ():
        t1 = time.perf_counter()
        draws: dict[str, list[float]] = {"gini": [], "gini_util": [], "busiest_20pct_share": []}
        waits = []
        for d in range(max(1, cfg.follow_draws)):
            res = run(hosts, _fresh(base_jobs), t_start, end, eval_from, chooser=rec,
                      seed=cfg.seed + 1000 * d)  # fmt: skip
            per_host = [float(x) for x in res.lab.gpu_hours_per_host]
            per_gpu = [x / h.gpu_count for x, h in zip(per_host, hosts, strict=True)]
            draws["gini"].append(gini(per_host))
            draws["gini_util"].append(gini(per_gpu))
            draws["busiest_20pct_share"].append(busiest_share(per_host))
            waits += [x / 60 for x in res.request_waits]
        rows[name].update({k: statistics.fmean(v) for k, v in draws.items()})
        rows[name].update({
            "gini_draws": draws["gini"],
            "busiest_20pct_share_draws": draws["busiest_20pct_share"],
            "follow_wait_mean_minutes": statistics.fmean(waits) if waits else None,
        })  # fmt: skip
        say(f"follow replay {name}: {time.perf_counter() - t1:.1f} s")

    # 3. latency at scale ----------------------------------------------------------------------
    lat = state["latency"]
    if lat is not None:
        big, big_hist = scale_fleet(lat[0], lat[1], cfg.latency_hosts)
        reqs = [r for _, r, _ in samples] or [RecommendRequest(gpus=1, gpu_mem_gb=8, hours=1)]
        rng = random.Random(cfg.seed)
        picks = [reqs[rng.randrange(len(reqs))] for _ in range(cfg.latency_requests)]
        index = FleetIndex(big, big_hist)
        gpufleet = next(iter(recs))

        def cached(r: RecommendRequest) -> Any:  # what the API does: ranking and reasons
            return recommend(r, big, big_hist, index=index).as_json()

        def cold(r: RecommendRequest) -> Any:  # a fleet index built for this answer
            return recommend(r, big, big_hist).as_json()

        for name, rec in recs.items():
            fn: Callable[[RecommendRequest], Any] = (
                cached if name == gpufleet else _bind(rec, big, big_hist)
            )
            fn(picks[0])  # warm-up
            wall, cpu = _timed(fn, picks)
            rows[name].update(_stats("latency", wall) | _stats("latency_cpu", cpu))
            if name == gpufleet:  # a fleet index built for every answer (state just changed)
                wall, cpu = _timed(cold, picks[:200])
                rows[name].update(_stats("latency_cold", wall) | _stats("latency_cold_cpu", cpu))
    gpus = sum(h.gpu_count for h in hosts)
    busy = sum(float(x) for x in shadow.lab.gpu_hours_per_host) / (cfg.eval_days * 24 * gpus)
    return {
        "config": dataclasses.asdict(cfg),
        "fleet": _fleet_summary(hosts),
        "jobs": len(base_jobs),
        "requests_scored": len(samples),
        "requests_nothing_fits": unanswered,
        "shadow_fleet_busy_share": busy,
        "latency_fleet_hosts": cfg.latency_hosts,
        "wall_seconds": time.perf_counter() - wall0,
        "rows": list(rows.values()),
    }


def _bind(
    rec: Recommender, fleet: FleetSnap, hist: FleetHistory
) -> Callable[[RecommendRequest], Any]:
    def fn(r: RecommendRequest) -> Any:
        return rec(r, fleet, hist)

    return fn


def _timed(fn: Any, picks: list[RecommendRequest]) -> tuple[list[float], list[float]]:
    """Wall and this thread's CPU milliseconds per answer (CPU time leaves out the time the
    process waited for a core on a shared machine)."""
    wall, cpu = [], []
    for r in picks:
        a, c = time.perf_counter(), time.thread_time()
        fn(r)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - a) * 1000)
    return wall, cpu


def _stats(prefix: str, xs: list[float]) -> dict[str, float | None]:
    return {f"{prefix}_p50_ms": _quantile(xs, 0.5), f"{prefix}_p99_ms": _quantile(xs, 0.99)}


def _fresh(jobs: list[SimJob]) -> list[SimJob]:
    return [dataclasses.replace(j, start=-1.0, host=-1, gpu_idx=()) for j in jobs]


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _fleet_summary(hosts: list[Any]) -> list[dict[str, Any]]:
    shapes: dict[tuple[str, int, int], int] = {}
    for h in hosts:
        key = (h.gpu.name, h.gpu_count, h.gpu.memory_bytes // 2**30)
        shapes[key] = shapes.get(key, 0) + 1
    return [{"gpu": g, "gpus_per_host": n, "gpu_memory_gb": m, "hosts": c}
            for (g, n, m), c in sorted(shapes.items())]  # fmt: skip


def scale_fleet(snap: FleetSnap, hist: FleetHistory, n: int) -> tuple[FleetSnap, FleetHistory]:
    """``n`` hosts copied round-robin from ``snap`` (names suffixed), each with its history."""
    hosts: list[HostSnap] = []
    out = FleetHistory(fleet_rate=hist.fleet_rate, fleet_held_share=hist.fleet_held_share,
                       fleet_runs_hours=hist.fleet_runs_hours, built_at=hist.built_at,
                       hours_known=hist.hours_known)  # fmt: skip
    base = list(snap.hosts)
    for i in range(n):
        h = base[i % len(base)]
        name = f"{h.name}-{i // len(base):03d}"
        hosts.append(dataclasses.replace(h, name=name))
        out.hosts[name] = hist.host(h.name)
    return FleetSnap(snap.now, tuple(hosts)), out


COLUMNS = (
    ("recommender", "recommender", "{}"),
    ("hit rate", "hit_rate", "{:.1%}"),
    ("wait mean (min)", "wait_mean_minutes", "{:.1f}"),
    ("wait p90 (min)", "wait_p90_minutes", "{:.1f}"),
    ("Gini per-host GPU-h", "gini", "{:.3f}"),
    ("busiest 20% share", "busiest_20pct_share", "{:.1%}"),
    ("Gini per-host util", "gini_util", "{:.3f}"),
    ("p50 ms", "latency_p50_ms", "{:.2f}"),
    ("p99 ms", "latency_p99_ms", "{:.2f}"),
    ("p99 CPU ms", "latency_cpu_p99_ms", "{:.2f}"),
)


def table_text(result: dict[str, Any]) -> str:
    head = [c[0] for c in COLUMNS]
    body = [[("-" if r.get(k) is None else f.format(r[k])) for _, k, f in COLUMNS]
             for r in result["rows"]]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])
