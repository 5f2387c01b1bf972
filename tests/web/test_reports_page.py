"""/reports and /me/usage in real headless Chromium against a real server process whose store
holds ten days of generated usage: the choices redraw the charts and the table from the API,
the CSV link downloads the API's figures, the print layout fits the page, and "my usage"
shows only the user's own Unix users."""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from gpufleet.accounts.users import new_user
from gpufleet.store import open_store
from tests.conftest import ServerProc, free_port, gpufleet_here
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

pytestmark = pytest.mark.slow

START = datetime(2024, 2, 20, tzinfo=UTC).timestamp()
END = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
RANGE = "from=2024-02-20&to=2024-02-29"
IMG = Path(
    os.environ.get("GPUFLEET_SCREENSHOT_DIR")
    or Path(__file__).resolve().parents[2] / "out" / "screenshots"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("reports-web")
    store = open_store(data / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=11, hosts=3))
    store.set_user_mapping("carol", "alice", None)  # carol's jobs are alice's (the person)
    store.create_user(new_user("alice", "alice password", "user"))
    store.create_user(new_user("root", "admin password", "admin"))
    store.close()
    r = gpufleet_here("rollup", "--data-dir", str(data), env={"GPUFLEET_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    srv = ServerProc(data, free_port(), token="")
    srv.start()
    yield srv
    srv.stop()


def api(server, query: str, fmt: str = "json"):
    r = httpx.get(f"{server.url}/api/v1/reports?{query}" + ("&format=csv" if fmt == "csv" else ""))
    assert r.status_code == 200, r.text
    return r.json() if fmt == "json" else r.text


def wait_ready(page, contains: str = "") -> None:
    page.wait_for_function(
        """q => { const r = document.getElementById('report');
                  return r && r.dataset.state === 'ready' && (r.dataset.loaded || '').includes(q); }""",
        arg=contains,
        timeout=15_000,
    )


def table(page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#r-table tbody tr[data-key]",
        """trs => trs.map(tr => ({key: tr.dataset.key, period: tr.dataset.period,
                                 held: tr.children[2].textContent}))""",
    )


def shown(text: str) -> float:
    """A figure as the page shows it (one decimal, thousands with commas)."""
    return float(text.replace(",", ""))


def close(text: str, v: float) -> bool:
    return abs(shown(text) - v) <= 0.05 + 1e-9  # rounded to one decimal (half up in JS)


def test_choices_redraw_charts_and_table_from_the_api(server, page):
    page.goto(f"{server.url}/reports?period=day&by=user&{RANGE}")
    wait_ready(page)
    options = httpx.get(server.url + "/api/v1/reports/options").json()
    offered = page.eval_on_selector_all("#f-by option", "os => os.map(o => o.value)")
    assert offered == options["by"]  # the groupings are the API's

    body = api(server, f"period=day&by=user&{RANGE}")
    rows = table(page)
    assert len(rows) == len(body["rows"]) > 0
    want = {(r["period_start"], r["key"]): r["gpu_hours"] for r in body["rows"]}
    got = {(r["period"], r["key"]): r["held"] for r in rows}
    assert got.keys() == want.keys()
    assert all(close(got[k], want[k]) for k in want), (got, want)
    assert close(page.inner_text("#t-gpu_hours .big"), body["totals"]["gpu_hours"])
    series = page.get_attribute("#chart-stacked", "data-series").split(",")
    assert set(series) == {r["key"] for r in body["rows"]}
    assert page.get_attribute("#chart-stacked", "data-periods").split(",") == [
        f"2024-02-{d}" for d in range(20, 30)
    ]
    assert page.locator("#chart-stacked canvas").count() == 1  # ECharts drew it
    assert page.get_attribute("#chart-heatmap", "data-hosts") == "3"
    assert page.get_attribute("#chart-heatmap", "data-periods") == "10"
    ranked = [h["host"] for h in body["long_tail"]["hosts_ranked"]]
    assert page.get_attribute("#chart-longtail", "data-hosts").split(",") == ranked
    # changes against the day before are shown
    assert page.locator("#r-table td.chg.up, #r-table td.chg.down").count() > 0
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / "reports.png"), full_page=True)

    page.select_option("#f-by", "host")
    wait_ready(page, "by=host")
    assert "by=host" in page.url
    hosts = api(server, f"period=day&by=host&{RANGE}")
    assert {r["key"] for r in table(page)} == {"node0", "node1", "node2"}
    assert set(page.get_attribute("#chart-stacked", "data-series").split(",")) == {
        "node0", "node1", "node2",
    }  # fmt: skip
    assert close(page.inner_text("#t-gpu_hours .big"), hosts["totals"]["gpu_hours"])

    page.select_option("#f-period", "week")
    wait_ready(page, "period=week")
    weeks = api(server, f"period=week&by=host&{RANGE}")
    assert page.get_attribute("#chart-stacked", "data-periods").split(",") == sorted(
        {r["period_start"] for r in weeks["rows"]}
    )
    assert len(table(page)) == len(weeks["rows"])

    page.select_option("#f-period", "custom")
    page.fill("#f-from", "")
    page.click("#f-show")
    page.wait_for_selector("#r-error")
    assert "custom period needs both from and to" in page.inner_text("#r-error")


