"""What a person does on /alerts in real Chromium: a logged-in user acknowledges an alert, an
admin silences one from its row and expires the silence, tunes a rule and undoes it, and a matcher the API refuses is
shown with the API's own message (nothing stored); a visitor who is not logged in gets the
command line instead of buttons."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.accounts.test_browser import add_user, log_in
from tests.alerts.test_server import _config, _post
from tests.web.conftest import page  # noqa: F401  (Chromium page, fails on JS errors)

pytestmark = pytest.mark.slow


def test_acknowledge_silence_and_expire_from_the_page(tmp_path, server_factory, page, browser):  # noqa: F811
    from playwright.sync_api import expect

    srv = server_factory("--config", str(_config(tmp_path, 9)), start=False)
    add_user(srv.data_dir, "root", "admin", "root password 1")
    srv.start()
    _post(srv, hot=True)  # two GPUs of dgx-01 at 93 C: gpu_too_hot fires on both
    page.goto(srv.url + "/login?next=/alerts")
    log_in(page, srv.url, "root", "root password 1")
    rows = page.locator("#alert-table tr[data-state='firing']")
    for _ in range(120):  # the engine evaluates every 0.3 s; the page follows live
        if rows.count() == 2:
            break
        _post(srv, hot=True)
        page.wait_for_timeout(500)
    expect(rows).to_have_count(2)

    # acknowledge the first: the API records who, the row says so (no more repeats)
    first = rows.nth(0)
    fingerprint = first.get_attribute("data-fingerprint")
    first.locator("button.ack").click()
    expect(page.locator(f"#alert-table tr[data-fingerprint='{fingerprint}']")).to_contain_text(
        "root", timeout=30_000
    )
    alerts = httpx.get(srv.url + "/api/v1/alerts").json()["alerts"]
    assert [a["acked_by"] for a in alerts if a["fingerprint"] == fingerprint] == ["root"]

    # a matcher the API refuses: its message on the page, nothing stored
    page.fill("#silence-matchers", "Host=dgx-01")
    page.fill("#silence-reason", "fans replaced today")
    page.click("#silence-form button[type=submit]")
    expect(page.locator("#alert-action-error")).to_contain_text("is not a label name")
    page.fill("#silence-matchers", "nonsense")
    page.click("#silence-form button[type=submit]")
    expect(page.locator("#alert-action-error")).to_contain_text("write LABEL=PATTERN")
    assert httpx.get(srv.url + "/api/v1/silences").json()["silences"] == []

    # "Silence…" on the second row fills the form with its labels; the silence mutes it
    rows.nth(1).locator("button.silence-this").click()
    matchers = page.input_value("#silence-matchers")
    assert matchers.startswith("host=dgx-01 rule=gpu_too_hot gpu="), matchers
    page.fill("#silence-matchers", "host=dgx-01 rule=gpu_too_hot")
    page.select_option("#silence-duration", "21600")
    page.click("#silence-form button[type=submit]")
    silence = page.locator("#silence-rows tr[data-silence]")
    expect(silence).to_have_count(1)
    expect(silence).to_contain_text("fans replaced today")
    (stored,) = httpx.get(srv.url + "/api/v1/silences").json()["silences"]
    assert stored["matchers"] == {"host": "dgx-01", "rule": "gpu_too_hot"}
    assert stored["created_by"] == "root"
    assert 6 * 3600 - 120 < stored["ends_at"] - stored["starts_at"] <= 6 * 3600
    expect(page.locator("#alert-table")).to_contain_text("silenced", timeout=30_000)

    # expire it: gone from the page and from the active silences
    silence.locator("button.expire").click()
    expect(page.locator("#silence-rows")).to_contain_text("No active silence.")
    assert httpx.get(srv.url + "/api/v1/silences").json()["silences"] == []

    # tune a built-in rule from its row, then undo the edit
    page.click("#alert-rules button.tune[data-rule='gpu_too_hot']")
    assert page.input_value("#rule-threshold") == "85.0"
    page.fill("#rule-threshold", "99")
    page.fill("#rule-for", "60")
    page.click("#rule-form button[type=submit]")
    row = page.locator("#alert-rules tr[data-rule='gpu_too_hot']")
    expect(row).to_contain_text("(edited)")
    expect(row).to_contain_text("99")
    (rule,) = [r for r in httpx.get(srv.url + "/api/v1/rules").json()["rules"]
               if r["name"] == "gpu_too_hot"]  # fmt: skip
    assert (rule["threshold"], rule["for_seconds"], rule["edited"]) == (99.0, 60.0, True)
    row.locator("button.untune").click()
    expect(row).not_to_contain_text("(edited)")
    (rule,) = [r for r in httpx.get(srv.url + "/api/v1/rules").json()["rules"]
               if r["name"] == "gpu_too_hot"]  # fmt: skip
    assert (rule["threshold"], rule["edited"]) == (85.0, False)

    # the history says when in UTC, as a date and time
    page.reload()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", page.inner_text("#alert-history"))

    # someone not logged in sees what fires, and the command line, but no buttons
    other = browser.new_context().new_page()
    other.goto(srv.url + "/alerts")
    expect(other.locator("#alert-table tr[data-state='firing']")).to_have_count(2)
    assert other.locator("button.ack, button.silence-this, #silence-form").count() == 0
    assert "gpufleet silence add" in other.inner_text("#alert-silences")
    other.context.close()


def test_the_overview_marks_the_host_whose_alerts_fire(tmp_path, server_factory, page):  # noqa: F811
    """The fleet's badge in the top bar, and on the host's own row of the overview its own
    badge (linking to its alerts); the other hosts' rows have none; live both ways."""
    from playwright.sync_api import expect

    from tests.conftest import make_batch, make_sample

    srv = server_factory("--config", str(_config(tmp_path, 9)))
    srv.post_seen(make_batch(make_sample("calm-01")))
    _post(srv, hot=False)
    srv.wait_seen({"dgx-01": time.time() - 60})
    page.goto(srv.url + "/")
    hot_row = page.locator("#hosts [data-host='dgx-01'] .host-alerts")
    calm_row = page.locator("#hosts [data-host='calm-01'] .host-alerts")
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    expect(hot_row).to_be_hidden()
    _post(srv, hot=True)  # two GPUs of dgx-01 overheat
    expect(hot_row.locator("[data-severity='warning']")).to_have_text("2 warning", timeout=60_000)
    assert hot_row.get_attribute("href") == "/alerts?q=dgx-01"
    expect(calm_row).to_be_hidden()
    _post(srv, hot=False)  # they cool down (resolve_hold_seconds: 0 in this config)
    expect(hot_row).to_be_hidden(timeout=60_000)
