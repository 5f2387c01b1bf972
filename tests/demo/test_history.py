"""The demo's past: months of history written through the store's bulk path and rolled up by
the store's own rollup, read back through the reports."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import numpy as np
import pytest

from gpufleet.config import load_settings
from gpufleet.demo.cli import _write_history
from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.history import WEEK, HistoryWriter, trace_start_for, write_history
from gpufleet.philly import load_trace
from gpufleet.reports.service import compute_report
from gpufleet.store.duck import DuckDBStore
from gpufleet.wire import Gpu, gpu_is_free

END = datetime(2026, 6, 1, tzinfo=UTC).timestamp()  # a Monday, midnight: every hour complete
STEP = 600.0


@pytest.fixture(scope="module")
def trace():
    return load_trace()


def test_history_lines_up_with_the_hour_of_week(trace):
    for wall in (END, END - 3.5 * 86400, END + 12345.0):
        for days in (3, 30, 90):
            span = days * 86400.0
            t0 = trace_start_for(trace, wall, span)
            assert (t0 - wall) % WEEK == pytest.approx(0.0, abs=1e-6)
            assert trace[0].submit + WEEK <= t0  # not in the sparse first week
            if days < 60:  # short histories end in the trace's busy last weeks
                assert t0 + span <= trace[-1].submit
                assert t0 + span > trace[-1].submit - 3 * WEEK


def test_idle_gpus_are_free_and_processes_match_their_gpus(trace):
    specs = build_fleet(4, seed=2)
    writer = HistoryWriter(specs, trace, wall_from=END - 2 * 86400, wall_to=END,
                           step_seconds=STEP, seed=2)  # fmt: skip
    held = free = 0
    for columns, _done, _total in writer.chunks():
        g, p = columns["gpu_samples"], columns["process_samples"]
        idle = g["processes"] == 0
        held += int((~idle).sum())
        free += int(idle.sum())
        # every GPU with no process counts as free by the rule the dashboard uses
        for mem in g["memory_used_bytes"][idle][:500]:
            assert gpu_is_free(Gpu(index=0, memory_used_bytes=int(mem)), [])
        assert int(g["processes"].sum()) == len(p["ts"])
        assert set(np.unique(g["ts"])) >= set(np.unique(p["ts"]))
    assert held > 0 and free > 0
    assert writer.jobs > 0


def test_history_is_rolled_up_and_reported(tmp_path, trace):
    specs = build_fleet(4, seed=1)
    store = DuckDBStore(tmp_path / "h.duckdb")
    try:
        days = 3.0
        lines: list[str] = []
        report = write_history(store, specs, trace, days=days, end=END, tz="UTC",
                               busy_util_percent=5.0, step_seconds=STEP, seed=1,
                               progress=lines.append)  # fmt: skip
        steps = math.ceil(days * 86400 / STEP)
        assert store.count("host_samples") == report.host_rows == 4 * steps
        assert store.count("gpu_samples") == report.gpu_rows == steps * sum(
            s.gpu_count for s in specs
        )
        assert store.count("process_samples") == report.process_rows > 0
        assert report.total_seconds > 0 and "rolled up" in " ".join(lines)
        # the reports read the tiers: GPU-hours held = process samples' GPU-samples x step
        first, last = date(2026, 5, 29), date(2026, 5, 31)
        by_host = compute_report(store, period="custom", by="host", first=first, last=last,
                                 tz="UTC", tier="day")  # fmt: skip
        keys = {row["key"] for row in by_host["rows"]}
        assert keys <= {s.name for s in specs} and keys
        raw = compute_report(store, period="custom", by="host", first=first, last=last,
                             tz="UTC", tier="raw")  # fmt: skip
        assert by_host["totals"]["gpu_hours"] == pytest.approx(raw["totals"]["gpu_hours"])
        by_user = compute_report(store, period="custom", by="user", first=first, last=last,
                                 tz="UTC", tier="day")  # fmt: skip
        assert len(by_user["rows"]) > 1
        assert by_user["totals"]["gpu_hours"] == pytest.approx(by_host["totals"]["gpu_hours"])
    finally:
        store.close()


def test_written_on_first_start_only(tmp_path, trace):
    settings = load_settings(None)
    specs = build_fleet(3, seed=0)
    store = DuckDBStore(tmp_path / "once.duckdb")
    try:
        _write_history(store, settings, specs, trace, days=1, step=900, seed=0, load=0.6)
        rows = store.count("host_samples")
        assert rows >= 3 * 95
        _write_history(store, settings, specs, trace, days=1, step=900, seed=0, load=0.6)
        assert store.count("host_samples") == rows
    finally:
        store.close()
