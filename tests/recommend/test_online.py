"""Calibration learnt from the fleet's own past answers (recommend/online.py): the stated chance
and the time-to-free range, each from outcomes known by the time of the answer only."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from gpufleet.recommend import calibrate
from gpufleet.recommend.evaluate import calibration_study, replay_online
from gpufleet.recommend.online import (
    ChanceLedger,
    EtaLedger,
    EtaParams,
    OnlineParams,
    Said,
    km_quantiles,
)
from tests.recommend.test_harness import CFG, synthetic_trace

HOUR = 3600.0


class Takes:
    """A fleet's GPU takes as a server sees them: ``first_take`` only shows what happened by
    the ``now`` the caller passes on (the ledger checks it)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], list[float]] = {}

    def add(self, host: str, gpu: int, t: float) -> None:
        self.at.setdefault((host, gpu), []).append(t)
        self.at[(host, gpu)].sort()

    def first_take(self, host: str, gpu: int, after: float) -> float | None:
        return next((t for t in self.at.get((host, gpu), []) if t > after), None)


def overconfident_stream(rng: random.Random, n: int, true_rate: float, ledger: ChanceLedger,
                         takes: Takes, said: float = 0.85) -> list[tuple[float, float]]:  # fmt: skip
    """An answer every hour on its own GPU, 2 h window, the offline map saying ``said``; the
    GPU is really taken inside the window with chance 1 - ``true_rate``. Returns, per answer,
    (what the online map states at that moment, its time)."""
    out = []
    for i in range(n):
        now = i * HOUR
        ledger.settle(now, takes.first_take)
        rec = ledger.recalibration(now, calibrate.DEFAULT)
        out.append((float(rec.map(np.asarray([said]))[0]), now))
        host = f"h{i}"
        ledger.record(Said(i, now, host, (0,), 2.0, said))
        if rng.random() > true_rate:
            takes.add(host, 0, now + rng.uniform(0.1, 1.9) * HOUR)
    return out


def test_an_overconfident_fleet_is_told_its_observed_rate_after_enough_outcomes() -> None:
    rng = random.Random(5)
    ledger, takes = ChanceLedger(OnlineParams(prior_weight=30, half_life_hours=10_000)), Takes()
    stated = overconfident_stream(rng, 600, 0.5, ledger, takes)
    assert stated[0][0] == pytest.approx(0.85)  # nothing known yet: the offline map
    # the prior holds while there are few outcomes, then gives way to what was observed
    assert stated[10][0] > 0.7
    assert abs(stated[-1][0] - 0.5) < 0.06
    # the same for a fleet where the offline map is too timid
    ledger2, takes2 = ChanceLedger(OnlineParams(half_life_hours=10_000)), Takes()
    late = overconfident_stream(random.Random(6), 600, 0.95, ledger2, takes2, said=0.6)
    assert abs(late[-1][0] - 0.95) < 0.04


def test_recent_outcomes_weigh_more_when_the_fleet_changes() -> None:
    rng = random.Random(8)
    ledger, takes = ChanceLedger(OnlineParams(prior_weight=10, half_life_hours=24)), Takes()
    overconfident_stream(rng, 300, 0.9, ledger, takes)  # first a quiet fleet ...
    for i in range(300, 600):  # ... then a busy one (the same stream, continued)
        now = i * HOUR
        ledger.settle(now, takes.first_take)
        ledger.record(Said(i, now, f"h{i}", (0,), 2.0, 0.85))
        if rng.random() > 0.3:
            takes.add(f"h{i}", 0, now + 0.5 * HOUR)
    ledger.settle(600 * HOUR, takes.first_take)
    short = ledger.recalibration(600 * HOUR, calibrate.DEFAULT)
    ledger.params = OnlineParams(half_life_hours=10_000)
    long = ledger.recalibration(600 * HOUR, calibrate.DEFAULT)
    now_short, now_long = (float(r.map(np.asarray([0.85]))[0]) for r in (short, long))
    # a day's half-life: mostly the busy days (shrunk a little to the offline 85%); no
    # forgetting: the average of both
    assert abs(now_long - 0.6) < 0.06
    assert abs(now_short - 0.3) < 0.2 and now_short < now_long - 0.1


def test_an_answer_counts_only_once_its_window_is_over() -> None:
    ledger, takes = ChanceLedger(), Takes()
    for i in range(200):  # long windows, every GPU taken at once: failures known early
        ledger.record(Said(i, 0.0, f"h{i}", (0, 1), 24.0, 0.8))
        takes.add(f"h{i}", 1, 60.0)
    ledger.settle(2 * HOUR, takes.first_take)
    assert all(s.outcome is False for s in ledger.answers.values())
    rec = ledger.recalibration(2 * HOUR, calibrate.DEFAULT)
    assert rec.answers == 0 and float(rec.map(np.asarray([0.8]))[0]) == pytest.approx(0.8)
    rec = ledger.recalibration(24 * HOUR, calibrate.DEFAULT)
    assert rec.answers == 200 and float(rec.map(np.asarray([0.8]))[0]) < 0.3


def test_a_take_not_seen_yet_does_not_settle_and_a_window_without_one_is_a_success() -> None:
    ledger, takes = ChanceLedger(), Takes()
    ledger.record(Said("a", 0.0, "h", (0,), 2.0, 0.8))
    takes.add("h", 0, 1.5 * HOUR)  # happens later than the check below
    assert ledger.settle(1.0 * HOUR, takes.first_take) == []
    done = ledger.settle(1.6 * HOUR, takes.first_take)
    assert [s.outcome for s in done] == [False]
    ledger.record(Said("b", 0.0, "h2", (0,), 2.0, 0.8))
    assert ledger.settle(1.9 * HOUR, takes.first_take) == []
    assert [s.outcome for s in ledger.settle(2.0 * HOUR, takes.first_take)] == [True]


