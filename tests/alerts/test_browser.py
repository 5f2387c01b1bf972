"""The /alerts page in real Chromium: it lists what fires and follows new alerts without a
reload; the nav links to it."""

from __future__ import annotations

import pytest

from tests.alerts.test_server import _config, _post
from tests.web.conftest import page  # noqa: F401  (Chromium page, fails on JS errors)

pytestmark = pytest.mark.slow


def test_alerts_page_follows_new_alerts(tmp_path, server_factory, page):  # noqa: F811
    srv = server_factory("--config", str(_config(tmp_path, 9)))  # channel to a closed port
    page.goto(srv.url + "/alerts")
    assert page.locator("#alert-table").inner_text().count("Nothing is firing") == 1
    assert page.locator("nav a[href='/alerts']").get_attribute("aria-current") == "page"

    def rows() -> int:
        _post(srv, hot=True)
        return page.locator("#alert-table tr[data-state='firing']").count()

    deadline = 60.0
    import time

    end = time.monotonic() + deadline
    while rows() < 2 and time.monotonic() < end:
        page.wait_for_timeout(500)
    assert rows() == 2, "the two hot GPUs appear without a reload"
    text = page.locator("#alert-table").inner_text()
    assert "gpu_too_hot" in text and "dgx-01" in text
    assert "pa55word" not in page.content()


def test_badges_appear_with_a_fault_and_clear_when_it_resolves(tmp_path, server_factory,
                                                               page):  # noqa: F811
    """Two GPUs of dgx-01 overheat (93 C in the agent's sample): the host page's badge shows
    2 warnings without a reload, the overview's fleet badge too; the GPUs cool down and the
    overview's badge goes away, live."""
    from playwright.sync_api import expect

    srv = server_factory("--config", str(_config(tmp_path, 9)))
    _post(srv, hot=False)
    page.goto(srv.url + "/hosts/dgx-01")
    badge = page.locator("#alert-badges")
    expect(badge).to_be_hidden()
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    _post(srv, hot=True)  # the fault
    expect(badge.locator("[data-severity='warning']")).to_have_text("2 warning", timeout=60_000)
    assert badge.get_attribute("href") == "/alerts?q=dgx-01"

    page.goto(srv.url + "/")
    fleet = page.locator("#alert-badges")
    expect(fleet.locator("[data-severity='warning']")).to_have_text("2 warning", timeout=60_000)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    _post(srv, hot=False)  # the fault resolves (resolve_hold_seconds: 0 in this config)
    expect(fleet).to_be_hidden(timeout=60_000)
    assert fleet.get_attribute("data-total") == "0"
