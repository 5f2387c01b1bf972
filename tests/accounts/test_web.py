"""Login, sessions, roles, CSRF and require_login through the real app (in process, real
DuckDB file)."""

from __future__ import annotations

import re

from tests.accounts.conftest import PASSWORDS, csrf_of, login
from tests.conftest import make_batch


def error_code(r) -> str:
    body = r.json()
    assert set(body["error"]) == {"status", "code", "message", "details"}
    assert body["error"]["status"] == r.status_code
    return body["error"]["code"]


def token_names(client) -> list[str]:
    return [t.name for t in client.app.state.ctx.store.tokens()]


# -- log in ------------------------------------------------------------------------------------


def test_login_success_sets_a_signed_httponly_cookie(client):
    r = client.get("/login")
    assert r.status_code == 200
    assert 'name="password"' in r.text
    token = csrf_of(r.text)
    r = client.post(
        "/login",
        data={"username": "root", "password": PASSWORDS["root"], "csrf_token": token,
              "next": "/admin"},
    )  # fmt: skip
    assert r.status_code == 303
    assert r.headers["location"] == "/admin"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("gpufleet_session=")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert PASSWORDS["root"] not in cookie
    me = client.get("/api/v1/me").json()
    assert me["user"]["name"] == "root" and me["user"]["role"] == "admin"
    assert me["csrf_token"] != token  # logging in rotates the session
    assert client.app.state.accounts.users.get("root").last_login is not None
    # Logged in, /login sends the user on.
    assert client.get("/login?next=/hosts/x").headers["location"] == "/hosts/x"


def test_login_failure(client):
    token = csrf_of(client.get("/login").text)
    for name, password in (("root", "wrong password"), ("nobody", "whatever pw")):
        r = client.post(
            "/login", data={"username": name, "password": password, "csrf_token": token}
        )
        assert r.status_code == 401
        assert "wrong user name or password" in r.text
        assert "gpufleet_session" not in r.headers.get("set-cookie", "")  # no session issued
    assert client.get("/api/v1/me").status_code == 401
    assert error_code(client.get("/api/v1/me")) == "login_required"


def test_login_needs_the_forms_csrf_token(client):
    client.get("/login")
    r = client.post("/login", data={"username": "root", "password": PASSWORDS["root"]})
    assert r.status_code == 403
    assert "expired" in r.text
    r = client.post(
        "/login",
        data={"username": "root", "password": PASSWORDS["root"], "csrf_token": "forged"},
    )
    assert r.status_code == 403
    assert client.get("/api/v1/me").status_code == 401


def test_login_json_for_scripts(client):
    r = client.post("/login", json={"username": "ann", "password": PASSWORDS["ann"]})
    assert r.status_code == 200
    assert r.json()["user"] == {**r.json()["user"], "name": "ann", "role": "user"}
    assert client.get("/api/v1/me").json()["csrf_token"] == r.json()["csrf_token"]
    r = client.post("/login", json={"username": "ann", "password": "nope nope"})
    assert r.status_code == 401 and error_code(r) == "login_failed"
    r = client.post("/login", json={"user": "ann"})
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_next_cannot_leave_the_site(client):
    token = csrf_of(client.get("/login").text)
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        client.cookies.clear()
        token = csrf_of(client.get("/login").text)
        r = client.post(
            "/login",
            data={"username": "vic", "password": PASSWORDS["vic"], "csrf_token": token,
                  "next": evil},
        )  # fmt: skip
        assert r.headers["location"] == "/"


def test_every_page_shows_who_is_logged_in(client):
    page = client.get("/").text
    assert 'id="login-link"' in page and 'id="logout"' not in page
    token = login(client, "root")  # an admin
    for path in ("/", "/hosts/nope"):
        page = client.get(path).text
        assert "root (admin)" in page and 'href="/admin"' in page
        assert csrf_of(page) == token  # the log-out form carries this session's token
    login(client, "vic")  # a viewer sees no admin link
    page = client.get("/").text
    assert "vic (viewer)" in page and 'href="/admin"' not in page


def test_logout_ends_the_session(client):
    token = login(client, "vic")
    assert client.post("/logout", data={}).status_code == 403  # needs the CSRF token too
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/api/v1/me").status_code == 401


