"""The zh-CN pages in real Chromium: the browser's own language (Accept-Language from the
context's locale) picks Chinese; the overview, a host page's charts and the reports page
render with no JavaScript error, and the words the scripts write are Chinese."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import make_batch
from tests.web.conftest import fleet_sample

HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture
def zh_page(browser):
    context = browser.new_context(locale="zh-CN", viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_zh_overview_host_and_reports_in_chromium(server, zh_page):
    page = zh_page
    for k in range(3):
        s = fleet_sample(f"gpu{k + 1:02d}", k, ts=time.time())
        server.post_seen(make_batch(s))

    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.get_attribute("html", "lang") == "zh-CN"
    page.wait_for_function("document.getElementById('live').dataset.state === 'live'",
                           timeout=20_000)  # fmt: skip
    assert page.inner_text("#live") == "实时"
    # the three hosts reach live state a moment after their batches are acknowledged (through
    # an ingest worker): the count follows live, so wait for it
    page.wait_for_function(
        "document.getElementById('shown').textContent === '显示 3 / 3 台主机'", timeout=20_000
    )
    assert "使用中" in page.inner_text("#tot-gpus") and "在线" in page.inner_text("#tot-hosts")
    title = page.get_attribute('[data-host="gpu01"] [data-gpu="0"]', "title")
    assert "利用率" in title and "显存" in title  # the GPU cell's tooltip
    assert page.inner_text(".nav a[href='/']") == "总览"
    # one English word, two meanings: a GPU "held" and a job "held" (the queue's states)
    assert page.evaluate("[GF.t('held'), GF.tc('job state', 'held')]") == ["被占用", "挂起"]

    # a host page: the charts' titles, and the series names the script gives the legends
    page.goto(server.url + "/hosts/gpu01")
    page.wait_for_function("document.body.dataset.charts === '1'", timeout=30_000)
    captions = page.eval_on_selector_all("figcaption", "els => els.map(e => e.textContent)")
    assert "GPU 利用率" in captions and "内存已用" in captions and "网络" in captions
    assert all(HAN.search(c) or c == "CPU" for c in captions), captions
    names = page.evaluate("GF_HOST.seriesData.net.map(s => s.name)")
    assert set(names) == {"接收", "发送"}
    assert page.inner_text("#procs thead").split()[:1] == ["用户"]

    # the reports page: the script's chart caption, table header and meta line
    page.goto(server.url + "/reports?period=month&by=host")
    page.wait_for_selector("#report[data-state='ready'], #report[data-state='error']",
                           timeout=30_000)  # fmt: skip
    assert page.get_attribute("#report", "data-state") == "ready"
    caption = page.inner_text("#cap-stacked")
    assert caption.startswith("每月占用的 GPU 时，按主机堆叠"), caption
    assert "层级" in page.inner_text("#r-meta")
    assert "占用 GPU 时" in page.inner_text("#r-totals")

    # the switch in the top bar: English from now on, over the browser's language
    page.click("#lang-switch a[data-lang='en']")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.get_attribute("html", "lang") == "en"
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.get_attribute("html", "lang") == "en"
    assert page.inner_text("#shown") == "3 of 3 hosts"


def test_zh_pages_fit_a_phone(server, browser):
    """The Chinese top bar (with the language switch) and pages fit 390 px, like English."""
    for k in range(2):
        server.post_seen(make_batch(fleet_sample(f"gpu{k + 1:02d}", k)))
    context = browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        for path in ("/", "/hosts/gpu01", "/reports", "/alerts", "/recommend", "/login"):
            page.goto(server.url + path)
            page.wait_for_load_state("load")
            page.wait_for_timeout(300)
            assert page.get_attribute("html", "lang") == "zh-CN"
            assert page.is_visible("#lang-switch"), path
            wide = page.evaluate("document.scrollingElement.scrollWidth")
            assert wide <= 390, (path, wide)
    finally:
        context.close()
    assert not errors, errors
