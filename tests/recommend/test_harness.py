"""The closed-loop harness: requesters really hold what they were told, the recommender sees
only views, the tables print (figures go to docs; targets are not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpufleet.philly import TraceJob, default_trace_path
from gpufleet.philly import load_trace as read_trace
from gpufleet.recommend.baselines import all_recommenders
from gpufleet.recommend.evaluate import Config, interval, scenario_jobs
from gpufleet.recommend.fleet import FleetSnap
from gpufleet.recommend.history import FleetHistory
from gpufleet.recommend.lab import HABITS, run
from gpufleet.recommend.request import RecommendRequest
from tests.conftest import need_file


def gpufleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpufleet", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def need_trace() -> None:
    need_file(default_trace_path(), "the Philly trace")


def synthetic_trace(n: int = 400) -> list[TraceJob]:
    """Jobs every 10 minutes, 1-4 GPUs, 1-6 h: enough to fill a small lab."""
    return [TraceJob(i + 2, 1_500_000_000 + 600 * i, 3600 * (1 + i % 6), 1 + (i % 3) % 4, "vc1")
            for i in range(n)]  # fmt: skip


CFG = Config(hosts=6, scored_jobs=150, min_eval_days=1, max_eval_days=3, min_warmup_days=1)


@pytest.mark.parametrize("habit", HABITS)
def test_requesters_hold_the_gpus_they_were_told_for_their_real_duration(habit: str) -> None:
    hosts, jobs, start, eval_from, end = scenario_jobs(synthetic_trace(), CFG, "vc1", 0.9,
                                                       habit, 1)  # fmt: skip
    seen: list[tuple[str, tuple[int, ...], float]] = []
    rec = all_recommenders(1)["gpufleet"]

    def chooser(req: RecommendRequest, snap: FleetSnap, hist: FleetHistory) -> object:
        # the recommender gets views: no job records, nothing about how long holds will last
        assert isinstance(snap, FleetSnap) and isinstance(hist, FleetHistory)
        for h in snap.hosts:
            for g in h.gpus:
                assert not hasattr(g, "duration") and not hasattr(g, "end")
        c = rec(req, snap, hist)
        if c is not None:
            seen.append((c.host, c.gpus, snap.now))  # type: ignore[attr-defined]
        return c

    res = run(hosts, jobs, start, end, eval_from, chooser=chooser, seed=1)
    followed = [j for j in res.jobs if j.request is not None and j.submit >= eval_from]
    assert followed and seen
    names = [h.name for h in hosts]
    started = [j for j in followed if j.start >= 0]
    assert started
    for j in started:
        # it runs on one of the answers it got, for its real duration, and nobody else
        # held those GPUs at the same time
        assert (names[j.host], j.gpu_idx) in {(h, g) for h, g, _ in seen}
        for g in j.gpu_idx:
            spans = res.holds[j.host][g]
            assert (j.start, j.start + j.duration) in spans
            for a, b in spans:
                if (a, b) != (j.start, j.start + j.duration):
                    assert b <= j.start or a >= j.start + j.duration
        if not j.missed:  # a hit: started once its set-up and copy were done, no waiting
            assert j.start - j.submit == pytest.approx(300 + j.copy_seconds, abs=1e-6)


def test_interval_over_seeds() -> None:
    m, lo, hi = interval([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and lo < 0.6 < hi
    assert hi - m == pytest.approx(4.303 * 0.1 / 3**0.5)
    assert interval([0.4]) == (0.4, 0.4, 0.4)


def test_evaluate_recommender_quick_prints_the_tables_and_json() -> None:
    need_trace()
    r = gpufleet("evaluate-recommender", "--quick", "--vc", "11cb48", "--habit", "random",
                 "--seeds", "2", "--no-latency")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for name in (
        "gpufleet",
        "most free GPUs now",
        "most free, highest indices",
        "least loaded now",
        "random feasible",
        "most popular host",
        "best-fit packer",
    ):
        assert f"| {name}" in r.stdout
    for col in (
        "hit % [95% CI]",
        "req wait min",
        "all wait min",
        "Gini",
        "busiest 20% %",
        "util %",
        "calibration of p_free_for_duration",
        "| decile |",
    ):
        assert col in r.stdout
    r = gpufleet("evaluate-recommender", "--quick", "--vc", "11cb48", "--habit", "lowest",
                 "--seeds", "1", "--no-calibration", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    (sc,) = data["scenarios"]
    assert sc["vc"] == "11cb48" and sc["habit"] == "lowest"
    for row in sc["per_seed"][0].values():
        assert 0 <= row["hit_rate"] <= 1 and row["requests"] > 10
        assert 0 <= row["gini"] <= 1 and 0 < row["busiest_20pct_share"] <= 1
    from gpufleet.recommend.evalreport import digest_text

    assert "| 11cb48 | 1 | lowest |" in digest_text([data])
    assert {"fits (cached index)", "nothing fits (index built)", "full fleet (index built)"} <= set(
        data["latency"]
    )


def test_evaluate_recommender_says_what_is_wrong(tmp_path) -> None:
    r = gpufleet("evaluate-recommender", "--quick", "--trace", str(tmp_path / "none.csv"))
    assert r.returncode != 0
    assert "error:" in r.stderr and "none.csv" in r.stderr and "hint:" in r.stderr
    need_trace()
    r = gpufleet("evaluate-recommender", "--quick", "--vc", "nope")
    assert r.returncode != 0 and "--vc: no cluster 'nope'" in r.stderr and "hint:" in r.stderr


def test_real_trace_reads() -> None:
    need_trace()
    jobs = read_trace()
    assert len(jobs) > 60000 and jobs[0].submit <= jobs[-1].submit


def test_reliability_table_and_brier() -> None:
    from gpufleet.recommend.evaluate import reliability

    # stated 90% and right 9 times in 10; stated 10% and right once in 10
    samples = [(0.9, i < 9, True) for i in range(10)] + [(0.1, i < 1, True) for i in range(10)]
    r = reliability(samples)
    assert r["answers"] == 20 and r["base_rate"] == pytest.approx(0.5)
    rows = {x["decile"]: x for x in r["rows"]}
    assert rows["0.9-1.0"]["observed"] == pytest.approx(0.9)
    assert rows["0.1-0.2"]["observed"] == pytest.approx(0.1)
    assert r["brier"] == pytest.approx(0.09) and r["brier_base_rate"] == pytest.approx(0.25)
