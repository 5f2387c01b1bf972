"""The embedded store's memory of recently acknowledged batch ids (gpufleet.store.recent), and
the dedupe of a batch older than that memory, which falls back to the database."""

from __future__ import annotations

import time

import pytest

from gpufleet.store import IngestItem, open_store
from gpufleet.store.recent import RecentKeys
from tests.conftest import make_batch, make_sample


def test_keys_are_remembered_for_the_window_then_forgotten():
    mem = RecentKeys(window=300, bucket=30)
    mem.add([b"a" * 16], now=1000.0)
    mem.add([b"b" * 16], now=1200.0)
    assert b"a" * 16 in mem and b"b" * 16 in mem and b"c" * 16 not in mem
    mem.add([], now=1000.0 + 300 + 30 + 1)  # a's bucket is now wholly out of the window
    assert b"a" * 16 not in mem and b"b" * 16 in mem
    assert len(mem) == 1


def test_made_within_looks_at_the_oldest_sample():
    mem = RecentKeys(window=300)
    now = time.time()
    fresh = make_batch(make_sample("h", ts=now - 5))
    spooled = make_batch(make_sample("h", ts=now - 250), make_sample("h", ts=now - 5))
    assert mem.made_within(IngestItem(fresh, "t", now, 0.0), now, margin=120)
    assert not mem.made_within(IngestItem(spooled, "t", now, 0.0), now, margin=120)
    # a spooled batch's sent_at is when it was made, so its "skew" is its age: not trusted
    assert not mem.made_within(IngestItem(spooled, "t", now + 600, 600.0), now + 600, 120)


@pytest.mark.parametrize("received_ago", [0.0, 3600.0])
def test_a_resent_batch_is_a_duplicate_after_a_restart_old_or_recent(tmp_path, received_ago):
    """After a restart, a batch received minutes ago is known from memory (loaded from the
    database); one received an hour ago, re-sent from a spool, from the database itself."""
    path = str(tmp_path / "s.duckdb")
    now = time.time()
    batch = make_batch(make_sample("h", ts=now - received_ago - 5), sent_at=now - received_ago)
    store = open_store(path)
    assert store.submit(IngestItem(batch, "t", now - received_ago, 0.0)).result() is True
    store.close()
    store = open_store(path)
    assert store.submit(IngestItem(batch, "t", now, received_ago)).result() is False
    assert store.count("batches") == 1 and store.count("host_samples") == 1
    store.close()
