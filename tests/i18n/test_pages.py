"""The pages in the reader's language, through a real server process on loopback: the
``Accept-Language`` header, the ``lang`` cookie and ``?lang=`` switch, the config default."""

from __future__ import annotations

import html
import re
import time

import httpx
import pytest

from tests.conftest import make_batch
from tests.web.conftest import fleet_sample

PAGES = ["/", "/recommend", "/alerts", "/queue", "/reports", "/me/usage", "/login"]
ZH = {"zh-CN": "zh-CN,zh;q=0.9,en;q=0.8"}


def _lang(html: str) -> str:
    m = re.search(r'<html lang="([^"]+)">', html)
    assert m, html[:200]
    return m.group(1)


def _get(server, path: str, **kw) -> httpx.Response:
    r = httpx.get(server.url + path, timeout=30, **kw)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return r


@pytest.fixture
def fleet_server(server):
    server.post_seen(make_batch(fleet_sample("gpu01", 1, ts=time.time())))
    return server


def test_accept_language_zh_gives_chinese_pages_and_english_stays_the_default(fleet_server):
    srv = fleet_server
    for path in PAGES:
        zh = _get(srv, path, headers={"Accept-Language": ZH["zh-CN"]}).text
        assert _lang(zh) == "zh-CN", path
        assert "总览" in zh and "报表" in zh and "告警" in zh, path  # the top bar
        en = _get(srv, path).text
        assert _lang(en) == "en", path
        assert ">Overview<" in en and "总览" not in en, path
    zh = _get(srv, "/", headers={"Accept-Language": "zh"}).text
    assert "仅显示空闲 GPU" in zh and "正在加载集群…" in zh  # overview's filters and empty state
    host = _get(srv, "/hosts/gpu01", headers={"Accept-Language": "zh-Hans"}).text
    assert "GPU 利用率" in host and "进程" in host and "驱动" in host
    # the page's scripts get their catalogue slice, with the live badge's words
    m = re.search(r'<script id="gf-messages" type="application/json">(.*?)</script>', host)
    assert m and "连接中…" in m.group(1) and "实时" in m.group(1)
    assert re.search(r'<script id="gf-messages" type="application/json">\{\}</script>',
                     _get(srv, "/hosts/gpu01").text)  # fmt: skip


def test_q_values_pick_the_best_language_we_speak(fleet_server):
    srv = fleet_server
    cases = {
        "fr-FR, en;q=0.9, zh;q=0.8": "en",
        "fr-FR, zh-TW;q=0.9, en;q=0.5": "zh-CN",
        "en;q=0.2, zh-CN;q=0.7": "zh-CN",
        "zh-CN;q=0, en": "en",
        "de, *;q=0.5": "en",  # nothing we speak: the config default (English here)
    }
    for header, want in cases.items():
        assert _lang(_get(srv, "/", headers={"Accept-Language": header}).text) == want, header


def test_the_switch_sets_a_cookie_that_wins_over_the_header(fleet_server):
    srv = fleet_server
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/reports?lang=zh-CN&period=month", headers={"Accept-Language": "en"})
        assert r.status_code == 200 and _lang(r.text) == "zh-CN"
        assert "lang=zh-CN" in r.headers["set-cookie"] and "Max-Age" in r.headers["set-cookie"]
        assert "使用报表" in r.text
        assert "Accept-Language" in r.headers["vary"]  # a cache keeps the languages apart
        # the cookie now chooses, over the browser's header, on every page
        r = c.get("/alerts", headers={"Accept-Language": "en-GB,en"})
        assert _lang(r.text) == "zh-CN" and "没有正在触发或等待中的告警。" in r.text
        # and the switch back to English sticks too
        r = c.get("/alerts?lang=en", headers={"Accept-Language": "zh-CN"})
        assert _lang(r.text) == "en"
        r = c.get("/", headers={"Accept-Language": "zh-CN"})
        assert _lang(r.text) == "en"
    # the switch's links keep the page and its query, with lang= set
    page = _get(srv, "/reports?period=year&by=host").text
    assert 'href="/reports?period=year&amp;by=host&amp;lang=zh-CN"' in page


def test_a_bad_lang_parameter_is_ignored_not_an_error(fleet_server):
    r = _get(fleet_server, "/?lang=xx-YY", headers={"Accept-Language": "zh-CN"})
    assert _lang(r.text) == "zh-CN" and "set-cookie" not in {k.lower() for k in r.headers}


def test_the_config_default_when_neither_header_nor_cookie_chooses(server_factory, tmp_path):
    cfg = tmp_path / "zh.yaml"
    cfg.write_text("ui:\n  language: zh-CN\n")
    srv = server_factory("--config", str(cfg))
    page = _get(srv, "/").text
    assert _lang(page) == "zh-CN" and "总览" in page
    # a browser that asks for English still gets English
    assert _lang(_get(srv, "/", headers={"Accept-Language": "en-US"}).text) == "en"


def test_a_bad_config_language_names_the_key(tmp_path):
    from gpufleet.config import load_settings
    from gpufleet.errors import ConfigError

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ui:\n  language: klingon\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, environ={})
    assert "ui.language" in e.value.message and str(cfg) in e.value.message


def test_a_failed_login_says_so_in_the_page_language(fleet_server):
    with httpx.Client(base_url=fleet_server.url, timeout=30) as c:
        page = c.get("/login", headers={"Accept-Language": "zh-CN"}).text
        m = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert m and "用户名" in page and "密码" in page
        form = {"csrf_token": m.group(1), "username": "nobody", "password": "not-the-password"}
        r = c.post("/login", data=form, headers={"Accept-Language": "zh-CN"})
        assert r.status_code == 401 and "用户名或密码错误" in r.text
        # a script's JSON login gets the API's English message (docs/i18n.md)
        r = c.post("/login", json={"username": "nobody", "password": "not-the-password"},
                   headers={"Accept-Language": "zh-CN"})  # fmt: skip
        assert r.status_code == 401
        assert r.json()["error"]["message"].startswith("wrong user name or password")


def test_the_admin_pages_in_chinese(fleet_server):
    from tests.conftest import gpufleet_here

    r = gpufleet_here("user", "create", "root", "--role", "admin", "--password-stdin",
                 "--data-dir", str(fleet_server.data_dir), input="admin pw 123\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    zh = {"Accept-Language": "zh-CN"}
    with httpx.Client(base_url=fleet_server.url, timeout=30, headers=zh) as c:
        r = c.post("/login", json={"username": "root", "password": "admin pw 123"})
        assert r.status_code == 200, r.text
        admin = c.get("/admin")
        assert admin.status_code == 200 and _lang(admin.text) == "zh-CN"
        assert "代理令牌" in admin.text and "创建令牌" in admin.text and "最后登录" in admin.text
        assert "gpu01" in admin.text  # the host, with its "last contact" in Chinese words
        mail = c.get("/admin/reports")
        assert mail.status_code == 200 and "定时邮件报表" in mail.text
        assert "邮件功能未开启" in mail.text and "服务器默认" in mail.text
        # a notice built by the server for this request, in the page's language
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', mail.text).group(1)
        r = c.post("/admin/tokens", data={"csrf_token": csrf, "name": "bad name!"})
        assert r.status_code == 400 and "令牌名称 'bad name!' 无效" in html.unescape(r.text)
