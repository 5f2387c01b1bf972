"""The embedded store's ingest log (gpufleet.store.ingestlog): an acknowledged batch survives a
crash that comes before the database has it, exactly once, and a torn record from a crash
mid-write is dropped without harm."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb

from gpufleet.store import IngestItem, open_store
from tests.conftest import make_batch, make_sample

ROOT = Path(__file__).resolve().parent.parent


def rows(db: Path) -> tuple[int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        hosts = con.execute("SELECT count(*) FROM host_samples").fetchone()[0]
        gpus = con.execute("SELECT count(*) FROM gpu_samples").fetchone()[0]
    finally:
        con.close()
    return hosts, gpus


def crash_after_acks(db: Path, n: int, batch_prefix: str) -> None:
    """Another process acknowledges ``n`` batches and dies at once (no close, no apply)."""
    code = textwrap.dedent(f"""
        import os, time
        from gpufleet.store import IngestItem, open_store
        from tests.conftest import make_batch, make_sample
        st = open_store({str(db)!r})
        now = time.time()
        for i in range({n}):
            b = make_batch(make_sample("crashy", ts=now - i, gpus=2, procs=0),
                           batch_id="{batch_prefix}-%d" % i)
            assert st.submit(IngestItem(b, "tok", now, 0.0)).result() is True
        os._exit(0)  # acknowledged, then gone before the once-a-second move into the database
    """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_acknowledged_batches_survive_a_crash_before_the_database_has_them(tmp_path):
    db = tmp_path / "s.duckdb"
    crash_after_acks(db, 20, "crash-batch")
    log_dir = Path(str(db) + ".ingest-log")
    assert any(p.stat().st_size > 0 for p in log_dir.glob("*.log")), "the log holds the batches"

    store = open_store(db)  # start-up moves the log into the database
    try:
        # every one of them is known: re-sent, each is a duplicate
        again = make_batch(make_sample("crashy", gpus=2, procs=0), batch_id="crash-batch-3")
        assert store.submit(IngestItem(again, "tok", time.time(), 0.0)).result() is False
    finally:
        store.close()
    assert rows(db) == (20, 40)
    assert not list(log_dir.glob("*.log")), "the log is emptied once the database has it"

    # opening again does not store them twice
    open_store(db).close()
    assert rows(db) == (20, 40)


def test_a_torn_record_from_a_crash_mid_write_is_dropped(tmp_path):
    db = tmp_path / "s.duckdb"
    crash_after_acks(db, 5, "torn-batch")
    log_file = max(Path(str(db) + ".ingest-log").glob("*.log"))
    with open(log_file, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")  # the start of a record the crash cut short
    store = open_store(db)
    store.close()
    assert rows(db) == (5, 10)


def test_duplicates_are_caught_before_and_after_the_move_into_the_database(tmp_path):
    db = tmp_path / "s.duckdb"
    store = open_store(db)
    try:
        batch = make_batch(make_sample("dup", gpus=1, procs=0))
        first = store.submit(IngestItem(batch, "tok", time.time(), 0.0)).result()
        while_logged = store.submit(IngestItem(batch, "tok", time.time(), 0.0)).result()
        assert store.hosts()  # a read: the log is moved into the database first
        after_move = store.submit(IngestItem(batch, "tok", time.time(), 0.0)).result()
        assert (first, while_logged, after_move) == (True, False, False)
        # a read right after an acknowledgement sees the batch
        fresh = make_batch(make_sample("dup", ts=time.time() + 1, gpus=1, procs=0))
        assert store.submit(IngestItem(fresh, "tok", time.time(), 0.0)).result() is True
        assert [h.last_seen for h in store.hosts() if h.name == "dup"] == [fresh.samples[0].ts]
    finally:
        store.close()
    assert rows(db) == (2, 2)


def test_a_long_store_task_does_not_hold_up_acknowledgements(tmp_path):
    """Store tasks (a rollup, a read's sync) run behind the ingest log, on the applier: while
    one runs, batches are still acknowledged (they are in the log), and a read afterwards
    sees them all."""
    import threading

    store = open_store(str(tmp_path / "s.duckdb"))
    started, finished = threading.Event(), threading.Event()

    def slow(con):
        started.set()
        time.sleep(3)
        finished.set()
        return "done"

    result = []
    task = threading.Thread(target=lambda: result.append(store.write(slow)))
    task.start()
    assert started.wait(10)
    futures = [
        store.submit(IngestItem(make_batch(make_sample(f"h{i}")), "t", time.time(), 0.0))
        for i in range(20)
    ]
    assert all(f.result(timeout=10) for f in futures)
    assert not finished.is_set()  # acknowledged while the task was still running
    task.join()
    assert result == ["done"]
    assert store.count("host_samples") == 20
    store.close()
