"""The command line and the e-mailed report in Simplified Chinese: ``GPUFLEET_LANG``, the
config's ``ui.language`` and the locale choose; the report goes through the real SMTP
receiver of the report tests."""

from __future__ import annotations

import re

import pytest

from gpufleet import i18n
from gpufleet.config import load_settings
from gpufleet.reports.mail import ReportMailer
from gpufleet.store import open_store
from tests.conftest import gpufleet_here
from tests.reports.test_mail import at, data_dir, parts, smtp  # noqa: F401 (fixtures)

ZH = {"GPUFLEET_LANG": "zh-CN"}
HAN = re.compile(r"[\u4e00-\u9fff]")


def test_help_and_a_bad_argument_in_chinese():
    r = gpufleet_here("--help", env=ZH)
    assert r.returncode == 0, r.stderr
    assert "用法：" in r.stdout and "命令" in r.stdout and "选项" in r.stdout
    assert "运行 gpufleet 服务器" in r.stdout  # the commands' one-line help
    r = gpufleet_here("report", "--help", env={**ZH, "COLUMNS": "80"})
    assert "使用报表" in r.stdout and "显示此帮助并退出。" in r.stdout
    # wrapped by display width: a Chinese character takes two columns of the 80
    assert max(i18n.width(line) for line in r.stdout.splitlines()) <= 80
    assert "默认：month" in r.stdout  # click's "[default: month]"
    r = gpufleet_here(
        "token", "--help", env=ZH
    )  # a group's list: each sub-command's first sentence
    assert "创建一个名为 NAME 的令牌（例如它所用于的主机或组）并打印出来。" in r.stdout
    r = gpufleet_here("report", "--period", "fortnight", env=ZH)
    assert r.returncode == 2
    assert "错误：'--period' 的值无效：'fortnight' 不是" in r.stderr, r.stderr
    # the same in English without the variable (and with an English locale)
    r = gpufleet_here(
        "report", "--period", "fortnight", env={"GPUFLEET_LANG": "", "LANG": "C.UTF-8"}
    )
    assert "Error: Invalid value for '--period'" in r.stderr and not HAN.search(r.stderr)


