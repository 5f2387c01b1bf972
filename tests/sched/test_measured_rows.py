"""The step times measured on a real H200 (bench/data/h200_steptime.csv, scripts/gpu_steptime.py)
are rows the predictor reads: with them it knows the H200 and its co-location slowdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.sched.bench_table import read_bench
from gpufleet.sched.predictor import Predictor

CSV = Path(__file__).resolve().parents[2] / "bench" / "data" / "h200_steptime.csv"


def test_the_measured_h200_rows_feed_the_predictor() -> None:
    rows = read_bench(CSV)
    alone = [r for r in rows if not r.colocated]
    assert len(alone) == 9 and {r.gpu_model for r in rows} == {"h200"}
    p = Predictor(rows)
    got = p.step_time("ResNet-50 (batch size 64)", "h200")
    measured = next(r.step_time_s for r in alone if r.model == "ResNet-50 (batch size 64)")
    assert got.known and got.value == pytest.approx(measured)
    # two jobs time-sliced on it: each about twice as slow (docs/gpu-sharing.md)
    slow = p.slowdown("ResNet-50 (batch size 64)", "ResNet-18 (batch size 128)", "h200")
    assert 1.8 < slow.value < 2.5
