"""The report API keeps answers while the tiers they read stay the same: a repeated question
is answered from what was kept, with the same content; late samples rolled up into the
period, a changed user mapping or tier retention make the next answer read the tiers again;
a change elsewhere in time does not; ``Cache-Control: no-cache`` always reads."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpufleet.config import load_settings
from gpufleet.reports.api import CACHE_HEADER
from gpufleet.reports.cache import ReportCache
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from gpufleet.store.warehouse import note_tiers_changed, tiers_changed_since
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 2, 27, tzinfo=UTC).timestamp()
END = START + 48 * 3600
NOW = END + 2 * 3600
DAY1 = "from=2024-02-27&to=2024-02-27"
DAY2 = "from=2024-02-28&to=2024-02-28"
FAR = 100_000  # days: nothing from 2024 is pruned while the test runs


def is_late(s) -> bool:
    """node1's samples of three hours on the second day, delivered after the rollup."""
    return s.host == "node1" and START + 36 * 3600 <= s.ts < START + 39 * 3600


@pytest.fixture
def served(tmp_path):
    samples = generate(START, END, seed=5, hosts=3)
    store = open_store(tmp_path / "gpufleet.duckdb")
    ingest(store, [s for s in samples if not is_late(s)])
    store.rollup(now=NOW, tz="UTC", busy_util_percent=5.0)
    settings = load_settings(
        None,
        overrides={
            "server": {"data_dir": tmp_path},
            "retention": {"raw_days": FAR},
            "warehouse": {"retention_minute_days": FAR, "retention_hour_days": FAR},
        },
        environ={},
    )
    try:
        with TestClient(create_app(settings, store=store)) as client:
            yield client, store, [s for s in samples if is_late(s)]
    finally:
        store.close()


def ask(client, query: str, **headers: str):
    r = client.get(f"/api/v1/reports?{query}", headers=headers)
    assert r.status_code == 200, r.text
    return r


def content(r) -> dict:
    body = r.json()
    body.pop("query_ms")  # the time this answer took
    return body


def test_a_repeated_question_is_answered_from_what_was_kept(served):
    client, _, _ = served
    q = f"period=month&by=host&{DAY1}"
    first = ask(client, q)
    again = ask(client, q)
    assert first.headers[CACHE_HEADER] == "miss" and again.headers[CACHE_HEADER] == "hit"
    assert content(again) == content(first)
    assert content(first)["rows"] and content(first)["rolled_up_until"] is not None
    fresh = ask(client, q, **{"Cache-Control": "no-cache"})
    assert fresh.headers[CACHE_HEADER] == "miss" and content(fresh) == content(first)
    # each question its own answer: other fields, CSV, another grouping
    narrow = ask(client, f"{q}&fields=key,gpu_hours")
    assert narrow.headers[CACHE_HEADER] == "miss"
    assert narrow.json()["columns"] == ["key", "gpu_hours"]
    csv_first = ask(client, f"{q}&format=csv")
    csv_again = ask(client, f"{q}&format=csv")
    assert csv_again.headers[CACHE_HEADER] == "hit" and csv_again.text == csv_first.text
    assert csv_again.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_again.headers["content-disposition"]
    assert ask(client, f"period=month&by=gpu&{DAY1}").headers[CACHE_HEADER] == "miss"
    # the raw tier changes with every batch: never kept
    raw = f"period=day&by=host&{DAY1}&tier=raw"
    assert ask(client, raw).headers[CACHE_HEADER] == "off"
    assert ask(client, raw).headers[CACHE_HEADER] == "off"


