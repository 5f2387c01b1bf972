"""The PostgreSQL backend on the real server: partitions, concurrency, dedupe across restarts
and processes, a SIGKILLed server, and `gpufleet migrate-store` from the embedded store.
(tests/test_store.py runs the common store tests on both backends.)"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import orjson
import psycopg
import pytest

from gpufleet.agent.push import Backoff, Sender
from gpufleet.agent.spool import Spool
from gpufleet.store import IngestItem, StoreError, UserRecord, open_store, pg_schema
from gpufleet.store.schema import MIGRATIONS, RAW_TABLES
from tests.conftest import free_port, gpufleet_here, make_batch, make_sample
from tests.test_reliability import RecordingSender, wait_until

pytestmark = pytest.mark.service
DAY = 86400


def item(batch, received_at=None):
    return IngestItem(batch, "tok", received_at or time.time(), 0.0)


def test_every_duckdb_migration_has_a_postgresql_version():
    assert [(m.version, m.description) for m in pg_schema.migrations()] == [
        (m.version, m.description) for m in MIGRATIONS
    ]
    assert "double precision" in pg_schema.translate("x DOUBLE NOT NULL -- DOUBLE stays")
    assert pg_schema.translate("x DOUBLE -- a DOUBLE").endswith("-- a DOUBLE")
    assert pg_schema.parse_partition(pg_schema.partition_name("gpu_samples", 20000)) == (
        "gpu_samples",
        20000,
    )


def test_unreachable_server_is_a_clear_store_error():
    with pytest.raises(
        StoreError, match="cannot connect to PostgreSQL at postgresql://u:\\*\\*\\*@"
    ):
        open_store(f"postgresql://u:secret@127.0.0.1:{free_port()}/nope")


def test_raw_tables_are_partitioned_by_day_and_retention_drops_partitions(postgres_url):
    store = open_store(postgres_url)
    now = time.time()
    today = int(now // DAY)
    midnight = today * DAY
    cutoff = midnight - 30 * DAY + 12 * 3600  # noon, 30 days ago
    old = midnight - 40 * DAY + 100  # its whole day is before the cut-off
    same_day_before, same_day_after = midnight - 30 * DAY + 3600, midnight - 30 * DAY + 13 * 3600
    for ts in (old, same_day_before, same_day_after, now):  # late data makes its partition
        assert store.submit(item(make_batch(make_sample("h", ts=ts), sent_at=now))).result()
    parts = set(store.partitions())
    for day in (today - 40, today - 30, today, today + 1, today + 2):  # on demand and ahead
        assert {(t, day) for t in RAW_TABLES} <= parts
    with psycopg.connect(postgres_url) as con:
        kinds = dict(
            con.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)", [list(RAW_TABLES)]
            ).fetchall()
        )
        assert set(kinds.values()) == {"p"}  # partitioned parents
        in_part = con.execute(f"SELECT count(*) FROM host_samples_p{_ymd(today - 40)}").fetchone()
        assert in_part[0] == 1

    deleted = store.prune(raw_before=cutoff, batches_before=0)
    assert deleted["host_samples"] == 2 and deleted["gpu_samples"] == 16
    assert deleted["disk_samples"] == 2 and deleted["batches"] == 0
    parts = set(store.partitions())
    assert not {(t, today - 40) for t in RAW_TABLES} & parts  # whole day: partition dropped
    assert {(t, today - 30) for t in RAW_TABLES} <= parts  # part of a day: rows deleted
    assert store.count("host_samples") == 2
    # A late sample for a dropped day makes its partition again.
    assert store.submit(item(make_batch(make_sample("h", ts=old + 1), sent_at=now))).result()
    assert store.count("host_samples") == 3
    store.close()


def _ymd(day: int) -> str:
    return pg_schema.partition_name("x", day).removeprefix("x_p")


def test_concurrent_submits_from_threads_store_each_batch_once(postgres_url):
    store = open_store(postgres_url)
    shared = [make_batch(make_sample(f"shared{i}", gpus=2, procs=2)) for i in range(10)]

    def agent(n: int) -> list[bool]:
        own = [make_batch(make_sample(f"h{n}", ts=time.time() - i, gpus=2, procs=2))
               for i in range(40)]  # fmt: skip
        futs = [store.submit(item(b)) for b in own + shared]
        return [f.result(timeout=60) for f in futs]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(agent, range(8)))
    assert all(all(r[:40]) for r in results)
    assert sum(sum(r[40:]) for r in results) == 10  # each shared batch stored once
    assert store.count("batches") == 8 * 40 + 10
    assert store.count("host_samples") == 8 * 40 + 10
    assert store.count("gpu_samples") == 2 * (8 * 40 + 10)
    assert store.commits < 8 * 50  # group commits: many batches per transaction
    assert len(store.hosts()) == 18
    store.close()


def test_a_write_whose_waiter_gave_up_does_not_stop_the_writer(postgres_url):
    # an ingest request that timed out cancels its future; the writer, committing the batch
    # anyway, must not die resolving it (it did: every later write then hung, and acknowledged
    # batches of the ingest workers' logs were applied only after a restart)
    store = open_store(postgres_url)
    try:
        given_up = [store.submit(item(make_batch(make_sample(f"gone{i}", gpus=1, procs=1))))
                    for i in range(20)]  # fmt: skip
        for fut in given_up:
            fut.cancel()
        later = store.submit(item(make_batch(make_sample("later", gpus=1, procs=1))))
        assert later.result(timeout=120) is True
        assert store.write(lambda cur: 1) == 1
        # the abandoned batches were committed all the same (the agent's resend is a duplicate)
        assert all(f.cancelled() for f in given_up)
        assert store.count("host_samples") == 21
    finally:
        store.close()


def test_dedupe_across_restarts_and_between_processes(postgres_url):
    batch = make_batch(make_sample("h"))
    first = open_store(postgres_url)
    assert first.submit(item(batch)).result() is True
    first.close()
    again = open_store(postgres_url)  # a restart: the key is in the database
    assert again.submit(item(batch)).result() is False
    # Two server processes sharing the database race on one batch: exactly one stores it.
    other = open_store(postgres_url)
    for _ in range(5):
        b = make_batch(make_sample("race"))
        barrier = threading.Barrier(2)

        def send(store, b=b, barrier=barrier):
            barrier.wait()
            return store.submit(item(b)).result()

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(send, (again, other))) == [False, True]
    assert again.count("host_samples") == 6
    again.close()
    other.close()


@pytest.mark.slow
def test_sigkill_of_a_server_on_postgresql_loses_no_acknowledged_batch(
    server_factory, postgres_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("GPUFLEET_DATABASE", postgres_url)  # the token, and the server
    server = server_factory()
    n_agents, interval = 10, 0.1
    acked: set[str] = set()
    produced: dict[str, list[str]] = {}
    payloads: dict[str, bytes] = {}
    producing = threading.Event()
    producing.set()
    spools, senders, threads = [], [], []
    for i in range(n_agents):
        spool = Spool(tmp_path / f"spool{i}")
        sender = RecordingSender(spool, server.url, server.token, timeout_seconds=5,
                                 backoff=Backoff(base=0.1, cap=1.0), acked=acked)  # fmt: skip
        spools.append(spool)
        senders.append(sender)
        host = f"pg-agent-{i:02d}"
        produced[host] = []

        def produce(host=host, spool=spool):
            seq = 0
            while producing.is_set():
                seq += 1
                batch = make_batch(make_sample(host, gpus=8, procs=8), batch_id=f"{host}-{seq}")
                payloads[batch.batch_id] = payload = batch.model_dump_json().encode()
                spool.put(batch.batch_id, payload)
                produced[host].append(batch.batch_id)
                time.sleep(interval)

        threads += [threading.Thread(target=produce, daemon=True),
                    threading.Thread(target=sender.run, daemon=True)]  # fmt: skip
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 100, 60, "100 acknowledged batches")
    server.kill()
    acked_before_kill = set(acked)
    time.sleep(1.0)
    server.start()
    resend = Sender(Spool(tmp_path / "probe"), server.url, server.token)
    for batch_id in sorted(acked_before_kill)[:: max(1, len(acked_before_kill) // 50)]:
        status, body = resend.post(payloads[batch_id])
        assert status == 200 and orjson.loads(body)["status"] == "duplicate", batch_id
    producing.clear()
    time.sleep(interval * 2)
    wait_until(lambda: all(len(s) == 0 for s in spools), 60, "the spools to drain")
    for s in senders:
        s.stop_event.set()
    server.stop()

    n_produced = sum(len(v) for v in produced.values())
    assert acked_before_kill <= acked and len(acked) == n_produced
    with psycopg.connect(postgres_url) as con:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (host, ts)) FROM host_samples"
        ).fetchone()
        per_host = dict(con.execute("SELECT host, count(*) FROM host_samples GROUP BY host"))
    assert total == distinct == n_produced  # exactly once
    assert per_host == {h: len(ids) for h, ids in produced.items()}


def _fill_duckdb(path) -> list:
    from gpufleet.http.auth import new_token

    store = open_store(path)
    _, tok = new_token("rack1")
    store.create_token(tok)
    _, tok2 = new_token("old")
    store.create_token(tok2)
    store.revoke_token("old", 123.5)
    store.create_user(UserRecord("ada", "scrypt$x", "admin", 1.5, None))
    store.create_user(UserRecord("bob", "scrypt$y", "viewer", 2.5, 3.25))
    now = time.time()
    batches = [
        make_batch(make_sample(f"gpu{h:02d}", ts=now - day * DAY - i * 60), sent_at=now)
        for h in range(3)
        for day in range(4)
        for i in range(5)
    ]
    assert all(f.result() for f in [store.submit(item(b)) for b in batches])
    store.close()
    return batches


def _answers(store, now):
    series = {
        m: [(s.key, s.points) for s in store.series("gpu01", m, now - 5 * DAY, now + 1, 50)]
        for m in ("host.cpu_percent", "gpu.memory_used_bytes", "gpu.temperature_celsius")
    }
    counts = {t: store.count(t) for t in (*RAW_TABLES, "batches", "hosts", "agent_tokens")}
    return store.hosts(), store.tokens(), store.users(), series, counts


def test_migrate_store_round_trip_duckdb_to_postgresql(tmp_path, postgres_url):
    path = tmp_path / "gpufleet.duckdb"
    batches = _fill_duckdb(path)
    now = time.time()
    duck = open_store(path)
    expected = _answers(duck, now)
    duck.close()

    r = gpufleet_here("migrate-store", "--from", str(path), "--to", postgres_url)
    assert r.returncode == 0, r.stderr
    assert "counts verified" in r.stderr and "host_samples" in r.stdout

    pg = open_store(postgres_url)
    hosts, tokens, users, series, counts = _answers(pg, now)
    assert counts == expected[4] and counts["host_samples"] == 60
    assert hosts == expected[0] and tokens == expected[1] and users == expected[2]
    assert series.keys() == expected[3].keys()
    for m, got in series.items():
        want = expected[3][m]
        assert [k for k, _ in got] == [k for k, _ in want]
        for (_, gp), (_, wp) in zip(got, want, strict=True):
            assert [t for t, _ in gp] == pytest.approx([t for t, _ in wp])
            assert [v for _, v in gp] == pytest.approx([v for _, v in wp])
    assert pg.submit(item(batches[0])).result() is False  # batch keys came along
    pg.close()

    again = gpufleet_here("migrate-store", "--from", str(path), "--to", postgres_url)
    assert again.returncode == 2
    assert "error: the target" in again.stderr and "is not empty" in again.stderr
    assert "hint: copy into an empty database" in again.stderr


def test_server_runs_on_postgresql_end_to_end(server_factory, postgres_url, monkeypatch):
    monkeypatch.setenv("GPUFLEET_DATABASE", postgres_url)  # `token create` and `server` use it
    server = server_factory("--ingest-workers", "1")  # agents' batches go through a worker
    wait_until(
        lambda: httpx.get(server.url + "/healthz").json()["ingest_workers"]["up"] == 1, 30,
        "the worker up",
    )  # fmt: skip
    batch = make_batch(make_sample("e2e"))
    assert server.post(batch).json()["status"] == "stored"
    assert server.post(batch).json()["status"] == "duplicate"
    health = httpx.get(server.url + "/healthz").json()
    assert health["ingest_workers"]["connections_handed_over"] >= 1
    assert health["store"]["schema_version"] == MIGRATIONS[-1].version
    assert health["store"]["url"].startswith("postgresql://")
    server.stop()
    assert not server.db_path.exists()  # no embedded store was made
    store = open_store(postgres_url)
    assert [h.name for h in store.hosts()] == ["e2e"]
    assert store.count("gpu_samples") == 8
    store.close()


def test_a_new_host_is_listed_as_soon_as_its_first_sample_is_acknowledged(
    server_factory, postgres_url, monkeypatch
):
    """The hosts table is derived and flushed at most once a second, but a host's first row is
    written with its first sample: a server killed right after the acknowledgement still lists
    the host (before, a SIGKILL, or a worker killed at a slow shutdown, lost it)."""
    monkeypatch.setenv("GPUFLEET_DATABASE", postgres_url)
    server = server_factory("--ingest-workers", "0")
    assert server.post(make_batch(make_sample("first-light"))).json()["status"] == "stored"
    server.proc.kill()
    server.proc.wait()
    store = open_store(postgres_url)
    assert [h.name for h in store.hosts()] == ["first-light"]
    store.close()


def test_writer_reconnects_after_its_connection_is_lost(postgres_url):
    store = open_store(postgres_url)
    assert store.submit(item(make_batch(make_sample("h")))).result() is True
    assert store.count("host_samples") == 1  # a pooled read connection, dropped below
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as con:  # a database restart, in effect
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [dbname],
        )
    lost = make_batch(make_sample("h"))
    try:  # the writer reconnects first, or fails this batch (not acknowledged: agents retry)
        stored = store.submit(item(lost)).result(timeout=30)
    except StoreError as exc:
        assert "store write failed" in str(exc)
        stored = store.submit(item(lost)).result(timeout=30)
    assert stored is True
    assert store.submit(item(lost)).result(timeout=30) is False
    assert store.count("host_samples") == 2
    assert [h.name for h in store.hosts()] == ["h"]  # reads: the pool replaced its connection
    store.close()