def test_our_own_errors_and_the_report_table_in_chinese(data_dir, tmp_path):  # noqa: F811
    r = gpufleet_here("rollup", "--data-dir", str(data_dir), "--from", "yesterday-ish", env=ZH)
    assert r.returncode == 2
    assert "错误：无法识别 'yesterday-ish'" in r.stderr
    assert "提示：请使用 YYYY-MM-DD 或 ISO 8601 时间" in r.stderr
    r = gpufleet_here("report", "--data-dir", str(data_dir), "--from", "2024-13-45", env=ZH)
    assert r.returncode == 2
    assert "错误：--from='2024-13-45' 不是日期；请使用 YYYY-MM-DD" in r.stderr, r.stderr
    r = gpufleet_here("report", "--data-dir", str(data_dir), "--period", "custom", "--from",
                 "2024-03-02", "--to", "2024-03-01", env=ZH)  # fmt: skip
    assert "开始日期（2024-03-02）晚于结束日期（2024-03-01）" in r.stderr, r.stderr
    args = ["report", "--data-dir", str(data_dir), "--period", "week", "--by", "host",
            "--from", "2024-02-26", "--to", "2024-03-03"]  # fmt: skip
    r = gpufleet_here(*args, env={**ZH, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert "按主机统计的 GPU 使用情况，每周" in r.stdout
    assert "占用 GPU 时" in r.stdout and "合计" in r.stdout
    # 80 columns, counted as a terminal does (a Chinese character takes two)
    assert max(i18n.width(line) for line in r.stdout.splitlines()) <= 80
    assert "未显示（终端太窄）" in r.stdout  # the columns left out, named in Chinese


@pytest.mark.parametrize(
    ("env", "config", "want"),
    [
        ({"LANG": "zh_CN.UTF-8"}, None, "zh-CN"),  # the locale
        ({"LC_ALL": "en_US.UTF-8", "LANG": "zh_CN.UTF-8"}, None, "en"),  # LC_ALL first
        ({"LANG": "en_US.UTF-8"}, "zh-CN", "zh-CN"),  # the config over the locale
        ({"GPUFLEET_LANG": "en", "LANG": "zh_CN.UTF-8"}, "zh-CN", "en"),  # the variable first
    ],
)
def test_which_language_the_cli_speaks(tmp_path, env, config, want):
    args = ["report", "--period", "fortnight"]
    if config:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"ui:\n  language: {config}\n")
        args += ["--config", str(cfg)]
    r = gpufleet_here(*args, env={"GPUFLEET_LANG": "", "LC_ALL": "", "LC_MESSAGES": "", **env})
    assert r.returncode == 2
    assert bool(HAN.search(r.stderr)) == (want == "zh-CN"), r.stderr


def test_the_scheduled_report_in_the_configured_language(data_dir, tmp_path, smtp):  # noqa: F811
    folder = tmp_path / "state"
    folder.mkdir()
    settings = load_settings(
        overrides={
            "server": {"data_dir": folder, "database": str(data_dir / "gpufleet.duckdb")},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "starttls": False},
            "ui": {"language": "zh-CN"},
        },
        environ={},
    )
    store = open_store(settings.database_url)
    try:
        now = at("2024-02-28T12:00:00")
        mailer = ReportMailer(settings, store, clock=lambda: now)
        mailer.subscriptions.add("pi@lab.example", "monthly", "host", now)
        (sent,) = mailer.check(at("2024-03-02T12:00:00"))
        assert sent["sent"] is True
    finally:
        store.close()
    ((rcpt, msg),) = smtp.messages
    assert rcpt == ["pi@lab.example"]
    assert msg["Subject"] == (
        "gpufleet 月报：按主机统计的 GPU 使用情况，2024年2月（2024-02-01 至 2024-02-29）"
    )
    found = parts(msg)
    html = found["text/html"][0].get_content()
    assert '<html lang="zh-CN">' in html
    assert "占用 GPU 时" in html and "所有行都在附件 CSV 中" in html and "环比" in html
    text = found["text/plain"][0].get_content()
    assert "平均利用率" in text and "所有行都在附件 CSV 中。" in text
    assert len(found["image/png"]) == 3  # the charts (their words: see docs/i18n.md)


def test_report_send_to_in_the_cli_language(data_dir, tmp_path, smtp):  # noqa: F811
    cfg = tmp_path / "gpufleet.yaml"
    cfg.write_text(
        f"mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {smtp.port}\n  starttls: false\n"
        "  from_address: gpufleet@lab.example\n"
    )
    r = gpufleet_here("report", "--data-dir", str(data_dir), "--config", str(cfg), "--by", "user",
                 "--period", "week", "--from", "2024-02-26", "--to", "2024-03-03",
                 "--send-to", "pi@lab.example", env=ZH)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "已将按用户统计的周报表" in r.stdout
    ((_, msg),) = smtp.messages
    assert msg["Subject"].startswith("gpufleet 报表：按用户统计的 GPU 使用情况，2024-02-26 当周")


def test_a_subscription_may_choose_its_own_language(data_dir, tmp_path, smtp):  # noqa: F811
    from tests.reports.test_mail import settings_for

    settings = settings_for(data_dir, tmp_path, smtp.port)  # ui.language: en (the default)
    store = open_store(settings.database_url)
    try:
        now = at("2024-02-28T12:00:00")
        mailer = ReportMailer(settings, store, clock=lambda: now)
        mailer.subscriptions.add("chen@lab.example", "monthly", "user", now, "zh-CN")
        mailer.subscriptions.add("pi@lab.example", "monthly", "user", now)
        with pytest.raises(ValueError, match=r"^language: 'fr'"):
            mailer.subscriptions.add("x@lab.example", "monthly", "user", now, "fr")
        sent = mailer.check(at("2024-03-02T12:00:00"))
        assert [s["sent"] for s in sent] == [True, True]
    finally:
        store.close()
    subjects = {rcpt[0]: msg["Subject"] for rcpt, msg in smtp.messages}
    assert subjects["chen@lab.example"].startswith("gpufleet 月报：按用户统计的 GPU 使用情况")
    assert subjects["pi@lab.example"].startswith("gpufleet monthly report: GPU usage by user")