def test_late_samples_rolled_up_invalidate_only_the_answers_they_touch(served):
    client, store, late = served
    day1, day2 = f"period=day&by=host&{DAY1}", f"period=day&by=host&{DAY2}"
    before1, before2 = content(ask(client, day1)), content(ask(client, day2))
    ingest(store, late)  # older than the watermark: marked for the next rollup
    waiting = content(ask(client, day2))
    assert waiting["late_hours_waiting"] == 3  # kept figures, the warehouse as it is now
    assert waiting["rows"] == before2["rows"]
    store.rollup(now=NOW, tz="UTC", busy_util_percent=5.0)

    r1, r2 = ask(client, day1), ask(client, day2)
    assert r1.headers[CACHE_HEADER] == "hit"  # day 1 and its previous day: untouched
    assert content(r1) == before1
    assert r2.headers[CACHE_HEADER] == "miss"  # read again: node1's three hours are in
    after2 = content(r2)
    assert after2["late_hours_waiting"] == 0

    def hours(rep: dict) -> float:
        return next(r["availability_hours"] for r in rep["rows"] if r["key"] == "node1")

    assert hours(after2) == pytest.approx(hours(before2) + 3 * 2, abs=0.1)  # 2 GPUs x 3 h
    fresh = ask(client, day2, **{"Cache-Control": "no-cache"})
    assert content(fresh) == after2  # what was read again is what the tiers say now


def test_a_changed_user_mapping_invalidates(served):
    client, store, _ = served
    q = f"period=month&by=person&{DAY1}"
    before = content(ask(client, q))
    assert ask(client, q).headers[CACHE_HEADER] == "hit"
    user = before["rows"][0]["key"]
    store.set_user_mapping(user, "somebody-else", None)
    r = ask(client, q)
    assert r.headers[CACHE_HEADER] == "miss"
    assert "somebody-else" in {row["key"] for row in content(r)["rows"]}


def test_tier_retention_invalidates_what_it_drops(served):
    client, store, _ = served
    q = f"period=day&by=host&{DAY1}&tier=hour"
    before = content(ask(client, q))
    assert before["rows"]
    store.prune_tiers(START - 86400, START + 86400)  # day 1's hours go
    r = ask(client, q)
    assert r.headers[CACHE_HEADER] == "miss" and content(r)["rows"] == []


def test_changes_since_a_version():
    """The pure rule: a change after the version whose span meets [lo, hi), or a version the
    kept changes no longer reach, means changed."""
    import duckdb

    from gpufleet.store.warehouse import get_state

    con = duckdb.connect()
    con.execute("CREATE TABLE rollup_state (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    assert not tiers_changed_since(get_state(con), 0, 0, 100)
    v1 = note_tiers_changed(con, 100, 200)
    state = get_state(con)
    assert v1 == 1
    assert tiers_changed_since(state, 0, 150, 160)
    assert tiers_changed_since(state, 0, 0, 101)
    assert not tiers_changed_since(state, 0, 0, 100)  # [lo, hi): touching is not meeting
    assert not tiers_changed_since(state, 0, 200, 300)
    assert not tiers_changed_since(state, 1, 150, 160)
    assert tiers_changed_since(state, 5, 0, 1)  # a version from elsewhere: trust nothing
    note_tiers_changed(con)  # unbounded
    assert tiers_changed_since(get_state(con), 1, -1e18, -1e17)
    for _ in range(70):  # more than are kept: version 1's successors are forgotten
        note_tiers_changed(con, 1000, 2000)
    state = get_state(con)
    assert tiers_changed_since(state, 1, 0, 10)
    assert not tiers_changed_since(state, 60, 0, 10)
    assert not math.isnan(float(state["tiers_version"]))


def test_the_cache_keeps_a_bounded_size():
    from gpufleet.reports.cache import Entry

    cache = ReportCache(max_bytes=1000)
    state = {"tiers_version": "0"}
    for i in range(10):
        cache.put(i, Entry(0, (0.0, 1.0), b"x" * 200, "application/json", {}))
    assert len(cache) == 5  # 1,000 bytes: the five asked last
    assert cache.get(0, state) is None and cache.get(9, state) is not None
    cache.put("huge", Entry(0, (0.0, 1.0), b"x" * 600, "application/json", {}))
    assert cache.get("huge", state) is None  # over a quarter of the whole: not kept
