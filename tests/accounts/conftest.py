"""An in-process app on a real DuckDB file, with users of each role."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gpufleet.accounts.users import new_user
from gpufleet.config import load_settings
from gpufleet.server.app import create_app
from gpufleet.store import Store, open_store

PASSWORDS = {"root": "admin password", "ann": "user password", "vic": "viewer password"}
ROLES = {"root": "admin", "ann": "user", "vic": "viewer"}


@pytest.fixture
def make_client(tmp_path) -> Iterator:
    stores: list[Store] = []
    clients: list[TestClient] = []

    def make(**web) -> TestClient:
        data = tmp_path / f"data{len(stores)}"
        settings = load_settings(overrides={"server": {"data_dir": data}, "web": web}, environ={})
        store = open_store(settings.database_url)
        for name, role in ROLES.items():
            store.create_user(new_user(name, PASSWORDS[name], role))
        stores.append(store)
        client = TestClient(create_app(settings, store=store), follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
    for s in stores:
        s.close()


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def login(client: TestClient, name: str, password: str | None = None) -> str:
    """Log in through the form, as a browser does; returns the new session's CSRF token."""
    client.cookies.clear()
    token = csrf_of(client.get("/login").text)
    r = client.post(
        "/login",
        data={"username": name, "password": password or PASSWORDS[name], "csrf_token": token},
    )
    assert r.status_code == 303, r.text
    me = client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    assert me.json()["user"]["name"] == name
    return me.json()["csrf_token"]
