"""Alerts in a real server process: agents' pushes raise them, a webhook receiver gets the
messages, a restart while firing sends no second page and still sends the resolve; the API
answers 422 naming the field and keeps what was stored."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml

from gpufleet.alerts.persist import AlertDB
from gpufleet.http.auth import ensure_admin_key
from tests.alerts.receivers import HookReceiver, wait_for
from tests.conftest import gpufleet_here, make_batch, make_sample
from tests.reports.test_mail import smtp  # noqa: F401  (the real SMTP server fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def hook():
    r = HookReceiver()
    yield r
    r.close()


def _config(tmp_path, hook_port: int):
    cfg = {
        "alerts": {
            "evaluate_interval_seconds": 0.3,
            "group_wait_seconds": 0,
            "group_interval_seconds": 0,
            "resolve_hold_seconds": 0,
            "builtin": {"gpu_too_hot": {"for_seconds": 0, "threshold": 85}},
            "channels": [{"name": "hook", "url": f"json://bot:pa55word@127.0.0.1:{hook_port}/x",
                          "severities": ["critical", "warning"]}],
        }
    }  # fmt: skip
    path = tmp_path / "gpufleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _post(srv, hot: bool) -> None:
    s = make_sample("dgx-01", ts=time.time())
    gpus = [g.model_copy(update={"temperature_celsius": 93.0 if hot and g.index < 2 else 50.0})
            for g in s.gpus]  # fmt: skip
    r = srv.post(make_batch(s.model_copy(update={"gpus": gpus})))
    assert r.status_code == 200, r.text


def _hot_messages(hook):
    return [p for p in hook.posts if "gpu_too_hot" in p["body"].get("title", "")
            or "gpu_too_hot" in p["body"].get("message", "")]  # fmt: skip


def test_restart_while_firing_no_second_page_and_resolve_still_sent(tmp_path, hook, server_factory):
    cfg = _config(tmp_path, hook.port)
    srv = server_factory("--config", str(cfg))

    def fired():
        _post(srv, hot=True)
        return _hot_messages(hook)

    first = wait_for(fired, what="the firing message")
    assert len(first) == 1 and "2 firing" in first[0]["body"]["title"], first
    stats = httpx.get(srv.url + "/api/v1/alerts/stats").json()
    assert stats["samples_observed"] >= 1 and stats["busy_seconds"] > 0, stats
    assert stats["rules"] == 15 and stats["rule_evaluations"] > 0, stats
    view = httpx.get(srv.url + "/api/v1/alerts").json()
    hot = [a for a in view["alerts"] if a["rule"] == "gpu_too_hot"]
    assert {a["labels"]["gpu"] for a in hot} == {"0", "1"} and all(
        a["state"] == "firing" for a in hot
    )
    srv.stop()
    srv.start()
    deadline = time.monotonic() + 4  # several evaluation rounds after the restart, still hot
    while time.monotonic() < deadline:
        _post(srv, hot=True)
        time.sleep(0.2)
    assert len(_hot_messages(hook)) == 1, "no second page after the restart"

    def resolved():
        _post(srv, hot=False)
        return [p for p in _hot_messages(hook) if "RESOLVED" in p["body"]["message"]]

    wait_for(resolved, what="the resolved message")
    history = httpx.get(srv.url + "/api/v1/alerts/history", params={"rule": "gpu_too_hot"})
    events = [e["event"] for e in history.json()["events"]]
    assert events.count("firing") == 2 and events.count("resolved") == 2  # two GPUs
    everything = (httpx.get(srv.url + "/api/v1/alerts").text + httpx.get(srv.url + "/alerts").text
                  + (srv.data_dir / "server.log").read_text())  # fmt: skip
    assert "pa55word" not in everything, "a channel's secret is never shown"


def test_rules_and_silences_api_422_names_the_field_and_keeps_what_was_stored(
    tmp_path, hook, server_factory
):
    srv = server_factory("--config", str(_config(tmp_path, hook.port)))
    admin = {"Authorization": f"Bearer {ensure_admin_key(srv.data_dir)}"}
    url = srv.url + "/api/v1"
    r = httpx.put(url + "/rules/gpu_too_hot", json={"threshold": 80}, headers=admin)
    assert r.status_code == 200, r.text
    r = httpx.put(url + "/rules/gpu_too_hot", json={"threshold": "warm"}, headers=admin)
    assert r.status_code == 422
    err = r.json()["error"]
    assert "threshold" in err["message"] and err["details"][0]["loc"] == "body.threshold"
    r = httpx.put(url + "/rules/gpu_too_hot", json={"metric": "xid_events"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "body.metric"
    r = httpx.put(url + "/rules/my_rule", json={"scope": "gpu", "metric": "nope"}, headers=admin)
    assert r.status_code == 422 and "metric" in r.json()["error"]["message"]
    rules = {x["name"]: x for x in httpx.get(url + "/rules").json()["rules"]}
    assert rules["gpu_too_hot"]["threshold"] == 80 and rules["gpu_too_hot"]["edited"]
    assert rules["gpu_too_hot"]["for_seconds"] == 0, "the config's change is kept under the edit"
    assert "my_rule" not in rules
    r = httpx.put(url + "/rules/gpu_too_hot", json={"threshold": 70})  # no credential
    assert r.status_code in (401, 403)

    bad = httpx.post(
        url + "/silences",
        headers=admin,
        json={"matchers": {"Host!": "x"}, "reason": "r", "duration_seconds": 60},
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == "body.matchers"
    bad = httpx.post(url + "/silences", headers=admin,
                     json={"matchers": {"host": "dgx-01"}, "reason": "r"})  # fmt: skip
    assert bad.status_code == 422 and "duration_seconds" in bad.json()["error"]["message"]
    ok = httpx.post(url + "/silences", headers=admin,
                    json={"matchers": {"host": "dgx-*"}, "reason": "maintenance",
                          "duration_seconds": 3600})  # fmt: skip
    assert ok.status_code == 200, ok.text
    sid = ok.json()["id"]
    listed = httpx.get(url + "/silences").json()["silences"]
    assert [s["id"] for s in listed] == [sid] and listed[0]["created_by"] == "admin (CLI)"
    # the silence holds the page back while the alert shows
    wait_for(lambda: (_post(srv, hot=True), [a for a in httpx.get(url + "/alerts").json()
             ["alerts"] if a["muted"] == "silenced"])[1], what="a silenced alert")  # fmt: skip
    assert _hot_messages(hook) == []
    assert httpx.delete(url + f"/silences/{sid}", headers=admin).status_code == 200
    assert httpx.get(url + "/silences").json()["silences"] == []
    wait_for(lambda: (_post(srv, hot=True), _hot_messages(hook))[1], what="told once expired")

    # the CLI, through the running server (the data dir's admin key)
    d = str(srv.data_dir)
    r = gpufleet_here("silence", "add", "host=dgx-0*", "rule=gpu_too_hot", "--for", "2h",
                 "--reason", "fan swap", "--data-dir", d)  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("silence "), r.stderr
    sid = r.stdout.split()[1]
    r = gpufleet_here("silence", "list", "--data-dir", d)
    assert sid in r.stdout and "fan swap" in r.stdout
    r = gpufleet_here("alerts", "--json", "--data-dir", d)
    got = json.loads(r.stdout)
    assert {a["muted"] for a in got["alerts"] if a["rule"] == "gpu_too_hot"} == {"silenced"}
    r = gpufleet_here("silence", "add", "host", "--for", "2h", "--reason", "x", "--data-dir", d)
    assert r.returncode != 0 and "LABEL=PATTERN" in r.stderr
    r = gpufleet_here("silence", "add", "Host=x", "--for", "2h", "--reason", "x", "--data-dir", d)
    assert r.returncode != 0 and "error:" in r.stderr and "matchers" in r.stderr
    assert gpufleet_here("silence", "expire", sid, "--data-dir", d).returncode == 0
    assert "no silences" in gpufleet_here("silence", "list", "--data-dir", d).stdout


def test_held_idle_notice_goes_to_the_users_mapped_address(tmp_path, server_factory, smtp):  # noqa: F811
    """No user_notice_url: the notice to the Unix user holding an idle GPU goes by e-mail to the
    address an admin put in the user mapping, through the reports' SMTP settings."""
    cfg = {
        "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "starttls": False,
                 "from_address": "gpufleet@lab.example"},
        "alerts": {"evaluate_interval_seconds": 0.3, "group_wait_seconds": 0,
                   "group_interval_seconds": 0,
                   "builtin": {"gpu_held_idle": {"for_seconds": 0}}},
    }  # fmt: skip
    path = tmp_path / "gpufleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    srv = server_factory("--config", str(path))
    admin = {"Authorization": f"Bearer {ensure_admin_key(srv.data_dir)}"}
    r = httpx.put(srv.url + "/api/v1/admin/usermap/user0", headers=admin,
                  json={"person": "Zhang San", "email": "zhang.san@lab.example"})  # fmt: skip
    assert r.status_code == 200, r.text
    # make_sample: GPU 0 at 0% utilisation, 1 GiB held by user0's process (user1 and user2 hold
    # busy GPUs; they are not told, and have no address anyway)

    def mailed():
        r = srv.post(make_batch(make_sample("dgx-07", ts=time.time())))
        assert r.status_code == 200, r.text
        return [m for m in smtp.messages if "gpu_held_idle" in str(m[1]["Subject"])]

    got = wait_for(mailed, what="the e-mailed notice")
    rcpts, msg = got[0]
    assert rcpts == ["zhang.san@lab.example"] and msg["From"] == "gpufleet@lab.example"
    body = msg.get_body().get_content()
    assert "user0 holds GPU 0 on dgx-07" in body, body
    db = AlertDB(srv.data_dir / "alerts.sqlite3")  # the server's record of what it sent
    sent = wait_for(lambda: [m for m in db.messages() if m["channel"] == "user:user0"],
                    what="the notice in the message log")  # fmt: skip
    assert sent[0]["ok"], sent
    assert all(rcpts == ["zhang.san@lab.example"] for rcpts, _ in smtp.messages)
