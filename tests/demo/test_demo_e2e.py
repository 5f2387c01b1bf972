"""End to end: the fleet engine against a real server, and ``gpufleet demo`` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from gpufleet.demo.engine import FleetEngine
from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.trace import default_trace_path, load_trace
from tests.conftest import free_port, need_file, stop_demo, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trace_path():
    path = default_trace_path()
    need_file(path, "the Philly trace")
    return path


def test_engine_pushes_through_the_ingest_api(server, trace_path, tmp_path):
    engine = FleetEngine(build_fleet(3, seed=1), load_trace(trace_path), server.url,
                         server.token, spool_root=tmp_path / "spool", interval=1.0,
                         speed=600.0, seed=1)  # fmt: skip
    engine.start()
    try:

        def three():
            hosts = httpx.get(server.url + "/api/v1/hosts", timeout=5).json()["hosts"]
            return len(hosts) == 3 and hosts

        hosts = wait_for(three, what="3 replay hosts")
        assert {h["source"] for h in hosts} == {"replay"}
        assert {h["token_name"] for h in hosts} == {"test-agent"}
        wait_for(lambda: engine.stats.batches_sent >= 6, what="two rounds")
    finally:
        engine.stop()
    assert engine.stats.send_failures == 0
    assert all(len(s.spool) == 0 for s in engine.slots)  # everything acknowledged


def test_demo_command(tmp_path, trace_path):
    port = free_port()
    data = tmp_path / "data"
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed after the process ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet", "demo", "--hosts", "4", "--speed", "600",
         "--port", str(port), "--data-dir", str(data), "--history-days", "10"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GPUFLEET_TRACE": str(trace_path), "GPUFLEET_INGEST_WORKERS": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def all_hosts():
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "demo.log").read_text())
            hosts = httpx.get(url + "/api/v1/hosts", timeout=5).json()["hosts"]
            return len(hosts) == 5 and hosts

        hosts = wait_for(all_hosts, timeout=120, what="4 replay hosts and this machine")
        # the demo arrived with a past: the last week by host has every replay host in it
        week = httpx.get(url + "/api/v1/reports", params={"period": "week", "by": "host"},
                         timeout=30).json()  # fmt: skip
        with_hours = {r["key"] for r in week["rows"] if r["gpu_hours"]}
        assert len(with_hours) == 4, week["rows"]
        by_source: dict[str, list[dict]] = {}
        for h in hosts:
            by_source.setdefault(h["source"], []).append(h)
        assert len(by_source["replay"]) == 4 and len(by_source["agent"]) == 1
        users = set()
        for h in by_source["replay"]:
            assert h["gpu_count"] in (4, 8) and h["gpu_models"]
            sample = httpx.get(f"{url}/api/v1/hosts/{h['name']}", timeout=5).json()["sample"]
            assert len(sample["gpus"]) == h["gpu_count"]
            assert sample["host_metrics"]["memory_total_bytes"]
            for p in sample["processes"]:
                assert p["user"] and p["command"] and p["gpu_memory_bytes"]
                users.add(p["user"])
        assert users, "the replayed jobs show up as processes with users"
        def workers_took_pushes():
            workers = httpx.get(url + "/healthz", timeout=5).json()["ingest_workers"]
            assert workers["configured"] == 1, workers
            return workers["up"] == 1 and workers["connections_handed_over"] >= 1 and workers

        # the agents' pushes go through a worker (once it is up: on a busy machine the first
        # pushes may come before it, and are served by the main process meanwhile)
        wait_for(workers_took_pushes, timeout=120, what="a push handed over to the worker")
    finally:
        rc = stop_demo(proc, 25)
        log.close()
    text = (tmp_path / "demo.log").read_text()
    assert rc == 0, text
    assert "Traceback" not in text, text
    assert "10 days of history for 4 hosts" in text, text
    assert not (data / "server.json").exists()