def test_rate_limit_locks_out_and_lifts_after_the_window(make_client):
    client = make_client(login_max_attempts=3, login_lockout_seconds=120)
    now = [1000.0]
    client.app.state.accounts.limiter.clock = lambda: now[0]
    good = {"username": "root", "password": PASSWORDS["root"]}
    bad = {"username": "root", "password": "guess guess"}
    for _ in range(2):
        assert client.post("/login", json=bad).status_code == 401
    r = client.post("/login", json=bad)
    assert r.status_code == 401 and "locked out for 120 s" in r.json()["error"]["message"]
    # Locked: even the right password is refused, with Retry-After.
    r = client.post("/login", json=good)
    assert r.status_code == 429 and error_code(r) == "too_many_attempts"
    assert r.headers["retry-after"] == "121"
    # The form shows the same.
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={**good, "csrf_token": token})
    assert r.status_code == 429 and "too many failed logins" in r.text
    # Another user from the same address is not locked.
    assert client.post("/login", json={"username": "vic", "password": PASSWORDS["vic"]}).is_success
    now[0] += 119
    assert client.post("/login", json=good).status_code == 429
    now[0] += 1.5
    assert client.post("/login", json=good).status_code == 200


# -- roles and CSRF on changes -----------------------------------------------------------------


def test_admin_page_needs_admin(client):
    r = client.get("/admin")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/admin"
    login(client, "vic")
    r = client.get("/admin")
    assert r.status_code == 403 and error_code(r) == "forbidden"
    login(client, "ann")
    assert client.get("/admin").status_code == 403


def test_viewer_and_user_cannot_create_tokens(client):
    for name in ("vic", "ann"):
        token = login(client, name)
        r = client.post("/admin/tokens", data={"name": "sneaky", "csrf_token": token})
        assert r.status_code == 403 and error_code(r) == "forbidden"
    client.cookies.clear()
    r = client.post("/admin/tokens", data={"name": "sneaky"})
    assert r.status_code == 401 and error_code(r) == "login_required"
    assert token_names(client) == []


