"""Slack, DingTalk, Feishu/Lark, WeCom and a generic webhook, sent by Apprise's own plugins
(gpufleet writes no sender) to a real HTTP receiver on loopback.

Apprise posts these services to their fixed public addresses; the one change here is that
address (the plugin's URL constant, pointed at the receiver), so the payload each plugin builds
from our message, and its delivery over HTTP, are the real ones. The channel URL's secret (a
token or key) reaches the receiver only where the service expects it (in the path or query),
and never the alerts page, the API or the log."""

from __future__ import annotations

import logging

import pytest

from gpufleet.alerts.channels import channels_from, send
from gpufleet.config import AlertChannelSection
from tests.alerts.receivers import HookReceiver, wait_for

TITLE = "[FIRING:2] gpu_too_hot dgx-01"
BODY = "dgx-01 GPU 0 at 93 C\ndgx-01 GPU 1 at 93 C"


@pytest.fixture
def hook():
    r = HookReceiver()
    yield r
    r.close()


def _point(monkeypatch, module: str, cls: str, attr: str, url: str) -> None:
    import importlib

    plugin = getattr(importlib.import_module(f"apprise.plugins.{module}"), cls)
    monkeypatch.setattr(plugin, attr, url)


def test_slack_webhook_payload(hook, monkeypatch):
    _point(monkeypatch, "slack", "NotifySlack", "webhook_url", f"http://127.0.0.1:{hook.port}/slack")
    send("slack://T0AAA/B0BBB/s3cretSlackToken0000000", TITLE, BODY)
    post = wait_for(lambda: hook.posts, what="the Slack post")[0]
    assert post["path"] == "/slack/T0AAA/B0BBB/s3cretSlackToken0000000"
    blocks = post["body"]["attachments"][0]
    text = str(blocks)
    assert "gpu_too_hot" in text and "dgx-01 GPU 1 at 93 C" in text


def test_dingtalk_payload(hook, monkeypatch):
    _point(monkeypatch, "dingtalk", "NotifyDingTalk", "notify_url",
           f"http://127.0.0.1:{hook.port}/robot/send?access_token={{token}}")  # fmt: skip
    send("dingtalk://d1ngs3cret/", TITLE, BODY)
    post = wait_for(lambda: hook.posts, what="the DingTalk post")[0]
    assert post["path"] == "/robot/send?access_token=d1ngs3cret"
    body = post["body"]
    assert body["msgtype"] in ("text", "markdown")
    content = body["text"]["content"] if body["msgtype"] == "text" else body["markdown"]["text"]
    assert TITLE in content and "dgx-01 GPU 0 at 93 C" in content


def test_feishu_payload(hook, monkeypatch):
    _point(monkeypatch, "feishu", "NotifyFeishu", "notify_url",
           f"http://127.0.0.1:{hook.port}/open-apis/bot/v2/hook/{{token}}/")  # fmt: skip
    hook.reply = b'{"code": 0, "msg": "success"}'
    send("feishu://f3ishus3cret", TITLE, BODY)
    post = wait_for(lambda: hook.posts, what="the Feishu post")[0]
    assert post["path"] == "/open-apis/bot/v2/hook/f3ishus3cret/"
    body = post["body"]
    assert body["msg_type"] in ("text", "interactive")
    assert "dgx-01 GPU 1 at 93 C" in str(body) and "gpu_too_hot" in str(body)


def test_wecom_payload(hook, monkeypatch):
    _point(monkeypatch, "wecombot", "NotifyWeComBot", "notify_url",
           f"http://127.0.0.1:{hook.port}/cgi-bin/webhook/send?key={{key}}")  # fmt: skip
    send("wecombot://w3coms3cretkey", TITLE, BODY)
    post = wait_for(lambda: hook.posts, what="the WeCom post")[0]
    assert post["path"] == "/cgi-bin/webhook/send?key=w3coms3cretkey"
    assert post["body"]["msgtype"] == "text"
    assert "dgx-01 GPU 0 at 93 C" in post["body"]["text"]["content"]


def test_generic_webhook_payload_and_basic_auth(hook):
    send(f"json://bot:pa55word@127.0.0.1:{hook.port}/alerts", TITLE, BODY)
    post = wait_for(lambda: hook.posts, what="the webhook post")[0]
    assert post["path"] == "/alerts"
    assert post["body"]["title"] == TITLE and post["body"]["message"] == BODY
    assert post["auth"] and post["auth"].startswith("Basic ")


@pytest.mark.parametrize("url", [
    "slack://T0AAA/B0BBB/s3cretSlackToken0000000",
    "dingtalk://d1ngs3cret/",
    "feishu://f3ishus3cret",
    "wecombot://w3coms3cretkey",
])  # fmt: skip
def test_channel_secret_never_in_public_view_or_failure_log(url, caplog, monkeypatch):
    """A channel's public form (pages and API show it) names only its name and kind; a
    failed delivery (the receiver is a closed port) is logged without the secret."""
    chans, errors = channels_from([AlertChannelSection(name="ops", url=url)])
    assert not errors and len(chans) == 1
    secret = url.split("//")[1].rstrip("/").split("/")[-1]
    assert secret not in str(chans[0].public())
    for module, cls, attr, to in (
        ("slack", "NotifySlack", "webhook_url", "http://127.0.0.1:9/x"),
        ("dingtalk", "NotifyDingTalk", "notify_url", "http://127.0.0.1:9/?t={token}"),
        ("feishu", "NotifyFeishu", "notify_url", "http://127.0.0.1:9/{token}/"),
        ("wecombot", "NotifyWeComBot", "notify_url", "http://127.0.0.1:9/?k={key}"),
    ):
        _point(monkeypatch, module, cls, attr, to)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError) as err:
        send(url, TITLE, BODY)
    assert secret not in str(err.value)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "127.0.0.1:9" in logged or "could not" in str(err.value)
    assert secret not in logged, "info and above (what a server logs) never hold the secret"
