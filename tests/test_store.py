"""The store through its public interface: migrations, group commits, retention, series; each
test runs on the embedded DuckDB store and on PostgreSQL (skipped when it is not reachable)."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from gpufleet.live.state import host_status
from gpufleet.store import IngestItem, StoreError, open_store
from gpufleet.store.schema import SCHEMA_VERSION
from tests.conftest import make_batch, make_sample


@pytest.fixture(params=["duckdb", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "s.duckdb")
    return request.getfixturevalue("postgres_url")


def applied_migrations(url: str) -> int:
    """Rows in schema_migrations, read with the backend's own driver."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as con:
            return con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    con = duckdb.connect(url, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    finally:
        con.close()


def item(batch, received_at=None):
    return IngestItem(batch, "tok", received_at or time.time(), 0.0)


def test_schema_is_created_once_and_versioned(store_url):
    store = open_store(store_url)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    again_url = store_url if "://" in store_url else f"duckdb://{store_url}"
    again = open_store(again_url)  # reopening applies nothing twice
    assert again.schema_version() == SCHEMA_VERSION
    again.close()
    assert applied_migrations(store_url) == SCHEMA_VERSION


def test_second_writer_gets_a_clear_error(tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    try:
        import subprocess
        import sys

        code = f"from gpufleet.store import open_store; open_store({str(tmp_path / 's.duckdb')!r})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0
        assert "StoreError: cannot open the store" in r.stderr
    finally:
        store.close()


def test_group_commit_dedupes_within_and_across_groups(store_url):
    store = open_store(store_url)
    b1, b2 = make_batch(make_sample("a")), make_batch(make_sample("b"))
    futures = [store.submit(item(b)) for b in (b1, b2, b1, b1)]
    assert [f.result() for f in futures] == [True, True, False, False]
    assert store.submit(item(b2)).result() is False
    assert store.count("host_samples") == 2
    assert store.count("batches") == 2
    assert store.batches_stored == 2 and store.batches_duplicate == 3
    store.close()


def test_hosts_keep_newest_sample_and_earliest_first_seen(store_url):
    store = open_store(store_url)
    now = time.time()
    store.submit(item(make_batch(make_sample("h", ts=now)))).result()
    late = make_batch(make_sample("h", ts=now - 3600, gpus=2), sent_at=now)
    store.submit(item(late)).result()
    (h,) = store.hosts()
    assert h.last_seen == pytest.approx(now)
    assert h.first_seen == pytest.approx(now - 3600)
    assert len(h.last_sample["gpus"]) == 8  # the newer sample, not the late one
    store.close()


def test_held_back_host_samples_are_written_on_read_and_at_close(tmp_path, monkeypatch):
    """The embedded store writes hosts' small columns often and their full samples seldom
    (duck.HOST_SAMPLES_FLUSH_SECONDS): whatever was held back is there for a read, and after
    a clean stop, and a late sample never replaces a newer held-back one."""
    from gpufleet.store import duck

    monkeypatch.setattr(duck, "HOSTS_FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(duck, "HOST_SAMPLES_FLUSH_SECONDS", 3600.0)
    path = tmp_path / "s.duckdb"
    store = open_store(str(path))
    now = time.time()
    for smp in (
        make_sample("h", ts=now - 10, gpus=8),  # the host's first row: written with it
        make_sample("h", ts=now, gpus=4),  # newest: held back
        make_sample("h", ts=now - 3600, gpus=2),  # late
    ):
        store.submit(item(make_batch(smp))).result()
        store.write(lambda con: None)  # let the applier run (and flush the small columns)
    (h,) = store.hosts()
    assert (h.last_seen, len(h.last_sample["gpus"])) == (pytest.approx(now), 4)
    store.submit(item(make_batch(make_sample("h", ts=now + 5, gpus=3)))).result()
    store.close()
    store = open_store(str(path))
    (h,) = store.hosts()
    assert (h.last_seen, len(h.last_sample["gpus"])) == (pytest.approx(now + 5), 3)
    assert h.first_seen == pytest.approx(now - 3600)
    store.close()


def test_prune_drops_old_raw_rows_and_old_dedupe_keys(store_url):
    store = open_store(store_url)
    now = time.time()
    old = make_batch(make_sample("h", ts=now - 40 * 86400), sent_at=now)
    new = make_batch(make_sample("h", ts=now))
    store.submit(item(old, received_at=now - 10 * 86400)).result()
    store.submit(item(new)).result()
    deleted = store.prune(raw_before=now - 30 * 86400, batches_before=now - 7 * 86400)
    assert deleted["host_samples"] == 1 and deleted["gpu_samples"] == 8
    assert deleted["batches"] == 1
    assert store.count("host_samples") == 1 and store.count("batches") == 1
    store.close()


def test_writes_racing_a_close_finish_or_are_refused_never_hang(store_url):
    """A rollup or prune still running on a thread when the server stops used to queue its
    write behind the writer's stop and wait forever (and with it the server's shutdown)."""
    store = open_store(store_url)
    outcomes: list[str] = []
    go = threading.Event()

    def keep_writing() -> None:
        go.set()
        while True:
            try:
                store.prune(raw_before=0.0, batches_before=0.0)
            except StoreError as e:
                outcomes.append(str(e))
                return

    threads = [threading.Thread(target=keep_writing, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    go.wait()
    store.close()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a write waits for a writer that has stopped"
    assert outcomes == ["the store is closed (the server is stopping)"] * 3
    with pytest.raises(StoreError, match="closed"):
        store.submit(item(make_batch(make_sample("h")))).result(timeout=5)


def test_series_downsamples_to_max_points(store_url):
    store = open_store(store_url)
    now = time.time()
    futs = [store.submit(item(make_batch(make_sample("h", ts=now - 1000 + i, gpus=1))))
            for i in range(1000)]  # fmt: skip
    assert all(f.result() for f in futs)
    (full,) = store.series("h", "host.cpu_percent", now - 2000, now, max_points=5000)
    assert len(full.points) == 1000
    (coarse,) = store.series("h", "gpu.temperature_celsius", now - 1000, now, max_points=50)
    assert 45 <= len(coarse.points) <= 51
    assert all(v == 50.0 for _, v in coarse.points)
    with pytest.raises(StoreError):
        store.series("h", "host.nope", 0, now)
    store.close()


def test_tokens_and_revocation(store_url):
    from gpufleet.http.auth import new_token

    store = open_store(store_url)
    _, rec = new_token("rack")
    store.create_token(rec)
    with pytest.raises(StoreError, match="already exists"):
        store.create_token(rec)
    assert store.revoke_token("rack", 1.0).revoked_at == 1.0
    with pytest.raises(StoreError, match="already revoked"):
        store.revoke_token("rack", 2.0)
    with pytest.raises(StoreError, match="no token"):
        store.revoke_token("nope", 2.0)
    store.close()


@pytest.mark.parametrize(
    ("age", "interval", "expected"),
    [(0, 5, "online"), (14, 5, "online"), (16, 5, "stale"), (59, 5, "stale"), (61, 5, "offline"),
     (100, 60, "online"), (181, 60, "stale"), (361, 60, "offline")],
)  # fmt: skip
def test_host_status_thresholds(age, interval, expected):
    assert host_status(1000.0, interval, 1000.0 + age) == expected