def test_admin_creates_a_token_shown_once_and_revokes_it(client):
    token = login(client, "root")
    r = client.post("/admin/tokens", data={"name": "gpu07", "csrf_token": token})
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    shown = re.search(r'<code id="new-token">(gft_[^<]+)</code>', r.text).group(1)
    assert token_names(client) == ["gpu07"]
    # The token works for ingest...
    batch = make_batch().model_dump_json()
    headers = {"Authorization": f"Bearer {shown}", "Content-Type": "application/json"}
    assert client.post("/api/v1/ingest", content=batch, headers=headers).status_code == 200
    # ...and is never shown again.
    page = client.get("/admin")
    assert page.status_code == 200 and shown not in page.text and "gpu07" in page.text
    assert 'data-host="gpu01"' in page.text  # the host it reported for is listed
    # A second token of the same name is refused on the page.
    r = client.post("/admin/tokens", data={"name": "gpu07", "csrf_token": token})
    assert r.status_code == 409 and "already exists" in r.text
    r = client.post("/admin/tokens", data={"name": "bad name!", "csrf_token": token})
    assert r.status_code == 400 and "invalid token name" in r.text
    # Revoke.
    r = client.post("/admin/tokens/gpu07/revoke", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/admin?revoked=gpu07"
    assert "revoked token" in client.get(r.headers["location"]).text
    assert client.post("/api/v1/ingest", content=batch, headers=headers).status_code == 403
    r = client.post("/admin/tokens/nope/revoke", data={"csrf_token": token})
    assert r.status_code == 404


def test_csrf_missing_or_wrong_changes_nothing(client):
    token = login(client, "root")
    for data, headers in (
        ({"name": "t1"}, {}),
        ({"name": "t1", "csrf_token": "wrong"}, {}),
        ({"name": "t1", "csrf_token": token[:-1]}, {}),
        ({"name": "t1"}, {"X-CSRF-Token": "wrong"}),
    ):
        r = client.post("/admin/tokens", data=data, headers=headers)
        assert r.status_code == 403 and error_code(r) == "csrf_failed"
    assert token_names(client) == []
    # A token from another session does not do either.
    client.post("/admin/tokens", data={"name": "t0", "csrf_token": token})
    other = login(client, "root")
    r = client.post("/admin/tokens/t0/revoke", data={"csrf_token": token})
    assert r.status_code == 403
    assert client.app.state.ctx.store.tokens()[0].revoked_at is None
    # The header works for scripts on our pages.
    r = client.post("/admin/tokens/t0/revoke", headers={"X-CSRF-Token": other})
    assert r.status_code == 303


def test_role_change_and_deletion_take_effect_at_once(client):
    login(client, "ann")
    users = client.app.state.accounts.users
    assert client.get("/admin").status_code == 403
    users.update("ann", role="admin")
    assert client.get("/admin").status_code == 200
    users.update("ann", password_hash=users.get("vic").password_hash)  # password changed
    assert client.get("/api/v1/me").status_code == 401  # old sessions end
    login(client, "ann", PASSWORDS["vic"])
    users.delete("ann")
    assert client.get("/api/v1/me").status_code == 401


def test_forged_cookie_is_not_a_session(client):
    login(client, "vic")
    value = client.cookies["gpufleet_session"]
    client.cookies.clear()
    body, sig = value.split(".")
    client.cookies.set(
        "gpufleet_session", body.replace(body[5], "A" if body[5] != "A" else "B") + "." + sig
    )
    assert client.get("/api/v1/me").status_code == 401


# -- require_login -----------------------------------------------------------------------------


def test_require_login_off_leaves_reading_open(client):
    assert client.get("/api/v1/hosts").status_code == 200
    assert client.get("/").status_code == 200


def test_require_login_on(make_client, tmp_path):
    client = make_client(require_login=True)
    # Pages redirect to the login page, keeping where the user wanted to go.
    for path in ("/", "/hosts/gpu01?range=6h", "/admin"):
        r = client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=/"), r.headers["location"]
    assert client.get("/?free=1").headers["location"] == "/login?next=/%3Ffree%3D1"
    # The read API answers 401 in the one error shape.
    for path in ("/api/v1/hosts", "/api/v1/hosts/gpu01", "/api/v1/hosts/gpu01/series?metric=x"):
        r = client.get(path)
        assert r.status_code == 401 and error_code(r) == "login_required", path
    # Open: health, metrics, the login page, ingest (agent tokens) and the admin-key API.
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.post("/api/v1/ingest", content=b"{}").status_code == 401  # its own auth
    assert error_code(client.get("/api/v1/admin/tokens")) == "unauthorized"
    key = client.app.state.ctx.admin_key
    r = client.get("/api/v1/admin/tokens", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    # A viewer sees everything read-only.
    login(client, "vic")
    assert client.get("/api/v1/hosts").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/admin").status_code == 403


# -- users admin API (local admin key) ---------------------------------------------------------


def test_users_admin_api(client):
    key = {"Authorization": f"Bearer {client.app.state.ctx.admin_key}"}
    assert client.get("/api/v1/admin/users").status_code == 401
    r = client.post(
        "/api/v1/admin/users", json={"name": "zoe", "password": "zoe password", "role": "user"},
        headers=key,
    )  # fmt: skip
    assert r.status_code == 201 and r.json()["role"] == "user"
    assert "password" not in str(client.get("/api/v1/admin/users", headers=key).json())
    r = client.post(
        "/api/v1/admin/users", json={"name": "zoe", "password": "zoe password"}, headers=key
    )
    assert r.status_code == 409
    r = client.post("/api/v1/admin/users", json={"name": "x", "password": "short"}, headers=key)
    assert r.status_code == 422 and "at least 8" in r.json()["error"]["message"]
    r = client.post(
        "/api/v1/admin/users", json={"name": "y", "password": "long enough", "role": "god"},
        headers=key,
    )  # fmt: skip
    assert r.status_code == 422
    r = client.patch("/api/v1/admin/users/zoe", json={"role": "admin"}, headers=key)
    assert r.json()["role"] == "admin"
    assert client.post("/login", json={"username": "zoe", "password": "zoe password"}).is_success
    assert client.get("/admin").status_code == 200
    assert client.delete("/api/v1/admin/users/zoe", headers=key).status_code == 200
    assert client.delete("/api/v1/admin/users/zoe", headers=key).status_code == 404
    assert client.get("/admin").status_code == 303
