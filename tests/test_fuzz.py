"""Fuzz the API from its own OpenAPI schema (schemathesis) against a real server process:
no request may cause a 5xx, and nothing from a rejected request may be stored."""

from __future__ import annotations

import duckdb
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import ServerProc, create_token, free_port

pytestmark = pytest.mark.slow

OUTCOMES = {"stored": 0, "rejected": 0, "other": 0}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    srv = ServerProc(data, free_port(), create_token(data, "fuzzer"))
    srv.start()
    yield srv
    srv.stop()
    # Every batch in the store was acknowledged as stored; rejected requests left nothing.
    con = duckdb.connect(str(srv.db_path), read_only=True)
    try:
        stored = con.execute("SELECT count(*) FROM batches").fetchone()[0]
    finally:
        con.close()
    assert stored == OUTCOMES["stored"], (stored, OUTCOMES)
    print("fuzz outcomes:", OUTCOMES)


def _spec() -> dict:
    """The server's own OpenAPI document (building the app needs no store or network)."""
    from gpufleet.config import load_settings
    from gpufleet.server.app import create_app

    return create_app(load_settings(None, environ={})).openapi()


schema = schemathesis.openapi.from_dict(_spec())


@schema.parametrize()
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_with_5xx(case, fuzz_server):
    auth = {"Authorization": f"Bearer {fuzz_server.token}"}
    if "admin" in case.path:
        key = (fuzz_server.data_dir / "admin.key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
    response = case.call(base_url=fuzz_server.url, headers=auth, timeout=30)
    assert response.status_code < 500, (case.path, response.status_code, response.text[:500])
    if case.path == "/api/v1/ingest":
        if response.status_code == 200:
            OUTCOMES["stored" if response.json()["status"] == "stored" else "other"] += 1
        else:
            OUTCOMES["rejected"] += 1
        body = response.json()
        if response.status_code >= 400:
            assert set(body["error"]) == {"status", "code", "message", "details"}
