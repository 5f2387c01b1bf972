"""Alerts in the lab's language: a built-in rule's summary and runbook travel as messages each
reader renders in theirs (the page by its language, the channels by ``ui.language``); text a
user wrote (a custom rule, or a built-in's summary edited) is shown as written."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from gpufleet import i18n
from gpufleet.alerts.engine import Alert
from gpufleet.alerts.notify import Message
from gpufleet.alerts.persist import AlertDB
from gpufleet.alerts.rules import builtin_rules, parse_rule
from gpufleet.alerts.service import AlertService
from gpufleet.config import load_settings
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.alerts.conftest import T0
from tests.alerts.test_engine import _hot, run

HAN = re.compile(r"[\u4e00-\u9fff]")


def _hot_alert(make_host, make_driver, rules=None, rule: str = "gpu_too_hot") -> Alert:
    h, d = make_host("dgx-07"), make_driver(rules)
    _hot(h, True)
    run(d, h, T0, 300)
    (a,) = d.firing(rule)
    return a


def test_a_built_in_alert_renders_in_either_language(make_host, make_driver):
    a = _hot_alert(make_host, make_driver)
    assert a.summary == "dgx-07 GPU 3 at 95 C"
    assert i18n.render(a.summary_i18n, "en") == a.summary
    zh = i18n.render(a.summary_i18n, "zh-CN")
    assert HAN.search(zh) and "dgx-07" in zh and "95" in zh and "3" in zh
    assert i18n.render(a.runbook_i18n, "en") == a.runbook
    assert HAN.search(i18n.render(a.runbook_i18n, "zh-CN"))
    # it survives the trip through the store of alerts (JSON) and back
    again = Alert.from_dict(a.to_dict())
    assert i18n.render(again.summary_i18n, "zh-CN") == zh


def test_text_a_user_wrote_stays_as_written(make_host, make_driver):
    rules = [r.model_copy(update={"summary": "{host} GPU {gpu} is cooking ({value} C)"})
             if r.name == "gpu_too_hot" else r for r in builtin_rules()]  # fmt: skip
    a = _hot_alert(make_host, make_driver, rules)
    assert a.summary == "dgx-07 GPU 3 is cooking (95 C)" and a.summary_i18n is None
    assert a.runbook_i18n is not None  # the runbook was not edited: still the built-in one
    custom = parse_rule({"name": "hot_custom", "metric": "temperature_celsius", "scope": "gpu",
                         "op": ">=", "threshold": 90, "summary": "{host}: {value} C"})  # fmt: skip
    b = _hot_alert(make_host, make_driver, [custom], "hot_custom")
    assert b.summary == "dgx-07: 95 C" and b.summary_i18n is None and b.runbook_i18n is None
    msg = Message({"rule": "hot_custom"}, [b], [], "warning", T0)
    assert "FIRING dgx-07: 95 C" not in msg.body("zh-CN") and "dgx-07: 95 C" in msg.body("zh-CN")


def test_channels_speak_the_configured_language(tmp_path, make_host, make_driver):
    a = _hot_alert(make_host, make_driver)
    sent: list[tuple[str, str, str]] = []
    for lang in ("en", "zh-CN"):
        settings = load_settings(None, overrides={
            "alerts": {"channels": [{"name": "ops", "url": "json://127.0.0.1:9/hook"}]},
            "server": {"data_dir": tmp_path / lang}, "ui": {"language": lang},
        }, environ={})  # fmt: skip
        (tmp_path / lang).mkdir()
        svc = AlertService(settings, AlertDB(tmp_path / lang / "alerts.sqlite3"),
                           sender=lambda url, title, body: sent.append((url, title, body)))  # fmt: skip
        svc.deliver([Message({"rule": "gpu_too_hot", "host": "dgx-07"}, [a], [], "warning", T0)])
    (en, zh) = sent
    assert en[1] == "[WARNING] 1 firing: rule=gpu_too_hot, host=dgx-07"
    assert en[2].startswith("FIRING dgx-07 GPU 3 at 95 C\n  what to do: check fans")
    assert HAN.search(zh[1]) and "dgx-07" in zh[1]
    assert not re.search(r"FIRING|what to do|firing", zh[2]) and HAN.search(zh[2])
    assert i18n.render(a.summary_i18n, "zh-CN") in zh[2]


def test_the_alerts_page_shows_them_in_the_readers_language(tmp_path, make_host, make_driver):
    settings = load_settings(None, overrides={"server": {"data_dir": tmp_path}}, environ={})
    store = open_store(settings.database_url)
    with TestClient(create_app(settings, store=store)) as client:
        svc = client.app.state.alerts
        a = _hot_alert(make_host, make_driver)
        with svc._lock:
            svc.engine.alerts[a.fingerprint] = a
        en = client.get("/alerts", params={"lang": "en"}).text
        zh = client.get("/alerts", params={"lang": "zh-CN"}).text
        api = client.get("/api/v1/alerts").json()
    store.close()
    assert a.summary in en and a.summary not in zh
    assert i18n.render(a.summary_i18n, "zh-CN") in zh
    (listed,) = [x for x in api["alerts"] if x["fingerprint"] == a.fingerprint]
    assert listed["summary"] == a.summary and listed["summary_i18n"] == a.summary_i18n
