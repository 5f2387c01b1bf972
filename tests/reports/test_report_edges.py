"""The report's edges: any date answers a result or a 4xx (never a 500), the true watermark
with late data waiting, and what the average utilisation is taken over."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.config import load_settings
from gpufleet.reports.service import compute_report
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from gpufleet.warehouse.calendar import PERIODS
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 2, 27, tzinfo=UTC).timestamp()
END = START + 30 * 3600


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("edges")
    store = open_store(d / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=5, hosts=2))
    store.rollup(now=END + 7200, tz="UTC", busy_util_percent=5.0)
    store.close()
    settings_ = load_settings(None, overrides={"server": {"data_dir": d}}, environ={})
    with TestClient(create_app(settings_)) as c:
        yield c


def _day(d: date | None) -> str | None:
    return d.isoformat() if d is not None else None


# Any date, and often one near the calendar's ends (where a period before or a day after
# falls off it).
DATES = st.one_of(
    st.dates(),
    st.dates(max_value=date(1, 3, 1)),
    st.dates(min_value=date(9999, 10, 1)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.one_of(st.none(), DATES),
    span=st.one_of(st.none(), st.integers(-3, 400), DATES),
    period=st.sampled_from(PERIODS),
    tier=st.sampled_from(["auto", "day", "hour", "raw"]),
    by=st.sampled_from(["fleet", "host", "user"]),
    tz=st.sampled_from(["UTC", "Asia/Kolkata", "Pacific/Kiritimati", "America/Adak"]),
)
def test_any_date_answers_a_result_or_a_4xx(client, first, span, period, tier, by, tz):
    if isinstance(span, int):
        try:
            last = first + timedelta(span) if first is not None else None
        except OverflowError:
            last = date.max if span > 0 else date.min
    else:
        last = span
    params = {"period": period, "tier": tier, "by": by}
    for k, v in (("from", _day(first)), ("to", _day(last))):
        if v is not None:
            params[k] = v
    client.app.state.ctx.settings.warehouse.timezone = tz
    try:
        r = client.get("/api/v1/reports", params=params)
    finally:
        client.app.state.ctx.settings.warehouse.timezone = "UTC"
    assert r.status_code in (200, 400), (params, r.status_code, r.text[:300])
    if r.status_code == 400:
        assert r.json()["error"]["code"] in ("invalid_range", "invalid_date")
    else:
        assert r.json()["tier"] in ("day", "hour", "raw")


@pytest.mark.parametrize(
    "query",
    ["from=0001-01-01", "from=0001-01-01&period=week", "to=9999-12-31&tier=hour",
     "from=9999-12-31&to=9999-12-31&period=year", "from=0001-01-01&to=0001-01-31&period=custom"],
)  # fmt: skip
def test_the_calendar_ends_are_400(client, query):
    r = client.get(f"/api/v1/reports?{query}")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_range" and "0002-01-01" in err["message"]


def test_rolled_up_until_waits_for_late_data(tmp_path):
    store = open_store(tmp_path / "late.duckdb")
    try:
        samples = generate(START, END, seed=9, hosts=2)
        early = [s for s in samples if s.ts < START + 20 * 3600 or s.host != "node1"]
        late = [s for s in samples if s not in early]
        ingest(store, early)
        store.rollup(now=END + 7200, tz="UTC", busy_util_percent=5.0)
        kw = {"period": "day", "by": "host", "first": date(2024, 2, 27),
              "last": date(2024, 2, 28), "tz": "UTC"}  # fmt: skip
        before = compute_report(store, **kw)
        assert before["late_hours_waiting"] == 0
        wm = datetime.fromisoformat(before["rolled_up_until"].replace("Z", "+00:00"))
        assert wm.timestamp() == pytest.approx(END + 3600 - (END % 3600), abs=3600)
        ingest(store, late)  # a spool delivered after the rollup passed its hours
        waiting = compute_report(store, **kw)
        assert waiting["late_hours_waiting"] >= 9
        first_late = min(s.ts for s in late) // 3600 * 3600
        until = datetime.fromisoformat(waiting["rolled_up_until"].replace("Z", "+00:00"))
        assert until.timestamp() == first_late
        store.rollup(now=time.time(), tz="UTC", busy_util_percent=5.0)
        after = compute_report(store, **kw)
        assert after["late_hours_waiting"] == 0
        assert after["totals"]["gpu_hours"] > before["totals"]["gpu_hours"]
    finally:
        store.close()


def test_the_report_says_what_the_average_is_over(client):
    client.app.state.ctx.settings.warehouse.timezone = "UTC"  # the tiers' zone
    by_user = client.get("/api/v1/reports?period=custom&by=user&from=2024-02-27&to=2024-02-28")
    by_host = client.get("/api/v1/reports?period=custom&by=host&from=2024-02-27&to=2024-02-28")
    u, h = by_user.json(), by_host.json()
    assert u["avg_util_over"].startswith("held") and h["avg_util_over"].startswith("all")
    # the two totals differ for that reason: free GPUs (0%) count only in the hosts' average
    assert u["totals"]["avg_util"] > h["totals"]["avg_util"] > 0
