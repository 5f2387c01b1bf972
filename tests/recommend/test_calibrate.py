"""The stated chance's recalibration (recommend/calibrate.py): fitting and applying the map."""

from __future__ import annotations

import numpy as np
import pytest

from gpufleet.recommend import calibrate
from gpufleet.recommend.evaluate import reliability


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Answers from an over-confident model: it says sigmoid(z), the truth is sigmoid(z/3 - 0.5
    - 0.8 x the fleet's free share), so the fit has something to learn in two features."""
    z = rng.normal(3.0, 2.0, n)
    free = rng.random(n)
    x = calibrate.features(1 / (1 + np.exp(-z)), 6.0, rng.random(n), rng.random(n),
                           rng.random(n), 0.0, 1.0, 2.0, 0.5, rng.random(n),
                           rng.random(n))  # fmt: skip
    x[:, 5] = free
    truth = 1 / (1 + np.exp(-(z / 3 - 0.5 - 0.8 * free)))
    return x, rng.random(n) < truth


def test_fit_calibrates_new_answers_from_the_same_process() -> None:
    rng = np.random.default_rng(7)
    x, ok = _draw(rng, 20000)
    cal = calibrate.fit(x, ok)
    x2, ok2 = _draw(rng, 20000)
    stated_raw = 1 / (1 + np.exp(-x2[:, 0]))
    raw = reliability([(float(p), bool(o)) for p, o in zip(stated_raw, ok2, strict=True)])
    got = reliability([(float(p), bool(o)) for p, o in zip(cal.apply(x2), ok2, strict=True)])
    assert got["brier"] < raw["brier"] and got["brier"] < got["brier_base_rate"]
    for row in got["rows"]:
        if row["answers"] >= 500:
            assert abs(row["error_points"]) < 5, row


def test_applied_chances_are_never_certain_and_too_few_samples_are_refused() -> None:
    x = np.zeros((3, len(calibrate.FEATURES)))
    x[:, 0] = [-40.0, 0.0, 40.0]
    p = calibrate.DEFAULT.apply(x)
    assert np.all((p > 0) & (p < 1)) and p[0] <= p[1] < p[2]
    with pytest.raises(ValueError, match="too few"):
        calibrate.fit(x, np.asarray([True, False, True]))


def test_features_are_one_row_per_answer_in_the_documented_order() -> None:
    x = calibrate.features(np.asarray([0.5, 0.9]), 2.0, np.asarray([0.0, 1.0]),
                           np.asarray([0.25, 0.5]), np.asarray([0.1, 0.2]), 0.3, 4.0, 6.0,
                           1.0, np.asarray([0.0, 2.0]), np.asarray([0.5, 0.5]))  # fmt: skip
    assert x.shape == (2, len(calibrate.FEATURES))
    assert x[0, 0] == pytest.approx(0.0) and x[1, 0] == pytest.approx(np.log(9.0))
    assert x[0, 1] == pytest.approx(np.log(2.0)) and x[1, 9] == pytest.approx(np.log(3.0))


def test_stay_free_share_from_the_hour_tier() -> None:
    from gpufleet.recommend.history import STAY_HOURS, HourlyHeld, build_history

    hours = 24 * 14
    rng = np.random.default_rng(3)
    keys = [("busy", g) for g in range(4)] + [("quiet", g) for g in range(4)]
    held = np.zeros((len(keys), hours))
    for i, (name, _) in enumerate(keys):
        # busy: a free GPU is taken again within about two hours; quiet: within about two days
        p = 0.5 if name == "busy" else 0.02
        held[i] = (rng.random(hours) < p).astype(float)
    hist = build_history(HourlyHeld(0, keys, held))
    busy, quiet = hist.host("busy").stay_free, hist.host("quiet").stay_free
    assert busy.shape == quiet.shape == STAY_HOURS.shape
    assert np.all(np.diff(busy) <= 1e-12) and np.all(np.diff(quiet) <= 1e-12)  # longer: rarer
    # the next hour free: 98% vs 50% per hour (shrunk a little to the fleet's), two: ~96% vs ~25%
    assert quiet[0] > 0.9 and 0.4 < busy[0] < 0.6 and busy[1] < 0.35 < 0.9 < quiet[1]
    assert np.all(busy <= hist.stay_free + 1e-12) and np.all(hist.stay_free <= quiet + 1e-12)
    # a host never seen gets the fleet's shares
    assert np.allclose(hist.host("new").stay_free, hist.stay_free)
