"""``gpufleet user ...`` as a user runs it: against the store file, and against a running server."""

from __future__ import annotations

import httpx
import pytest

from gpufleet.accounts.passwords import verify_password
from gpufleet.store import open_store
from tests.conftest import gpufleet_here


def user(data_dir, *args, stdin: str | None = None):
    return gpufleet_here("user", *args, "--data-dir", str(data_dir), input=stdin)


def test_user_commands_on_the_store_file(tmp_path):
    data = tmp_path / "data"
    r = user(data, "create", "root", "--role", "admin", "--password-stdin", stdin="s3cret pw!\n")
    assert r.returncode == 0, r.stderr
    assert "created admin 'root'" in r.stderr
    r = user(data, "create", "vic", "--password-stdin", stdin="viewer pw 1\n")
    assert r.returncode == 0, r.stderr
    store = open_store(data / "gpufleet.duckdb")
    try:
        users = {u.name: u for u in store.users()}
    finally:
        store.close()
    assert users["root"].role == "admin" and users["vic"].role == "viewer"
    assert verify_password("s3cret pw!", users["root"].password_hash)
    assert "s3cret" not in users["root"].password_hash

    r = user(data, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert "password" not in r.stdout and '"role": "admin"' in r.stdout

    assert user(data, "set-role", "vic", "user").returncode == 0
    r = user(data, "list")
    assert "vic" in r.stdout and "user" in r.stdout

    # Errors: error + hint, non-zero exit, nothing changed.
    r = user(data, "create", "root", "--password-stdin", stdin="another pw 1\n")
    assert r.returncode != 0
    assert "error: a user named 'root' already exists" in r.stderr and "hint:" in r.stderr
    r = user(data, "create", "x", "--password-stdin", stdin="short\n")
    assert r.returncode != 0 and "at least 8 characters" in r.stderr
    r = user(data, "create", "bad name", "--password-stdin", stdin="long enough\n")
    assert r.returncode != 0 and "invalid user name" in r.stderr
    r = user(data, "set-role", "nobody", "admin")
    assert r.returncode != 0 and "no user named 'nobody'" in r.stderr
    r = user(data, "set-role", "vic", "god")
    assert r.returncode != 0 and "god" in r.stderr

    assert user(data, "delete", "vic").returncode == 0
    assert '"vic"' not in user(data, "list", "--json").stdout
    assert user(data, "delete", "vic").returncode != 0


def test_user_create_prompts_twice(tmp_path):
    data = tmp_path / "data"
    r = user(data, "create", "ann", stdin="first pw 1\nsecond pw 2\nfirst pw 1\nfirst pw 1\n")
    assert r.returncode == 0, r.stderr
    assert "match" in (r.stdout + r.stderr)  # the mismatch was reported, then asked again


@pytest.mark.slow
def test_user_commands_through_the_running_server(server):
    data = server.data_dir
    r = user(data, "create", "root", "--role", "admin", "--password-stdin", stdin="s3cret pw!\n")
    assert r.returncode == 0, r.stderr
    # The running server knows the user at once (it made it), so the login works.
    r = httpx.post(server.url + "/login", json={"username": "root", "password": "s3cret pw!"})
    assert r.status_code == 200, r.text
    assert '"root"' in user(data, "list", "--json").stdout
    assert user(data, "set-role", "root", "viewer").returncode == 0
    cookies = r.cookies
    assert httpx.get(server.url + "/admin", cookies=cookies).status_code == 403
    r = user(data, "set-password", "root", "--password-stdin", stdin="new password 2\n")
    assert r.returncode == 0, r.stderr
    assert httpx.get(server.url + "/api/v1/me", cookies=cookies).status_code == 401
    assert user(data, "delete", "root").returncode == 0
    r = user(data, "delete", "root")
    assert r.returncode != 0 and "no user named 'root'" in r.stderr