def test_a_top_answer_the_asker_took_has_no_outcome() -> None:
    ledger, takes = ChanceLedger(), Takes()
    ledger.record(Said("followed", 0.0, "h", (0, 1), 6.0, 0.7, top=True, follow_seconds=900))
    ledger.record(Said("partly", 0.0, "h2", (0, 1), 6.0, 0.7, top=True, follow_seconds=900))
    ledger.record(Said("not top", 0.0, "h3", (0,), 6.0, 0.7, top=False, follow_seconds=900))
    takes.add("h", 0, 300)
    takes.add("h", 1, 320)
    takes.add("h2", 0, 300)  # only one of the two: someone else
    takes.add("h3", 0, 300)
    ledger.settle(600, takes.first_take)  # too early to tell for "partly"
    got = {s.key: (s.outcome, s.followed) for s in ledger.answers.values()}
    assert got == {"followed": (None, True), "partly": (None, False), "not top": (False, False)}
    ledger.settle(1000, takes.first_take)
    assert ledger.answers["partly"].outcome is False
    # by default the map learns from the answers below the top only; with top answers, the
    # followed one is still left out
    assert ledger.recalibration(7 * HOUR, calibrate.DEFAULT).answers == 1
    ledger.params = OnlineParams(top_answers=True)
    assert ledger.recalibration(7 * HOUR, calibrate.DEFAULT).answers == 2


def test_the_ledger_is_bounded() -> None:
    ledger = ChanceLedger(OnlineParams(max_answers=50))
    for i in range(120):
        ledger.record(Said(i, float(i), "h", (0,), 1.0, 0.5))
    assert len(ledger.answers) == 50 and min(ledger.answers) == 70
    eta = EtaLedger(EtaParams(max_kept=30))
    for i in range(100):
        eta.record(i, float(i), 1.0)
    assert len(eta.estimates) == 30


def eta_stream(rng: random.Random, n: int, ledger: EtaLedger, bias: float, sigma: float,
               every: float = 0.5) -> list[tuple[float, float, float, float]]:  # fmt: skip
    """Estimates every ``every`` hours whose actual time is the estimate x exp(N(bias,
    sigma)); each settles when its set frees. Returns (estimate, low, high, actual)."""
    pending: list[tuple[float, int]] = []  # (frees at, key)
    out = []
    for i in range(n):
        now = i * every * HOUR
        for t, key in sorted(pending):
            if t <= now:
                ledger.settle(key, t)
        pending = [(t, k) for t, k in pending if t > now]
        est = rng.uniform(0.2, 20.0)
        actual = est * math.exp(rng.gauss(bias, sigma))
        lo, hi, _ = ledger.range(est, est * 0.9, est * 1.1, now)
        ledger.record(i, now, est)
        pending.append((now + actual * HOUR, i))
        out.append((est, lo, hi, actual))
    return out


def test_the_time_to_free_range_covers_about_80_percent_from_past_errors() -> None:
    rng = random.Random(11)
    ledger = EtaLedger(EtaParams(max_kept=400))
    got = eta_stream(rng, 1500, ledger, bias=-0.5, sigma=1.2)
    # before enough settled estimates: the estimate's own (too narrow) range
    assert got[0][1:3] == pytest.approx((got[0][0] * 0.9, got[0][0] * 1.1))
    later = got[500:]
    inside = sum(lo <= a <= hi for _, lo, hi, a in later) / len(later)
    assert 0.72 < inside < 0.88
    below = sum(a < lo for _, lo, _, a in later) / len(later)
    assert 0.04 < below < 0.16  # both tails, not one
    own = sum(e * 0.9 <= a <= e * 1.1 for e, _, _, a in later) / len(later)
    assert own < 0.2


def test_waiting_estimates_count_as_at_least_their_elapsed_time() -> None:
    # the long waits are the ones not settled yet: leaving them out would make the range too
    # short, counting them as censored does not
    values = np.asarray([0.0, 0.1, 0.2, 0.3, 0.4, 2.0, 2.0, 2.0, 2.0, 2.0])
    events = np.asarray([True] * 5 + [False] * 5)
    q_all = km_quantiles(values, events, [0.5, 0.9])
    q_settled = km_quantiles(values[:5], events[:5], [0.5, 0.9])
    assert q_all[1] >= 2.0 > q_settled[1]
    assert q_settled[0] == pytest.approx(0.2)


def test_the_harness_map_sees_only_what_was_settled_by_then() -> None:
    """In the study the ledger runs inside the replay (settled from the lab's takes so far);
    a replay of the same answers from their recorded takes gives the same chances."""
    said = calibration_study(synthetic_trace(), CFG, "vc1", 0.9, "mixed", 1)
    assert said and any(a.scored for a in said)
    assert replay_online(said, OnlineParams()) == pytest.approx([a.stated for a in said])
    moved = [a for a in said if abs(a.stated - a.p0) > 1e-9]
    first_moved = min(a.at for a in moved) if moved else math.inf
    # nothing moves the map before the first window is over
    assert first_moved >= min(a.at + a.hours * 3600 for a in said)
