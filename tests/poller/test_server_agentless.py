"""End to end: a gpufleet server polls hosts listed in its config over a real sshd."""

from __future__ import annotations

import time

import httpx
import yaml

from tests.conftest import free_port


def wait_for(url: str, cond, timeout: float = 30.0):
    deadline = time.time() + timeout
    while True:
        body = httpx.get(url, timeout=5).json()
        if cond(body) or time.time() > deadline:
            return body
        time.sleep(0.2)


def test_server_polls_configured_hosts_and_says_why_one_is_unreachable(
    sshd_factory, server_factory, tmp_path
):
    sshd = sshd_factory()
    config = tmp_path / "gpufleet.yaml"
    config.write_text(yaml.safe_dump({"ssh": {"hosts": [
        {"name": "ssh-good", "host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
         "key_file": str(sshd.key_file), "interval_seconds": 1, "timeout_seconds": 5},
        {"name": "ssh-closed", "host": "127.0.0.1", "port": free_port(), "user": sshd.user,
         "key_file": str(sshd.key_file), "interval_seconds": 1, "timeout_seconds": 2},
    ]}}))  # fmt: skip
    server = server_factory("--config", str(config))

    def ready(body):
        hosts = {h["name"]: h for h in body["hosts"]}
        closed_reason = hosts.get("ssh-closed", {}).get("reason") or ""
        return hosts.get("ssh-good", {}).get("gpu_count") and "refused" in closed_reason

    body = wait_for(server.url + "/api/v1/hosts", ready)
    hosts = {h["name"]: h for h in body["hosts"]}
    good, closed = hosts["ssh-good"], hosts["ssh-closed"]
    assert good["status"] == "online" and good["source"] == "ssh"
    assert good["gpu_count"] == 8 and good["reason"] is None
    assert closed["status"] == "offline" and closed["source"] == "ssh"
    assert "refused" in closed["reason"]
    detail = httpx.get(server.url + "/api/v1/hosts/ssh-good").json()
    assert detail["sample"]["facts"]["driver_version"] == "535.129.03"
    # History accumulates from the polls like from an agent.
    series = wait_for(
        server.url + "/api/v1/hosts/ssh-good/series?metric=gpu.utilization_gpu_percent",
        lambda b: b["series"] and len(b["series"][0]["points"]) >= 2,
    )
    assert len(series["series"]) == 8
