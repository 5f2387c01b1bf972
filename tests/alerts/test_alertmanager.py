"""Forwarding to the real Prometheus Alertmanager (Debian's prometheus-alertmanager) on
loopback: a server with ``alerts.alertmanager_url`` tells it what fires, with the rule as
``alertname`` and the summary as an annotation, and the resolve ends it there."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
import yaml

from tests.alerts.receivers import wait_for
from tests.alerts.test_server import _post
from tests.conftest import REQUIRE_SERVICES, free_port

pytestmark = pytest.mark.slow
BINARY = "prometheus-alertmanager"


@pytest.fixture
def alertmanager(tmp_path):
    exe = shutil.which(BINARY) or shutil.which("alertmanager")
    if exe is None:
        message = f"{BINARY} is not installed (scripts/setup.sh installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (GPUFLEET_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    cfg = tmp_path / "am.yml"
    cfg.write_text(yaml.safe_dump({"route": {"receiver": "null", "group_wait": "1s"},
                                   "receivers": [{"name": "null"}]}))  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [exe, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # ended: stop waiting (asserted below)

    wait_for(ready, what="Alertmanager ready")
    assert proc.poll() is None, "Alertmanager exited at start"
    yield url
    proc.terminate()
    proc.wait(30)


def _am_alerts(url: str) -> list[dict]:
    return httpx.get(url + "/api/v2/alerts", timeout=5).json()


def test_forwarding_to_real_alertmanager(tmp_path, server_factory, alertmanager):
    cfg = {
        "alerts": {
            "evaluate_interval_seconds": 0.3, "resolve_hold_seconds": 0,
            "builtin": {"gpu_too_hot": {"for_seconds": 0, "threshold": 85}},
            "alertmanager_url": alertmanager,
        }
    }  # fmt: skip
    path = tmp_path / "gpufleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    srv = server_factory("--config", str(path))

    def hot_in_am() -> list[dict]:
        _post(srv, hot=True)
        return [a for a in _am_alerts(alertmanager) if a["labels"].get("alertname") == "gpu_too_hot"]

    got = wait_for(lambda: len(hot_in_am()) == 2 and hot_in_am(), what="two alerts in Alertmanager")
    for a in got:
        assert a["labels"]["host"] == "dgx-01" and a["labels"]["severity"] == "warning"
        assert a["labels"]["gpu"] in ("0", "1")
        assert "dgx-01 GPU" in a["annotations"]["summary"]
        assert a["status"]["state"] == "active"

    def gone() -> bool:
        _post(srv, hot=False)
        return not [a for a in _am_alerts(alertmanager)
                    if a["labels"].get("alertname") == "gpu_too_hot"]  # fmt: skip

    assert wait_for(gone, what="the resolve to end them in Alertmanager")
