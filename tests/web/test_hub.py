"""The stream hub in-process: coalescing, status changes with no new sample, slow clients.
(No event loop is needed: the clients' queues are only used without waiting here.)"""

from __future__ import annotations

import time

import orjson

from gpufleet.config import load_settings
from gpufleet.http.context import Context
from gpufleet.live.state import LiveState
from gpufleet.web.stream import CLIENT_QUEUE, StreamHub
from tests.web.conftest import fleet_sample


def _hub() -> tuple[StreamHub, LiveState]:
    live = LiveState(status_cfg={"stale_after_intervals": 3.0, "offline_after_seconds": 60.0})
    ctx = Context(load_settings(None, environ={}), None, live, None, "")  # type: ignore[arg-type]
    hub = StreamHub(ctx)
    live.listeners.append(hub.on_sample)
    return hub, live


def _ingest(live: LiveState, sample, received_at: float) -> None:
    live.update(sample, source="agent", token_name="t", received_at=received_at,
                agent_version="1", clock_skew_seconds=0.0)  # fmt: skip


def _events(client) -> list[tuple[str, dict]]:
    out = []
    while not client.queue.empty():
        msg = client.queue.get_nowait()
        if msg is None:
            out.append(("closed", {}))
            continue
        lines = msg.decode().splitlines()
        event = next(x[7:] for x in lines if x.startswith("event: "))
        out.append((event, orjson.loads(next(x[6:] for x in lines if x.startswith("data: ")))))
    return out


def test_changes_coalesce_into_one_message_per_flush():
    hub, live = _hub()
    now = time.time()
    _ingest(live, fleet_sample("a", 0, ts=now), now)
    client, first = hub.subscribe(None)
    assert b"event: snapshot" in first
    for i in range(5):  # five samples of two hosts before the next flush
        _ingest(live, fleet_sample("a", i, ts=now + i), now + i)
        _ingest(live, fleet_sample("b", i, ts=now + i), now + i)
    assert hub.flush() == 2
    ((event, data),) = _events(client)
    assert event == "hosts" and [h["name"] for h in data["hosts"]] == ["a", "b"]
    assert data["hosts"][0]["last_seen"] == now + 4
    assert data["totals"]["gpus"]["total"] == 16
    assert hub.flush() == 0 and _events(client) == []


def test_a_host_going_stale_is_sent_without_a_new_sample():
    hub, live = _hub()
    now = time.time()
    _ingest(live, fleet_sample("a", 0, ts=now - 30), now - 30)  # 30 s ago, 5 s interval
    client, _ = hub.subscribe(None)
    hub.views["a"]["status"] = "online"  # what the page was last told
    hub.mark_status_changes(now)
    hub.flush()
    ((event, data),) = _events(client)
    assert event == "hosts" and data["hosts"][0]["status"] == "stale"
    hub.mark_status_changes(now)  # nothing changed since
    assert hub.flush() == 0


def test_a_client_that_falls_behind_is_ended_and_resyncs_on_reconnect():
    hub, live = _hub()
    now = time.time()
    client, _ = hub.subscribe(None)
    for i in range(CLIENT_QUEUE + 5):
        _ingest(live, fleet_sample("a", i, ts=now + i), now + i)
        hub.flush()
    assert client.dropped
    assert _events(client)[-1] == ("closed", {})
