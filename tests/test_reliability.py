"""Zero-loss delivery: the server killed with SIGKILL under load, an agent killed mid-spool.

Every batch an agent got an acknowledgement for must be stored, and once the spools drain,
every sample produced must be stored exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import orjson
import pytest

from gpufleet.agent.push import Backoff, Sender
from gpufleet.agent.spool import Spool
from tests.conftest import make_batch, make_sample

pytestmark = pytest.mark.slow


class RecordingSender(Sender):
    """The real sender; it also notes which batch ids the server acknowledged."""

    def __init__(self, *args, acked: set, **kw):
        super().__init__(*args, **kw)
        self.acked = acked

    def post(self, payload: bytes):
        status, body = super().post(payload)
        if 200 <= status < 300:
            self.acked.add(orjson.loads(body)["batch_id"])
        return status, body


def rows_per_sample(db_path) -> tuple[int, int, dict[str, int]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT (host, ts)) FROM host_samples"
        ).fetchone()
        per_host = dict(
            con.execute("SELECT host, count(*) FROM host_samples GROUP BY host").fetchall()
        )
    finally:
        con.close()
    return total, distinct, per_host


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("workers", ["0", "2"], ids=["server-alone", "ingest-workers"])
def test_sigkill_under_load_loses_no_acknowledged_batch(server_factory, tmp_path, workers):
    # with ingest workers, the SIGKILL also takes their connections, and what they
    # acknowledged is in their own logs until the restarted server moves it into the store
    server = server_factory("--ingest-workers", workers)
    n_agents, interval = 50, 0.25
    acked: set[str] = set()
    produced: dict[str, list[str]] = {}  # host -> batch ids produced
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
        host = f"agent-{i:02d}"
        produced[host] = []

        def produce(host=host, spool=spool, offset=i * interval / n_agents):
            time.sleep(offset)
            seq = 0
            while producing.is_set():
                seq += 1
                batch = make_batch(
                    make_sample(host, gpus=8, procs=8), batch_id=f"{host}-run1-{seq}"
                )
                payload = batch.model_dump_json().encode()
                payloads[batch.batch_id] = payload
                spool.put(batch.batch_id, payload)
                produced[host].append(batch.batch_id)
                time.sleep(interval)

        threads.append(threading.Thread(target=produce, daemon=True))
        threads.append(threading.Thread(target=sender.run, daemon=True))
    for t in threads:
        t.start()

    wait_until(lambda: len(acked) >= 300, 60, "300 acknowledged batches")
    server.kill()  # SIGKILL while 50 agents push
    acked_before_kill = set(acked)
    time.sleep(2.0)  # agents keep producing into their spools while the server is down
    assert sum(len(s) for s in spools) > 0
    server.start()

    # Every batch acknowledged before the kill survived it: re-sending it is a duplicate.
    resend = Sender(Spool(tmp_path / "probe"), server.url, server.token)
    for batch_id in sorted(acked_before_kill)[:: max(1, len(acked_before_kill) // 200)]:
        status, body = resend.post(payloads[batch_id])
        assert status == 200
        assert orjson.loads(body)["status"] == "duplicate", batch_id

    time.sleep(2.0)
    producing.clear()
    time.sleep(interval * 2)
    wait_until(lambda: all(len(s) == 0 for s in spools), 120, "the spools to drain")
    for s in senders:
        s.stop_event.set()
    server.stop()

    n_produced = sum(len(v) for v in produced.values())
    assert acked_before_kill <= acked
    assert len(acked) == n_produced  # every produced batch was eventually acknowledged
    total, distinct, per_host = rows_per_sample(server.db_path)
    assert total == distinct == n_produced  # exactly once
    assert per_host == {h: len(ids) for h, ids in produced.items()}


def _agent_cmd(server_url: str, token: str, spool_dir, host: str) -> list[str]:
    return [
        sys.executable, "-m", "gpufleet", "agent", "--server", server_url, "--token", token,
        "--interval", "0.5", "--spool-dir", str(spool_dir), "--host-name", host,
        "--fake-gpus", "NVIDIA A100-SXM4-80GB:4", "--timeout", "2",
    ]  # fmt: skip


def test_agent_killed_mid_spool_loses_and_duplicates_nothing(server_factory, tmp_path):
    server = server_factory(start=False)
    spool_dir = tmp_path / "agent-spool"
    cmd = _agent_cmd(server.url, server.token, spool_dir, "restarted")
    agent = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_until(lambda: len(list(spool_dir.glob("*.json"))) >= 4, 30, "the agent to spool")
    agent.send_signal(signal.SIGKILL)  # mid-spool, server never reached
    agent.wait()
    before_restart = {p.name: p.read_bytes() for p in spool_dir.glob("*.json")}
    agent = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_until(
        lambda: len(list(spool_dir.glob("*.json"))) >= len(before_restart) + 3, 30, "more spooling"
    )
    server.start()
    wait_until(lambda: not list(spool_dir.glob("*.json")), 60, "the agent's spool to drain")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(20) == 0

    # Everything spooled by the first agent process reached the store once.
    probe = Sender(Spool(tmp_path / "probe"), server.url, server.token)
    for payload in before_restart.values():
        status, body = probe.post(payload)
        assert status == 200
        assert orjson.loads(body)["status"] == "duplicate"
    server.stop()
    total, distinct, per_host = rows_per_sample(server.db_path)
    assert total == distinct
    assert per_host["restarted"] >= len(before_restart) + 3
    assert not (spool_dir / "rejected").exists()


def test_agent_exits_cleanly_on_sigterm_and_keeps_unsent(server_factory, tmp_path):
    server = server_factory(start=False)  # never started: nothing can be delivered
    spool_dir = tmp_path / "s"
    agent = subprocess.Popen(_agent_cmd(server.url, server.token, spool_dir, "h"),
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(lambda: len(list(spool_dir.glob("*.json"))) >= 2, 30, "spooling")
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait(20) == 0
    err = agent.stderr.read()
    assert "batch(es) stay in the spool" in err
    assert "retrying" in err  # it said why it could not deliver
    assert len(list(spool_dir.glob("*.json"))) >= 2
