"""/docs works on an air-gapped network: Swagger UI comes from the package, not a CDN."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_api_docs_render_offline(server, browser):
    page = browser.new_page()
    outside: list[str] = []

    def only_loopback(route):
        url = route.request.url
        if url.startswith(server.url):
            route.continue_()
        else:  # an air-gapped network: nothing else answers
            outside.append(url)
            route.abort()

    page.route("**/*", only_loopback)
    try:
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)  # operations drawn from /openapi.json
        assert page.locator(".opblock").count() > 10
        assert page.locator(".title").first.inner_text().startswith("gpufleet")
        assert outside == [], f"/docs asked outside the server: {outside}"
        icon = page.request.get(server.url + "/static/favicon.svg")
        assert icon.status == 200 and b"<svg" in icon.body()
    finally:
        page.close()


def test_pages_without_a_stream_have_no_live_badge(server, browser):
    page = browser.new_page()
    try:
        page.goto(server.url + "/recommend")
        assert page.locator("#live").count() == 0
        assert page.locator('link[rel="icon"]').count() == 1
        page.goto(server.url + "/")
        page.wait_for_selector('#live[data-state="live"]', timeout=30_000)
    finally:
        page.close()


# the elements whose right edge passes the screen's, to say what overflows
WIDEST = """[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > 390)
  .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""

PAGES = ["/", "/hosts/gpu01", "/reports", "/me/usage", "/recommend", "/login", "/docs"]


def test_phone_width_has_no_horizontal_scroll_and_full_names_on_hover(server, browser):
    from tests.conftest import make_batch, make_sample
    from tests.web.test_browser import _fleet

    _fleet(server, 6)
    long = "speech-v100-rack7-node-with-a-long-name-01"
    calm = make_sample(long, gpus=0, procs=0)
    calm.errors = ["NVML: NVML Shared Library Not Found (NVMLError_LibraryNotFound)"]
    server.post_seen(make_batch(calm))
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        for path in PAGES:
            page.goto(server.url + path)
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            wide = page.evaluate(WIDEST) if width > 390 else []
            assert width <= 390, f"{path} is {width} px wide on a 390 px screen: {wide}"
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        link = page.locator(f'[data-host="{long}"] .hname a[href^="/hosts/"]')
        assert link.get_attribute("title") == long
        row = page.locator(f'[data-host="{long}"]')
        assert row.locator(".calm").count() == 1 and row.locator(".why").count() == 0
    finally:
        page.close()
