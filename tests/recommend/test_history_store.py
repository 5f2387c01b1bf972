"""History features read from a real store's hour tier (the adapter in gpufleet.recommend.service)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gpufleet.recommend.service import load_history
from gpufleet.store import IngestItem, open_store
from tests.conftest import make_batch, make_sample

START = datetime(2024, 3, 4, tzinfo=UTC).timestamp()  # a Monday
HOURS = 48
NOW = START + HOURS * 3600 + 120


def samples():
    out = []
    for k in range(HOURS * 12):  # every 5 minutes
        ts = START + k * 300
        hour = k // 12
        # "popular": GPU 0 is held every other hour (freed, then taken again)
        popular = make_sample("popular", ts=ts, gpus=2, procs=1 if hour % 2 else 0)
        quiet = make_sample("quiet", ts=ts, gpus=2, procs=0)
        for s in (popular, quiet):
            s.interval_seconds = 300.0
            for g in s.gpus:
                g.memory_used_bytes = 0
        out += [popular, quiet]
    return out


@pytest.fixture
def store(tmp_path):
    st = open_store(str(tmp_path / "wh.duckdb"))
    yield st
    st.close()


def test_history_from_the_hour_tier(store) -> None:
    smp = samples()
    futs = [store.submit(IngestItem(make_batch(*smp[i : i + 300]), "t", NOW, 0.0))
            for i in range(0, len(smp), 300)]  # fmt: skip
    assert all(f.result() for f in futs)
    store.rollup(now=NOW, tz="UTC", busy_util_percent=5.0)
    hist = load_history(store, NOW, days=7)
    assert hist.hours_known == 7 * 24
    pop, quiet = hist.hosts["popular"], hist.hosts["quiet"]
    assert pop.hours_known == HOURS and quiet.hours_known == HOURS
    assert pop.held_share == pytest.approx(0.25, abs=0.02)  # 1 of 2 GPUs, half the hours
    assert quiet.held_share == 0.0
    assert pop.popularity > 1.5 > quiet.popularity
    # GPU 0 of "popular" is taken every other hour; nothing is ever taken on "quiet"
    assert pop.window_hazard(NOW, 6) * pop.gpu_factor[0] > 5 * quiet.window_hazard(NOW, 6)
    assert pop.gpu_factor[0] > pop.gpu_factor[1]
    assert list(pop.held_runs_hours) and set(pop.held_runs_hours) == {1}
