"""The user mapping end to end: the admin API (admin key; 401 without), validation errors that
name what is wrong, reports by person and group that follow it, the CLI on a local store
(set, list, import a CSV, delete), and bulk replace on both backends."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpufleet.config import load_settings
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.conftest import gpufleet_here
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
END = START + 24 * 3600
ENV = {"GPUFLEET_CONFIG": ""}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store = open_store(d / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=5, hosts=2))
    store.rollup(now=END + 3600, tz="UTC", busy_util_percent=5.0)
    store.close()
    return d


@pytest.fixture
def client(data_dir):
    settings = load_settings(None, overrides={"server": {"data_dir": data_dir}}, environ={})
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {c.app.state.ctx.admin_key}"
        yield c
        c.app.state.ctx.store.set_user_mappings([], replace=True)  # the next test starts empty


def report(client, by):
    r = client.get(f"/api/v1/reports?period=custom&by={by}&from=2024-03-04&to=2024-03-04")
    assert r.status_code == 200, r.text
    return {row["key"]: row["gpu_hours"] for row in r.json()["rows"]}


def test_api_sets_lists_and_deletes_and_reports_follow(client):
    users = report(client, "user")
    assert {"alice", "bob", "carol"} <= set(users)
    r = client.put("/api/v1/admin/usermap/alice", json={"person": "Alice A.", "group": "vision"})
    assert r.status_code == 200 and r.json() == {
        "user": "alice", "person": "Alice A.", "group": "vision", "email": None,
    }  # fmt: skip
    assert client.put("/api/v1/admin/usermap/bob", json={"group": "vision"}).status_code == 200
    listed = client.get("/api/v1/admin/usermap").json()["mappings"]
    assert [m["user"] for m in listed] == ["alice", "bob"]
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/admin/usermap?format=csv").text)))
    assert rows[1] == {"user": "bob", "person": "", "group": "vision", "email": ""}

    groups = report(client, "group")
    assert groups["vision"] == pytest.approx(users["alice"] + users["bob"])
    assert groups["carol"] == pytest.approx(users["carol"])  # unknown users stay themselves
    people = report(client, "person")
    assert people["Alice A."] == pytest.approx(users["alice"])
    assert people["bob"] == pytest.approx(users["bob"])  # no person: reported as themselves

    assert client.delete("/api/v1/admin/usermap/bob").json() == {"deleted": "bob"}
    r = client.delete("/api/v1/admin/usermap/bob")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_mapping"
    assert "vision" in report(client, "group") and "bob" in report(client, "group")


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/api/v1/admin/usermap/al%20ice", {"person": "A"}, "not a Unix user name"),
        ("/api/v1/admin/usermap/alice", {}, "give a person, a group or an e-mail address"),
        ("/api/v1/admin/usermap/alice", {"person": "  "}, "give a person, a group or an e-mail"),
        ("/api/v1/admin/usermap/alice", {"email": "alice"}, "email: 'alice' is not one e-mail"),
        ("/api/v1/admin/usermap/alice", {"email": "a@b.c, d@e.f"}, "is not one e-mail address"),
        ("/api/v1/admin/usermap/alice", {"group": "x" * 200}, "group: longer than 128"),
        ("/api/v1/admin/usermap/alice", {"person": "a\x00b"}, "person: contains a control"),
    ],
)
def test_api_rejects_bad_mappings_saying_what_is_wrong(client, path, body, words):
    r = client.put(path, json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]["message"]


def test_api_import_checks_everything_first_and_can_replace(client):
    assert client.put("/api/v1/admin/usermap/carol", json={"group": "nlp"}).status_code == 200
    bad = {"mappings": [{"user": "alice", "group": "g"}, {"user": "bad user", "group": "g"}]}
    r = client.post("/api/v1/admin/usermap/import", json=bad)
    assert r.status_code == 422 and "mappings[1]: user" in r.json()["error"]["message"]
    assert [m["user"] for m in client.get("/api/v1/admin/usermap").json()["mappings"]] == [
        "carol"
    ]  # nothing of the bad import was stored
    good = {"mappings": [{"user": "alice", "group": "g"}, {"user": "bob", "person": "B"}]}
    r = client.post("/api/v1/admin/usermap/import", json={**good, "replace": True})
    assert r.json() == {"set": 2, "deleted": 1}
    listed = client.get("/api/v1/admin/usermap").json()["mappings"]
    assert [(m["user"], m["person"], m["group"]) for m in listed] == [
        ("alice", None, "g"), ("bob", "B", None),
    ]  # fmt: skip
    good = {"mappings": [{"user": "erin", "email": " erin@lab.example "}]}
    assert client.post("/api/v1/admin/usermap/import", json=good).json()["set"] == 1
    listed = client.get("/api/v1/admin/usermap").json()["mappings"]
    assert listed[-1] == {
        "user": "erin",
        "person": None,
        "group": None,
        "email": "erin@lab.example",
    }


def test_api_needs_an_admin(client):
    key = client.headers.pop("Authorization")
    r = client.get("/api/v1/admin/usermap", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.put("/api/v1/admin/usermap/alice", json={"group": "g"})
    assert r.status_code in (401, 403)
    client.headers["Authorization"] = key


def test_cli_on_the_local_store(data_dir, tmp_path):
    d = ["--data-dir", str(data_dir)]
    r = gpufleet_here(
        "usermap", "set", "alice", "--person", "Alice A.", "--group", "vision", *d, env=ENV
    )
    assert r.returncode == 0, r.stderr
    r = gpufleet_here("usermap", "set", "bad user", "--group", "x", *d, env=ENV)
    assert r.returncode != 0 and "not a Unix user name" in r.stderr
    f = tmp_path / "map.csv"
    f.write_text("user,person,group\nbob,Bob B.,vision\n\ncarol,,nlp\n")
    r = gpufleet_here("usermap", "import", str(f), *d, env=ENV)
    assert r.returncode == 0 and "set 2 mapping(s)" in r.stdout, r.stderr
    f.write_text("user,person,group\ndave,D,\ndave,E,\n")
    r = gpufleet_here("usermap", "import", str(f), *d, env=ENV)
    assert r.returncode != 0 and "line 3: user 'dave' is already on line 2" in r.stderr
    f.write_text("login,team\nx,y\n")
    r = gpufleet_here("usermap", "import", str(f), *d, env=ENV)
    assert r.returncode != 0 and "must name the columns user,person,group,email" in r.stderr
    f.write_text("user,group,email\nerin,nlp,erin@lab\n")
    r = gpufleet_here("usermap", "import", str(f), *d, env=ENV)
    assert r.returncode != 0 and "line 2: email: 'erin@lab' is not one e-mail" in r.stderr
    r = gpufleet_here("usermap", "set", "bob", "--person", "Bob B.", "--group", "vision",
                      "--email", "bob@lab.example", *d, env=ENV)  # fmt: skip
    assert r.returncode == 0 and "e-mail bob@lab.example" in r.stdout, r.stderr
    r = gpufleet_here("usermap", "list", "--format", "json", *d, env=ENV)
    assert [m["user"] for m in json.loads(r.stdout)["mappings"]] == ["alice", "bob", "carol"]
    r = gpufleet_here("usermap", "list", "--format", "csv", *d, env=ENV)
    assert r.stdout.splitlines()[:3] == [
        "user,person,group,email", "alice,Alice A.,vision,", "bob,Bob B.,vision,bob@lab.example",
    ]  # fmt: skip
    r = gpufleet_here("report", "--period", "custom", "--by", "group", "--from", "2024-03-04",
                 "--to", "2024-03-04", "--format", "json", *d, env=ENV)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert {"vision", "nlp"} <= {row["key"] for row in json.loads(r.stdout)["rows"]}
    r = gpufleet_here("usermap", "delete", "carol", *d, env=ENV)
    assert r.returncode == 0, r.stderr
    r = gpufleet_here("usermap", "delete", "carol", *d, env=ENV)
    assert r.returncode != 0 and "no mapping for the user 'carol'" in r.stderr
    f.write_text("user,group\nalice,vision\n")
    r = gpufleet_here("usermap", "import", "--replace", str(f), *d, env=ENV)
    assert r.returncode == 0 and "deleted 1" in r.stdout, r.stderr


@pytest.fixture(params=["duckdb", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "s.duckdb")
    return request.getfixturevalue("postgres_url")


def test_store_mapping_on_both_backends(store_url):
    store = open_store(store_url)
    try:
        store.set_user_mapping("alice", "A", None)
        rows = [("bob", None, "g", None), ("carol", "C", "g", "c@lab.example")]
        assert store.set_user_mappings(rows) == (2, 0)
        assert store.user_mapping() == [
            ("alice", "A", None, None),
            ("bob", None, "g", None),
            ("carol", "C", "g", "c@lab.example"),
        ]
        store.set_user_mapping("dave", None, None, "d@lab.example")  # an address alone is kept
        assert store.set_user_mappings([("bob", "B", None, None)], replace=True) == (1, 3)
        assert store.user_mapping() == [("bob", "B", None, None)]
        store.set_user_mapping("bob", None, None)
        assert store.user_mapping() == []
    finally:
        store.close()
