"""Issue 18's "how to measure done": ``gpufleet demo`` started as ``make run`` starts it (a fresh
data dir, the shipped trace, 90 days of history), then every page in real Chromium at 1440 and
390 px: a screenshot of each (under pytest's tmp dir), every chart with data, nothing wider
than a 390 px phone.

The deadline for the history to be there is generous (the suite runs on busy machines); the
time it took is printed, never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, stop_demo, wait_for

# The history's deadline below is 900 s; the suite's 300-s hang guard (pyproject) would cut it
# short on a busy machine (seen: history there after 298 s at load 15 on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
PASSWORD = "first hour pw"

# every ECharts instance on the page, with the series that have no data (an empty list: fine)
CHARTS = """() => [...document.querySelectorAll('.chart')].map(el => {
  const c = window.echarts && echarts.getInstanceByDom(el);
  if (!c) return {id: el.id, drawn: false, series: 0, empty: []};
  const series = c.getOption().series || [];
  const count = (s) => (s.data || []).filter(d => d !== null && d !== undefined).length;
  return {id: el.id, drawn: true, series: series.length,
          empty: series.filter(s => count(s) === 0).map(s => s.name || '?')};
})"""
CHARTS_READY = f"""() => {{
  const charts = ({CHARTS})();
  return charts.every(c => c.drawn && c.series > 0 && c.empty.length < c.series);
}}"""
# what sticks out past the right edge of the screen, to name it when a page is too wide
OVERFLOW = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
  .filter(e => !e.parentElement || e.parentElement.getBoundingClientRect().right
                                   <= window.innerWidth + 0.5)
  .slice(0, 8).map(e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}`
                        + `${e.className && typeof e.className === 'string'
                             ? '.' + e.className.trim().split(/\\s+/).join('.') : ''}`
                        + ` (right edge ${Math.round(e.getBoundingClientRect().right)} px)`)"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``make run``: ``gpufleet demo --data-dir gpufleet-data --port PORT`` in a fresh folder."""
    root = tmp_path_factory.mktemp("first-hour")
    port = free_port()
    log_path = root / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GPUFLEET_TRACE", "GPUFLEET_DATA_DIR")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet", "demo", "--data-dir", "gpufleet-data",
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    started = time.time()
    try:

        def history():
            if proc.poll() is not None:
                raise AssertionError("the demo exited:\n" + log_path.read_text()[-5000:])
            r = httpx.get(url + "/api/v1/reports", params={"period": "month", "by": "user"},
                          timeout=30)  # fmt: skip
            return r.status_code == 200 and [x for x in r.json()["rows"] if x["gpu_hours"]]

        rows = wait_for(history, 900, "the demo's history in the month-by-user report", step=1.0)
        print(f"history there {time.time() - started:.0f} s after the demo started")
        yield url, root, rows
    finally:
        stop_demo(proc)


def _pages(url: str, root: Path, rows: list[dict]) -> list[str]:
    hosts = httpx.get(url + "/api/v1/hosts", timeout=10).json()["hosts"]
    replay = sorted(h["name"] for h in hosts if h["source"] == "replay")
    user = max(rows, key=lambda r: r["gpu_hours"])["key"]
    return [
        "/", f"/hosts/{replay[0]}?range=1w", f"/hosts/{replay[-1]}?range=1d",
        "/reports", "/reports?period=year&by=host", "/reports?period=week&by=user",
        f"/me/usage?user={user}", "/recommend", "/recommend?gpus=2&gpu_mem_gib=16&hours=4",
        "/alerts", "/admin", "/admin/reports", "/docs",
    ]  # fmt: skip


def test_every_page_at_desk_and_phone_width(demo, browser):
    url, root, rows = demo
    key = (root / "gpufleet-data" / "admin.key").read_text().strip()
    r = httpx.post(url + "/api/v1/admin/users", headers={"Authorization": f"Bearer {key}"},
                   json={"name": "ops", "password": PASSWORD, "role": "admin"}, timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    shots = root / "screenshots"
    shots.mkdir()
    problems: list[str] = []
    for width, height in ((1440, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        try:
            page.goto(url + "/login")
            page.screenshot(path=shots / f"login-{width}.png", full_page=True)
            login = page.request.post(
                url + "/login", data={"username": "ops", "password": PASSWORD}
            )
            assert login.status == 200, login.text()
            for path in _pages(url, root, rows):
                page.goto(url + path)
                page.wait_for_load_state("networkidle")
                if page.locator(".chart").count():
                    try:
                        page.wait_for_function(CHARTS_READY, timeout=60_000)
                    except Exception:
                        problems.append(f"{path} at {width} px: charts without data: "
                                        f"{page.evaluate(CHARTS)}")  # fmt: skip
                name = path.strip("/").replace("/", "_").replace("?", "_") or "overview"
                page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
                wide = page.evaluate("document.scrollingElement.scrollWidth")
                inner = page.evaluate("window.innerWidth")
                if wide > inner:
                    problems.append(f"{path} is {wide} px wide on a {inner} px screen: "
                                    f"{page.evaluate(OVERFLOW)}")  # fmt: skip
        finally:
            context.close()
        problems += [f"JavaScript error at {width} px: {e}" for e in errors]
    print(f"screenshots in {shots}")
    assert not problems, "\n".join(problems)