def test_csv_link_downloads_the_api_figures(server, page):
    page.goto(f"{server.url}/reports?period=week&by=user&{RANGE}")
    wait_ready(page)
    href = page.get_attribute("#dl-csv", "href")
    assert href.startswith("/api/v1/reports?") and "format=csv" in href
    with page.expect_download() as dl:
        page.click("#dl-csv")
    text = Path(dl.value.path()).read_text()
    assert text == api(server, f"period=week&by=user&{RANGE}", "csv")
    body = api(server, f"period=week&by=user&{RANGE}")
    got = list(csv.DictReader(io.StringIO(text)))
    assert [(r["period_start"], r["key"]) for r in got] == [
        (r["period_start"], r["key"]) for r in body["rows"]
    ]
    for a, b in zip(got, body["rows"], strict=True):
        assert float(a["gpu_hours"]) == pytest.approx(b["gpu_hours"])
        assert float(a["avg_util"]) == pytest.approx(b["avg_util"])
    assert page.get_attribute("#dl-json", "href") == href.replace("&format=csv", "")


def test_print_layout_hides_the_navigation_and_fits_the_charts(server, page):
    page.goto(f"{server.url}/reports?period=day&by=user&{RANGE}")
    wait_ready(page)
    page.emulate_media(media="print")
    page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    assert not page.is_visible(".topbar") and not page.is_visible("#report-form")
    assert not page.is_visible("#dl-csv")
    widths = page.eval_on_selector_all(
        ".rchart canvas", "cs => cs.map(c => c.getBoundingClientRect().width)"
    )
    assert len(widths) == 3 and all(0 < w <= 700 for w in widths)
    assert len(page.pdf(format="A4")) > 10_000


def log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def test_my_usage_shows_only_the_users_own_rows(server, page):
    log_in(page, server.url, "alice", "alice password")
    page.goto(f"{server.url}/me/usage?period=day&{RANGE}")
    wait_ready(page)
    assert page.get_attribute("#report", "data-keys") == "alice,carol"  # mapped by an admin
    mine = api(server, f"period=day&by=user&{RANGE}&key=alice,carol")
    everyone = api(server, f"period=day&by=user&{RANGE}")
    assert {r["key"] for r in everyone["rows"]} > {"alice", "carol"}
    rows = table(page)
    assert {r["key"] for r in rows} == {"alice", "carol"}
    assert len(rows) == len(mine["rows"])
    assert close(page.inner_text("#t-gpu_hours .big"), mine["totals"]["gpu_hours"])
    assert mine["totals"]["gpu_hours"] == pytest.approx(
        sum(r["gpu_hours"] for r in everyone["rows"] if r["key"] in ("alice", "carol"))
    )
    assert "bob" not in page.inner_text("#r-table")
    # someone else's usage is not on offer to a plain user
    page.goto(f"{server.url}/me/usage?user=bob&{RANGE}")
    wait_ready(page)
    assert "only your own usage" in page.inner_text("#me-note")
    assert page.get_attribute("#report", "data-keys") == "alice,carol"


def test_my_usage_without_a_login_offers_a_picker(server, page):
    page.goto(f"{server.url}/me/usage")
    page.wait_for_selector("body[data-ready='1']")
    assert "Nobody is logged in" in page.inner_text("#me-login")
    assert page.locator("#report").count() == 0
    page.wait_for_function("document.getElementById('known-users').dataset.loaded !== undefined")
    page.fill("#f-user", "bob")
    page.fill("#f-from", "2024-02-20")
    page.fill("#f-to", "2024-02-29")
    page.click("#f-show")
    wait_ready(page)
    assert "user=bob" in page.url
    assert {r["key"] for r in table(page)} == {"bob"}


def test_api_key_and_fields_narrow_the_answer(server):
    full = api(server, f"period=week&by=user&{RANGE}")
    some = api(server, f"period=week&by=user&{RANGE}&key=bob&fields=key,gpu_hours,period_start")
    assert some["columns"] == ["period_start", "key", "gpu_hours"]
    assert some["rows"] == [
        {"period_start": r["period_start"], "key": "bob", "gpu_hours": r["gpu_hours"]}
        for r in full["rows"] if r["key"] == "bob"
    ]  # fmt: skip
    text = api(server, f"period=week&by=user&{RANGE}&fields=key,gpu_hours", "csv")
    assert text.splitlines()[0] == "key,gpu_hours"
    for query, code in (("fields=key,planet", "invalid_fields"), ("key=,", "invalid_key")):
        r = httpx.get(f"{server.url}/api/v1/reports?{query}")
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        assert "planet" in r.json()["error"]["message"] or code == "invalid_key"
