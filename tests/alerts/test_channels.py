"""Messages through Apprise for real: a webhook receiver and an SMTP server on loopback;
routing by severity and labels; held-but-idle notices to the user; secrets never shown."""

from __future__ import annotations

import logging

import pytest

from gpufleet.alerts.engine import Alert
from gpufleet.alerts.notify import Message
from gpufleet.alerts.persist import AlertDB
from gpufleet.alerts.service import AlertService
from gpufleet.config import load_settings
from tests.alerts.receivers import HookReceiver
from tests.reports.test_mail import Inbox, smtp  # noqa: F401  (the real SMTP server fixture)


@pytest.fixture
def hook():
    r = HookReceiver()
    yield r
    r.close()


def _alert(rule: str, severity: str, **labels: str) -> Alert:
    labels = {"rule": rule, **labels}
    return Alert("fp-" + rule + labels.get("host", ""), rule, labels, severity, "firing",
                 1.8e9, 91.0, f"{rule} on {labels.get('host')}", "do this",
                 notify_user=rule == "gpu_held_idle")  # fmt: skip


def _service(tmp_path, alerts_cfg, environ=None):
    settings = load_settings(None, overrides={"alerts": alerts_cfg, "server": {"data_dir": tmp_path}},
                             environ=environ or {})  # fmt: skip
    return AlertService(settings, AlertDB(tmp_path / "alerts.sqlite3"))


def test_routing_by_severity_and_labels_to_webhook_and_smtp(tmp_path, hook, smtp, monkeypatch):  # noqa: F811
    secret = "s3cr3t-token"
    monkeypatch.setenv("OPS_HOOK", f"json://bot:{secret}@127.0.0.1:{hook.port}/ops")
    svc = _service(tmp_path, {
        "channels": [
            {"name": "ops-hook", "url_env": "OPS_HOOK", "severities": ["critical"]},
            {"name": "vision-mail", "severities": ["critical", "warning"],
             "match": {"group": "vision*"},
             "url": f"mailto://127.0.0.1:{smtp.port}?from=gpufleet@lab.example"
                    "&to=vision-admins@lab.example&mode=insecure"},
        ],
        "user_notice_url": f"mailto://127.0.0.1:{smtp.port}?from=gpufleet@lab.example"
                           "&to={user}@lab.example&mode=insecure",
    })  # fmt: skip
    assert [c.name for c in svc.channels] == ["ops-hook", "vision-mail"]
    crit = Message({"rule": "gpu_lost", "host": "v-01"},
                   [_alert("gpu_lost", "critical", host="v-01", group="vision")], [],
                   "critical", 1.8e9)  # fmt: skip
    warn = Message({"rule": "gpu_too_hot", "host": "n-01"},
                   [_alert("gpu_too_hot", "warning", host="n-01", group="nlp")], [],
                   "warning", 1.8e9)  # fmt: skip
    idle = Message({"rule": "gpu_held_idle", "user": "alice"},
                   [_alert("gpu_held_idle", "info", host="n-02", user="alice")], [],
                   "info", 1.8e9)  # fmt: skip
    svc.deliver([crit, warn, idle])
    assert [p["path"] for p in hook.posts] == ["/ops"], "only the critical one goes to ops"
    body = hook.posts[0]["body"]
    assert "gpu_lost" in body["title"] and "do this" in body["message"]
    assert hook.posts[0]["auth"] is not None  # the secret went where it belongs
    rcpts = sorted(r for rcpt, _ in smtp.messages for r in rcpt)
    assert rcpts == ["alice@lab.example", "vision-admins@lab.example"]
    sent = svc.db.messages()
    assert {m["channel"] for m in sent} == {"ops-hook", "vision-mail", "user:alice"}
    assert all(m["ok"] for m in sent)
    public = str([c.public() for c in svc.channels]) + str(sent)
    assert secret not in public and "127.0.0.1" not in public


def test_failing_channel_is_logged_without_its_secret(tmp_path, hook, caplog):
    svc = _service(tmp_path, {"channels": [
        {"name": "dead", "url": "json://bot:hunter2@127.0.0.1:9/x", "severities": ["critical"]},
        {"name": "live", "url": f"json://127.0.0.1:{hook.port}/live", "severities": ["critical"]},
    ]})  # fmt: skip
    msg = Message({"rule": "host_down"}, [_alert("host_down", "critical", host="a")], [],
                  "critical", 1.8e9)  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        svc.deliver([msg])
    assert [p["path"] for p in hook.posts] == ["/live"], "one dead channel does not stop others"
    dead = [m for m in svc.db.messages() if m["channel"] == "dead"]
    assert dead and not dead[0]["ok"] and dead[0]["error"]
    assert "hunter2" not in caplog.text and "hunter2" not in str(svc.db.messages())


def test_bad_channel_is_reported_not_fatal(tmp_path):
    svc = _service(tmp_path, {"channels": [
        {"name": "typo", "url": "slakc://nope", "severities": ["critical"]},
        {"name": "unset", "url_env": "NOT_SET_ANYWHERE"},
    ]})  # fmt: skip
    assert svc.channels == []
    assert any("'typo': url: Apprise does not know" in e for e in svc.channel_errors)
    assert any("'unset': url_env: $NOT_SET_ANYWHERE is not set" in e for e in svc.channel_errors)


def test_user_notice_url_with_email_uses_the_mapped_address(tmp_path, smtp):  # noqa: F811
    svc = _service(tmp_path, {
        "user_notice_url": f"mailto://127.0.0.1:{smtp.port}?from=gpufleet@lab.example"
                           "&to={email}&mode=insecure",
    })  # fmt: skip
    svc.user_addresses = lambda: {"alice": "a.wang+gpu@lab.example"}
    idle = Message({"rule": "gpu_held_idle"},
                   [_alert("gpu_held_idle", "info", host="n-02", user="alice"),
                    _alert("gpu_held_idle", "info", host="n-03", user="bob")], [],
                   "info", 1.8e9)  # fmt: skip
    svc.deliver([idle])
    assert [rcpt for rcpt, _ in smtp.messages] == [["a.wang+gpu@lab.example"]]
    assert {m["channel"] for m in svc.db.messages()} == {"user:alice"}  # bob has no address


def test_without_a_url_the_mapped_address_gets_an_email_and_a_failure_is_logged(tmp_path):
    svc = _service(tmp_path, {})
    sent = []
    svc.user_addresses = lambda: {"alice": "alice@lab.example", "bob": "bob@lab.example"}

    def mailer(mail):
        if mail["To"] == "bob@lab.example":
            raise ConnectionRefusedError("smtp down")
        sent.append(mail)

    svc.mailer = mailer
    idle = Message({"rule": "gpu_held_idle"},
                   [_alert("gpu_held_idle", "info", host="n-02", user="alice,bob"),
                    _alert("gpu_held_idle", "info", host="n-03", user="carol")], [],
                   "info", 1.8e9)  # fmt: skip
    svc.deliver([idle])
    assert [(m["To"], m["From"]) for m in sent] == [("alice@lab.example", "gpufleet@localhost")]
    assert "gpu_held_idle" in sent[0]["Subject"]
    log = {m["channel"]: m for m in svc.db.messages()}
    assert set(log) == {"user:alice", "user:bob"}  # carol: no address, not told
    assert log["user:alice"]["ok"] and not log["user:bob"]["ok"]
    assert "smtp down" in log["user:bob"]["error"]
