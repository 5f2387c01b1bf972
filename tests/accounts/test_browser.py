"""The admin page and the login in a real headless Chromium (the Debian package, driven by
Playwright; never a downloaded browser). Without Chromium these tests skip, or fail in CI."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import gpufleet_here, make_batch

pytestmark = pytest.mark.slow


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def add_user(data_dir, name: str, role: str, password: str) -> None:
    r = gpufleet_here(
        "user", "create", name, "--role", role, "--password-stdin", "--data-dir", str(data_dir),
        input=password + "\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def log_in(page, url: str, name: str, password: str) -> None:
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def ingest(server, token: str) -> int:
    return server.post(make_batch(), token=token).status_code


def test_admin_logs_in_creates_a_token_sees_it_once_and_revokes_it(server_factory, page):
    srv = server_factory(start=False)
    add_user(srv.data_dir, "root", "admin", "root password 1")
    srv.start()
    assert ingest(srv, srv.token) == 200  # a host to list

    page.goto(srv.url + "/admin")
    assert page.url.endswith("/login?next=/admin")
    log_in(page, srv.url, "root", "wrong password")
    assert "wrong user name or password" in page.inner_text("#login-error")
    log_in(page, srv.url, "root", "root password 1")
    assert page.url == srv.url + "/admin"
    assert page.inner_text("tr[data-host='gpu01']").count("gpu01") >= 1
    assert "test-agent" in page.inner_text("#tokens")

    page.fill("#token-name", "gpu42")
    page.click("#create-token button[type=submit]")
    page.wait_for_selector("#new-token")
    token = page.inner_text("#new-token").strip()
    assert token.startswith("gft_")
    assert ingest(srv, token) == 200

    page.goto(srv.url + "/admin")
    assert page.query_selector("#new-token") is None
    assert token not in page.content()  # shown once only
    assert page.is_visible("tr[data-token='gpu42'] button.revoke")

    page.click("tr[data-token='gpu42'] button.revoke")
    page.wait_for_selector("#admin-message")
    assert "revoked token 'gpu42'" in page.inner_text("#admin-message")
    assert "revoked" in (page.get_attribute("tr[data-token='gpu42']", "class") or "")
    assert ingest(srv, token) == 403

    page.click("#logout")
    page.wait_for_load_state()
    assert "/login" in page.url
    page.goto(srv.url + "/admin")
    assert "/login" in page.url


def test_require_login_in_the_browser(server_factory, page, tmp_path):
    config = tmp_path / "gpufleet.yaml"
    config.write_text("web:\n  require_login: true\n")
    srv = server_factory("--config", str(config), start=False)
    add_user(srv.data_dir, "vic", "viewer", "viewer password")
    srv.start()
    assert httpx.get(srv.url + "/api/v1/hosts").status_code == 401

    page.goto(srv.url + "/")
    assert "/login" in page.url
    log_in(page, srv.url, "vic", "viewer password")
    assert page.url == srv.url + "/"
    # The page's own API calls carry the session cookie.
    status = page.evaluate("fetch('/api/v1/hosts').then(r => r.status)")
    assert status == 200
    response = page.goto(srv.url + "/admin")
    assert response is not None and response.status == 403
