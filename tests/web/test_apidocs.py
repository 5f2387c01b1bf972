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
