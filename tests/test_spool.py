"""The agent's durable spool and sender (with a real server where delivery matters)."""

from __future__ import annotations

import logging
import random

from gpufleet.agent.push import Backoff, Sender
from gpufleet.agent.spool import Spool
from tests.conftest import make_batch, make_sample


def test_spool_keeps_order_and_survives_restart(tmp_path):
    spool = Spool(tmp_path / "s")
    for i in range(5):
        spool.put(f"batch-000{i}", f"payload {i}".encode())
    assert len(spool) == 5
    path, payload = spool.oldest()
    assert payload == b"payload 0"
    spool.ack(path)
    (tmp_path / "s" / "0000000000000099-junk.json.tmp").write_bytes(b"half written")
    again = Spool(tmp_path / "s")  # a new process after a crash
    assert len(again) == 4
    assert again.oldest()[1] == b"payload 1"
    again.put("batch-0005", b"payload 5")  # sequence continues after the survivors
    order = []
    while (item := again.oldest()) is not None:
        order.append(item[1])
        again.ack(item[0])
    assert order == [f"payload {i}".encode() for i in range(1, 6)]
    assert not list((tmp_path / "s").glob("*.tmp"))


def test_spool_bounds_drop_oldest_with_a_warning(tmp_path, caplog):
    now = [1_000_000.0]
    spool = Spool(tmp_path, max_bytes=1000, max_age_seconds=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(12):
            spool.put(f"size-batch-{i:03d}", b"x" * 100)
    assert spool.size_bytes <= 1000
    assert len(spool) == 10
    assert spool.oldest()[0].name.endswith("size-batch-002.json")
    assert "dropped the 1 oldest" in caplog.text
    now[0] += 61
    spool.put("age-batch-000", b"y")
    assert len(spool) == 1  # everything older than 60 s went, the newest stays
    assert spool.dropped == 12


def test_backoff_grows_with_jitter_and_caps():
    b = Backoff(base=1, cap=8, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert all(0 <= d <= 8 for d in delays)
    assert len(set(delays)) == 10  # jittered, not lock-step
    assert max(delays[5:]) > 1
    b.reset()
    assert b.next_delay() <= 1


def test_sender_delivers_rejects_and_keeps(tmp_path, server):
    spool = Spool(tmp_path / "spool")
    good = make_batch(make_sample("spool-a"))
    bad = make_batch(make_sample("spool-b"))
    raw = bad.model_dump_json().replace(
        '"temperature_celsius":50.0', '"temperature_celsius":5000.0'
    )
    spool.put(good.batch_id, good.model_dump_json().encode())
    spool.put(bad.batch_id, raw.encode())
    wrong = Sender(spool, server.url, "gft_nope_nope")
    assert wrong.send_one() is False  # 401: kept
    assert "refused the token" in wrong.last_error
    assert len(spool) == 2
    sender = Sender(spool, server.url, server.token)
    assert sender.send_one() is True
    assert sender.send_one() is True  # 422: moved aside for a human
    assert sender.send_one() is None
    rejected = list((tmp_path / "spool" / "rejected").glob("*.json"))
    assert [p.name.split("-", 1)[1] for p in rejected] == [f"{bad.batch_id}.json"]
    reason = (rejected[0].parent / (rejected[0].name + ".reason")).read_text()
    assert "temperature_celsius" in reason
    server.stop()
    spool.put("later-batch-1", make_batch(make_sample("spool-a")).model_dump_json().encode())
    assert sender.send_one() is False  # server down: kept
    assert len(spool) == 1
