"""``/openapi.json`` describes what the server does: schemathesis, every conformance check on,
against a real server on loopback (a logged-in admin, the admin key and an agent token, so
that the operations are reached past their authentication).

Bounded (a few examples per operation) so that the suite stays fast; ``GPUFLEET_ST_EXAMPLES``
raises it for a longer hunt."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProc, create_token, free_port, make_batch, make_sample
from tests.conftest import gpufleet as run_cli

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("GPUFLEET_ST_EXAMPLES", "8"))
PASSWORD = "conformance pw 1"


class Live:
    """The server under test and the credentials of its admin (key, session, CSRF token)."""

    def __init__(self, srv: ServerProc, admin_key: str, cookie: str, csrf: str) -> None:
        self.srv, self.admin_key, self.cookie, self.csrf = srv, admin_key, cookie, csrf


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    data = tmp_path_factory.mktemp("st") / "data"
    data.mkdir()
    token = create_token(data, "st-agent")
    r = run_cli("user", "create", "root", "--role", "admin", "--password-stdin",
                "--data-dir", str(data), input=PASSWORD + "\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = data.parent / "gpufleet.yaml"  # the job queue on, so that its API is checked too
    config.write_text("queue:\n  dispatcher: replay\n")
    srv = ServerProc(data, free_port(), token, extra_args=("--config", str(config)))
    srv.start()
    try:
        assert srv.post(make_batch(make_sample("gpu01"), make_sample("gpu02"))).status_code == 200
        login = httpx.post(srv.url + "/login", json={"username": "root", "password": PASSWORD})
        assert login.status_code == 200, login.text
        cookie = "; ".join(f"{k}={v}" for k, v in login.cookies.items())
        key = Path(data, "admin.key").read_text().strip()
        yield Live(srv, key, cookie, login.json()["csrf_token"])
    finally:
        srv.stop()


# Handlers that check a body against what the schema cannot say (cross-field rules, the live
# fleet, names already taken): a schema-valid request may be refused there with the status
# named, and only there. Every other check keeps its defaults.
SEMANTIC = {
    "/api/v1/hosts/{name}/series": ["400"],  # since/until: Unix seconds, ISO 8601 or -1h
    "/api/v1/reports": ["400"],  # from after to, over 20 years, unknown keys or fields
    "/api/v1/recommendations": ["422"],  # a request that can never fit this fleet
    "/api/v1/silences": ["422"],  # matcher patterns that do not compile
    "/api/v1/rules/{name}": ["422"],  # a rule's expression, checked by the rule parser
    "/api/v1/admin/usermap/{user}": ["422"],  # a person, a group or both
    "/api/v1/admin/usermap/import": ["422"],  # a user listed twice; a person or a group each
    "/api/v1/reports/subscriptions": ["422"],  # e-mail addresses, report periods
    "/api/v1/ingest": ["422"],  # a process on a GPU its sample lists; timestamps in order
    "/api/v1/jobs": ["422"],  # a job spec (YAML or JSON text, or a Kubernetes Job): parse_job
}
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

CONFIG = """
[generation]
max-examples = {examples}
[phases.stateful]
enabled = false
[checks]
enabled = true
[auth.openapi.adminKey]
bearer = "${{ST_ADMIN_KEY}}"
[auth.openapi.agentToken]
bearer = "${{ST_AGENT_TOKEN}}"
[auth.openapi.session]
api_key = "${{ST_SESSION}}"
[auth.openapi.csrfToken]
api_key = "${{ST_CSRF}}"
"""

OPERATION = """
[[operations]]
include-path = "{path}"
checks.positive_data_acceptance.expected-statuses = {statuses}
"""


def test_server_conforms_to_its_openapi(live: Live, tmp_path) -> None:
    import json
    import subprocess
    import sys

    config = CONFIG.format(examples=EXAMPLES) + "".join(
        OPERATION.format(path=path, statuses=json.dumps(ACCEPTED + extra))
        for path, extra in SEMANTIC.items()
    )
    (tmp_path / "schemathesis.toml").write_text(config)
    env = {
        **os.environ, "ST_ADMIN_KEY": live.admin_key, "ST_AGENT_TOKEN": live.srv.token,
        "ST_SESSION": live.cookie.split("=", 1)[1], "ST_CSRF": live.csrf, "NO_COLOR": "1",
    }  # fmt: skip
    st = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
    r = subprocess.run(
        [*st, "--config-file", str(tmp_path / "schemathesis.toml"), "run",
         live.srv.url + "/openapi.json", "--workers", "1", "--seed", "18"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-4000:]
    assert "generated" in r.stdout  # it ran cases, not just loaded the schema
