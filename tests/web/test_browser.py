"""The web UI in real headless Chromium against a real server process fed by real ingests.

Screenshots of the overview and a host page go to out/screenshots/ (or $GPUFLEET_SCREENSHOT_DIR);
copy them to docs/img/ to refresh the README's pictures."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_batch, wait_for
from tests.web.conftest import fleet_sample

IMG = Path(
    os.environ.get("GPUFLEET_SCREENSHOT_DIR")
    or Path(__file__).resolve().parents[2] / "out" / "screenshots"
)
MODELS = ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]


def _fleet(server, n: int = 6, *, replay: tuple[str, ...] = ()) -> None:
    now = time.time()
    for k in range(n):
        name = f"gpu{k + 1:02d}"
        s = fleet_sample(name, k, ts=now, model=MODELS[k % 3], gpus=4 if k % 4 == 3 else 8,
                         busy=(k * 3) % 9 if k % 4 != 3 else 2)  # fmt: skip
        if k == 1:  # GPU 0 held since 40 min ago and idle: marked idle (30 min default)
            old = fleet_sample(name, k, ts=now - 2400, model=MODELS[k % 3], busy=8)
            for x in (old, s):
                x.gpus[0].utilization_gpu_percent = 0.0
            assert server.post(make_batch(old)).status_code == 200
        batch = make_batch(s)
        if name in replay:
            batch.source = "replay"
        assert server.post(batch).status_code == 200, name
    server.wait_seen({f"gpu{k + 1:02d}": now for k in range(n)})


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)


def _util(page, host: str, gpu: int) -> str:
    return page.get_attribute(f'[data-host="{host}"] [data-gpu="{gpu}"] .bar.u', "data-util")


def test_overview_lists_hosts_and_a_new_sample_moves_the_right_bar(server, page):
    _fleet(server, 14, replay=("gpu04", "gpu13"))
    _open(page, server.url + "/")
    hosts = page.eval_on_selector_all(".host:not([hidden])", "els => els.map(e => e.dataset.host)")
    assert hosts == [f"gpu{k:02d}" for k in range(1, 15)]
    assert page.locator('[data-host="gpu04"] .badge.replay').count() == 1
    assert page.locator('[data-host="gpu13"] .badge.replay').count() == 1
    assert page.locator('[data-host="gpu01"] .badge.replay').count() == 0
    assert page.locator('[data-host="gpu02"] [data-gpu="0"].idle').count() == 1
    assert page.locator("#shown").inner_text() == "14 of 14 hosts"
    page.wait_for_timeout(300)
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / "overview.png"))

    page.evaluate("window.__noReload = 1")
    before = {g: _util(page, "gpu03", g) for g in range(8)}
    other = _util(page, "gpu05", 5)
    s = fleet_sample("gpu03", 2, ts=time.time(), model=MODELS[2], busy=8)
    s.gpus[5].utilization_gpu_percent = 77.0
    assert server.post(make_batch(s)).status_code == 200
    page.wait_for_function(
        """() => document.querySelector('[data-host="gpu03"] [data-gpu="5"] .bar.u')
                 ?.dataset.util === "77" """,
        timeout=30_000,
    )  # pushed to the page without a reload (the latency is a benchmark figure: bench/ui.py)
    assert page.evaluate("window.__noReload") == 1
    assert _util(page, "gpu03", 5) == "77" and before[5] != "77"
    assert _util(page, "gpu05", 5) == other  # only the right host's bar moved


def test_filters_live_in_the_url_and_survive_reload(server, page):
    _fleet(server, 6)
    _open(page, server.url + "/")
    shown = lambda: page.eval_on_selector_all(  # noqa: E731
        ".host:not([hidden])", "els => els.map(e => e.dataset.host)"
    )
    page.select_option('select[name="model"]', "NVIDIA H100 80GB HBM3")
    assert shown() == ["gpu02", "gpu05"]
    assert "model=NVIDIA+H100+80GB+HBM3" in page.url
    page.check('input[name="free"]')
    page.select_option('select[name="sort"]', "free")
    expect = ["gpu02", "gpu05"]  # 5 free GPUs each: then by name
    assert shown() == expect
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert shown() == expect
    assert page.is_checked('input[name="free"]')
    assert page.input_value('select[name="sort"]') == "free"
    assert page.input_value('select[name="model"]') == "NVIDIA H100 80GB HBM3"
    # search by user, straight from a URL
    _open(page, server.url + "/?q=dmitri")
    assert shown() and all(
        "dmitri" in page.locator(f'[data-host="{h}"] .gpus').inner_text() for h in shown()
    )
    _open(page, server.url + "/?user=nobody-at-all")
    assert shown() == [] and page.is_visible("#empty")


def test_host_page_draws_its_charts(server, page):
    now = time.time()
    samples = []
    for i in range(60):  # the last hour, one sample a minute, smooth made-up load
        s = fleet_sample("gpu01", 0, ts=now - 3540 + 60 * i)
        for g in s.gpus[:5]:
            g.utilization_gpu_percent = round(55 + 40 * math.sin(i / 7 + g.index), 1)
            g.temperature_celsius = 40 + g.utilization_gpu_percent * 0.4
            g.power_watts = 80 + g.utilization_gpu_percent * 3
        s.host_metrics.cpu_percent = round(40 + 25 * math.sin(i / 9), 1)
        samples.append(s)
    for i in range(0, 60, 20):
        assert server.post(make_batch(*samples[i : i + 20])).status_code == 200
    server.wait_seen({"gpu01": samples[-1].ts})
    wait_for(
        lambda: (
            len(
                httpx.get(
                    server.url + "/api/v1/hosts/gpu01/series",
                    params={"metric": "host.cpu_percent", "since": "-2h"},
                ).json()["series"][0]["points"]
            )
            >= 60
        ),
        what="the hour of samples in the store",
    )
    page.goto(server.url + "/hosts/gpu01")
    page.wait_for_selector("body[data-charts='1']", timeout=10_000)
    for chart in ("gpu_util", "gpu_mem", "gpu_temp", "gpu_power", "cpu", "mem", "disk", "net"):
        n = page.evaluate(
            """id => {
                const el = document.getElementById('chart-' + id);
                const c = echarts.getInstanceByDom(el);
                if (!el.querySelector('canvas') || !c) return -1;
                return c.getOption().series.reduce((a, s) => a + s.data.length, 0);
            }""",
            chart,
        )
        assert n >= 60, (chart, n)
    assert page.locator("#procs tbody tr").count() == 5
    assert "python train.py" in page.locator("#procs").inner_text()
    assert "550.54.15" in page.locator(".facts").inner_text()
    page.wait_for_timeout(300)
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / "host.png"), full_page=True)
    page.click('button[data-range="6h"]')
    page.wait_for_function("() => location.search.includes('range=6h')")
    assert page.goto(server.url + "/hosts/nope").status == 404


@pytest.mark.slow
def test_page_reconnects_after_server_restart(server, page):
    _fleet(server, 2)
    _open(page, server.url + "/")
    server.kill()  # SIGKILL: no goodbye to the browser
    page.wait_for_selector('#live[data-state="down"]', timeout=10_000)
    server.start()
    s = fleet_sample("gpu01", 0, ts=time.time(), busy=8)
    s.gpus[2].utilization_gpu_percent = 42.0
    assert server.post(make_batch(s)).status_code == 200
    page.wait_for_function(
        """() => document.querySelector('[data-host="gpu01"] [data-gpu="2"] .bar.u')
                 ?.dataset.util === "42" """,
        timeout=15_000,
    )
    assert page.get_attribute("#live", "data-state") == "live"
