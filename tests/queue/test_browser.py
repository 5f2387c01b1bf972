"""The queue end to end in real Chromium on `gpufleet demo`: a user submits through the /queue
form, the job is placed on a replayed host (the overview marks its GPU), runs, and finishes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.accounts.test_browser import add_user, log_in
from tests.conftest import free_port, stop_demo, wait_for
from tests.demo.test_demo_e2e import trace_path  # noqa: F401
from tests.web.conftest import page  # noqa: F401  (Chromium page, fails on JS errors)

pytestmark = pytest.mark.slow


def test_submit_through_the_form_and_see_it_run_and_finish(tmp_path, trace_path, page):  # noqa: F811
    port = free_port()
    data = tmp_path / "data"
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed after the process ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet", "demo", "--hosts", "4", "--speed", "60",
         "--port", str(port), "--data-dir", str(data), "--history-days", "0",
         "--no-local-agent", "--interval", "1"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GPUFLEET_TRACE": str(trace_path), "GPUFLEET_INGEST_WORKERS": "0"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def up():
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "demo.log").read_text())
            return len(httpx.get(url + "/api/v1/hosts", timeout=5).json()["hosts"]) == 4

        wait_for(up, timeout=120, what="4 replay hosts")
        add_user(data, "ann", "user", "ann password 1")
        page.goto(url + "/login?next=/queue")
        log_in(page, url, "ann", "ann password 1")
        page.goto(url + "/queue")
        assert page.locator("nav a[href='/queue']").get_attribute("aria-current") == "page"
        page.fill("#submit-form input[name=name]", "from-the-form")
        page.fill("#submit-form input[name=command]", "sleep 25")
        page.select_option("#submit-form select[name=preemptible]", "false")
        page.click("#submit-form button[type=submit]")
        page.wait_for_selector("#submit-result[data-ok='1']", timeout=30_000)
        job = page.locator("#submit-result").get_attribute("data-job")
        spec = httpx.get(f"{url}/api/v1/jobs/{job}", timeout=5).json()["spec"]
        assert spec["preemptible"] is False  # the form's choice, a boolean in the spec
        running = f"#running-table tr[data-job='{job}'][data-state='running']"
        page.wait_for_selector(running, timeout=120_000)
        where = page.locator(running).inner_text()
        host = httpx.get(f"{url}/api/v1/jobs/{job}", timeout=5).json()["placement"][0]["host"]
        assert host in where
        overview = page.context.new_page()
        overview.goto(url + "/")
        overview.wait_for_selector(".gpu.queued", timeout=60_000)  # the Q mark on its GPU
        overview.close()
        done = f"#history-table tr[data-job='{job}'][data-state='succeeded']"
        page.wait_for_selector(done, timeout=120_000)  # live: no reload
        info = httpx.get(f"{url}/api/v1/jobs/{job}", timeout=5).json()
        assert info["user"] == "ann" and info["runtime_seconds"] == pytest.approx(25, abs=3)
        assert time.time() > info["end_seconds"]
    finally:
        stop_demo(proc)
        log.close()
