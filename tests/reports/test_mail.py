"""Scheduled e-mail reports against a real SMTP server on loopback (aiosmtpd): subscribe,
move the injected clock to a due period, read what arrived; sent once, even after a restart;
the subscriptions' API and admin page."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import re
import threading
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpufleet.accounts.users import new_user
from gpufleet.config import load_settings
from gpufleet.reports.mail import ReportMailer, SubscriptionStore, last_complete_period
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.conftest import ServerProc, free_port, gpufleet_here
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 2, 26, tzinfo=UTC).timestamp()  # a Monday
END = datetime(2024, 3, 4, 2, tzinfo=UTC).timestamp()


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mail")
    store = open_store(d / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=5, hosts=2))
    store.close()
    r = gpufleet_here("rollup", "--data-dir", str(d), env={"GPUFLEET_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    return d


class Inbox:
    """aiosmtpd handler: keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.port = controller.port  # type: ignore[attr-defined]
    yield inbox
    controller.stop()


def settings_for(data_dir, tmp_path, port: int | None, **mail):
    """The data dir's store, with the subscriptions' file in a fresh folder per test."""
    folder = tmp_path / "state"
    folder.mkdir(exist_ok=True)
    cfg = {"smtp_host": "127.0.0.1", "smtp_port": port, "starttls": False, **mail}
    if port is None:
        cfg = {}
    return load_settings(
        overrides={
            "server": {"data_dir": folder, "database": str(data_dir / "gpufleet.duckdb")},
            "mail": cfg,
        },
        environ={},
    )


def parts(msg) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in msg.walk():
        out.setdefault(p.get_content_type(), []).append(p)
    return out


def test_last_complete_period():
    assert last_complete_period("week", at("2024-03-04T00:30:00"), "UTC")[:2] == (
        datetime(2024, 2, 26).date(), datetime(2024, 3, 3).date(),
    )  # fmt: skip
    first, last, end = last_complete_period("month", at("2024-03-01T00:30:00"), "Asia/Shanghai")
    assert (str(first), str(last)) == ("2024-02-01", "2024-02-29")
    assert end == at("2024-02-29T16:00:00")  # local midnight in UTC+8
    assert [str(d) for d in last_complete_period("year", at("2025-01-01T12:00:00"), "UTC")[:2]] == [
        "2024-01-01", "2024-12-31",
    ]  # fmt: skip


def test_scheduled_reports_arrive_once_with_charts_and_the_api_csv(data_dir, tmp_path, smtp):
    settings = settings_for(data_dir, tmp_path, smtp.port)
    store = open_store(settings.database_url)
    now = [at("2024-02-28T12:00:00")]  # a Wednesday
    try:
        mailer = ReportMailer(settings, store, clock=lambda: now[0])
        weekly = mailer.subscriptions.add("pi@lab.example", "weekly", "user", now[0])
        monthly = mailer.subscriptions.add("admin@lab.example", "monthly", "host", now[0])

        now[0] = at("2024-03-02T12:00:00")  # February is over, the week is not
        sent = mailer.check()
        assert [(s["email"], s["period_start"], s["sent"]) for s in sent] == [
            ("admin@lab.example", "2024-02-01", True)
        ]
        now[0] = at("2024-03-03T23:00:00")
        assert mailer.check() == []
        now[0] = at("2024-03-04T09:00:00")  # Monday: last week is complete and rolled up
        sent = mailer.check()
        assert [(s["email"], s["period_start"], s["sent"]) for s in sent] == [
            ("pi@lab.example", "2024-02-26", True)
        ]
        assert mailer.check() == []  # once
        # a restart (a new mailer on the same folder) sends nothing again
        again = ReportMailer(settings, store, clock=lambda: at("2024-03-04T10:00:00"))
        assert again.check() == []
        sent_log = SubscriptionStore(settings.server.data_dir / "report-subscriptions.json").sent()
        assert {(x["subscription"], x["period_start"]) for x in sent_log} == {
            (monthly.id, "2024-02-01"), (weekly.id, "2024-02-26"),
        }  # fmt: skip

        assert len(smtp.messages) == 2
        rcpt, msg = smtp.messages[1]
        assert rcpt == ["pi@lab.example"]
        assert msg["Subject"] == (
            "gpufleet weekly report: GPU usage by user, week of 2024-02-26 (2024-02-26 to 2024-03-03)"
        )
        found = parts(msg)
        html = found["text/html"][0].get_content()
        assert "GPU usage by user" in html and "alice" in html
        images = found["image/png"]
        assert len(images) == 3
        for img in images:
            data = img.get_content()
            assert data.startswith(b"\x89PNG") and len(data) > 3000
            assert f"cid:{img['Content-ID'].strip('<>')}" in html  # shown inline
        assert "alice" in found["text/plain"][0].get_content()
        (attachment,) = [p for p in msg.iter_attachments() if p.get_content_type() == "text/csv"]
        assert attachment.get_filename() == "gpufleet-week-by-user-2024-02-26-2024-03-03.csv"
        attached = attachment.get_content()
        if isinstance(attached, bytes):
            attached = attached.decode()

        # the figures are the API's, for the same question
        api_settings = settings_for(data_dir, tmp_path, None)
        with TestClient(create_app(api_settings, store=store)) as client:
            r = client.get(
                "/api/v1/reports?period=week&by=user&from=2024-02-26&to=2024-03-03&format=csv"
            )
            assert r.status_code == 200
            assert attached == r.text
            body = client.get(
                "/api/v1/reports?period=week&by=user&from=2024-02-26&to=2024-03-03"
            ).json()
        rows = list(csv.DictReader(io.StringIO(attached)))
        assert len(rows) == len(body["rows"]) > 0
        for row, api_row in zip(rows, body["rows"], strict=True):
            assert row["key"] == api_row["key"]
            assert float(row["gpu_hours"]) == pytest.approx(api_row["gpu_hours"])
        top = max(body["rows"], key=lambda r: r["gpu_hours"])
        assert f"{top['gpu_hours']:,.1f}" in html

        _, feb = smtp.messages[0]
        assert "monthly report: GPU usage by host, February 2024" in feb["Subject"]
        (att,) = list(feb.iter_attachments())
        assert att.get_filename() == "gpufleet-month-by-host-2024-02-01-2024-02-29.csv"
    finally:
        store.close()


def test_a_failed_send_is_retried_and_not_recorded(data_dir, tmp_path, smtp):
    dead = free_port()  # nothing listens here
    settings = settings_for(data_dir, tmp_path, dead, timeout_seconds=2)
    store = open_store(settings.database_url)
    try:
        now = at("2024-02-28T12:00:00")
        mailer = ReportMailer(settings, store, clock=lambda: now)
        mailer.subscriptions.add("pi@lab.example", "weekly", "fleet", now)
        (result,) = mailer.check(at("2024-03-04T09:00:00"))
        assert result["sent"] is False and result["error"]
        assert mailer.subscriptions.sent() == []
        # the SMTP server is back: the next check sends it
        mailer.settings = settings_for(data_dir, tmp_path, smtp.port)
        (result,) = mailer.check(at("2024-03-04T09:05:00"))
        assert result["sent"] is True and len(smtp.messages) == 1
    finally:
        store.close()


def test_subscriptions_api_and_admin_page(data_dir, tmp_path):
    settings = settings_for(data_dir, tmp_path, None)
    store = open_store(settings.database_url)
    store.create_user(new_user("root", "admin password", "admin"))
    store.create_user(new_user("ann", "user password", "user"))
    try:
        with TestClient(create_app(settings, store=store), follow_redirects=False) as client:
            assert client.get("/api/v1/reports/subscriptions").status_code == 401

            def login(name: str, password: str) -> str:
                client.cookies.clear()
                r = client.post("/login", json={"username": name, "password": password})
                assert r.status_code == 200, r.text
                return r.json()["csrf_token"]

            token = login("ann", "user password")
            assert client.get("/api/v1/reports/subscriptions").status_code == 403
            token = login("root", "admin password")
            h = {"X-CSRF-Token": token}
            body = {"email": "pi@lab.example", "schedule": "monthly", "by": "user"}
            assert client.post("/api/v1/reports/subscriptions", json=body).status_code == 403
            r = client.post("/api/v1/reports/subscriptions", json=body, headers=h)
            assert r.status_code == 201, r.text
            sub = r.json()
            assert sub["period"] == "month" and sub["id"].startswith("sub_")
            r = client.post("/api/v1/reports/subscriptions", json=body, headers=h)
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
            for bad, field in (
                ({**body, "email": "not-an-address"}, "email"),
                ({**body, "schedule": "daily"}, "schedule"),
                ({**body, "by": "planet"}, "by"),
            ):
                r = client.post("/api/v1/reports/subscriptions", json=bad, headers=h)
                assert r.status_code == 422, r.text
                assert r.json()["error"]["message"].startswith(field + ":")
            listing = client.get("/api/v1/reports/subscriptions").json()
            assert [s["email"] for s in listing["subscriptions"]] == ["pi@lab.example"]
            assert listing["mail_enabled"] is False

            page = client.get("/admin/reports")
            assert page.status_code == 200
            assert 'id="mail-off"' in page.text and "pi@lab.example" in page.text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            r = client.post(
                "/admin/reports/subscriptions",
                data={"csrf_token": csrf, "email": "dean@lab.example", "schedule": "yearly",
                      "by": "host"},
            )  # fmt: skip
            assert r.status_code == 303 and "message=" in r.headers["location"]
            r = client.post(
                "/admin/reports/subscriptions",
                data={"csrf_token": csrf, "email": "x", "schedule": "yearly", "by": "host"},
            )
            assert r.status_code == 303 and "error=" in r.headers["location"]
            r = client.post(f"/api/v1/reports/subscriptions/{sub['id']}/send", headers=h)
            assert r.status_code == 502 and "smtp_host" in r.json()["error"]["message"]
            r = client.delete(f"/api/v1/reports/subscriptions/{sub['id']}", headers=h)
            assert r.status_code == 200
            r = client.delete(f"/api/v1/reports/subscriptions/{sub['id']}", headers=h)
            assert r.status_code == 404
            listing = client.get("/api/v1/reports/subscriptions").json()
            assert [s["email"] for s in listing["subscriptions"]] == ["dean@lab.example"]
        # kept on disk, for the next start
        kept = SubscriptionStore(settings.server.data_dir / "report-subscriptions.json").items()
        assert [(s.email, s.schedule, s.by) for s in kept] == [
            ("dean@lab.example", "yearly", "host")
        ]
    finally:
        store.close()


def test_mail_settings_are_validated():
    from gpufleet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"mail\.from_address"):
        load_settings(overrides={"mail": {"from_address": "nobody"}}, environ={})
    with pytest.raises(ConfigError, match=r"mail\.smtp_port"):
        load_settings(overrides={"mail": {"smtp_port": 0}}, environ={})


def test_cli_send_to_mails_one_report(data_dir, tmp_path, smtp):
    cfg = tmp_path / "gpufleet.yaml"
    cfg.write_text(
        f"mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {smtp.port}\n  starttls: false\n"
        "  from_address: gpufleet@lab.example\n"
    )
    args = ["report", "--data-dir", str(data_dir), "--config", str(cfg), "--by", "host"]
    r = gpufleet_here(*args, "--period", "custom", "--from", "2024-02-26", "--to", "2024-02-29",
                 "--send-to", "pi@lab.example")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "to pi@lab.example" in r.stdout
    ((rcpt, msg),) = smtp.messages
    assert rcpt == ["pi@lab.example"] and msg["From"] == "gpufleet@lab.example"
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "gpufleet-custom-by-host-2024-02-26-2024-02-29.csv"
    assert len(parts(msg)["image/png"]) == 3
    r = gpufleet_here(*args, "--send-to", "not an address")
    assert r.returncode != 0 and "--send-to: email" in r.stderr
    r = gpufleet_here(*args, "--period", "week", "--send-to", "pi@lab.example",
                 env={"GPUFLEET_CONFIG": ""}, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr  # the latest complete week (empty: 2024's data)
    assert len(smtp.messages) == 2


@pytest.mark.slow
def test_the_server_sends_due_reports_itself_once_across_restarts(tmp_path, smtp):
    """A real server process: its own task sends the latest complete week to an old
    subscription, and a restarted server does not send it again."""
    data = tmp_path / "srv"
    data.mkdir()
    SubscriptionStore(data / "report-subscriptions.json").add(
        "pi@lab.example", "weekly", "fleet", now=0.0
    )
    cfg = tmp_path / "gpufleet.yaml"
    cfg.write_text(
        f"mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {smtp.port}\n  starttls: false\n"
        "  check_interval_seconds: 0.2\n  wait_for_rollup_hours: 0\n"
    )
    srv = ServerProc(data, free_port(), token="", extra_args=("--config", str(cfg)))
    srv.start()
    try:
        assert smtp.arrived.wait(30), (data / "server.log").read_text()
        srv.stop()
        assert len(smtp.messages) == 1
        assert "weekly report: GPU usage by fleet" in smtp.messages[0][1]["Subject"]
        srv.start()
        time.sleep(2)  # ten checks
        assert len(smtp.messages) == 1
    finally:
        srv.stop()


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM files), signed by itself."""
    import ipaddress
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet test SMTP")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = folder / "smtp.crt", folder / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def test_starttls_and_login(data_dir, tmp_path, monkeypatch):
    """The default path: STARTTLS (certificate checked against mail.ca_file), then a login
    with the password from the environment."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), tls_context=tls, require_starttls=True,
        authenticator=authenticator, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        monkeypatch.setenv("LAB_SMTP_PASSWORD", "s3cret")
        settings = settings_for(
            data_dir, tmp_path, controller.port, starttls=True, ca_file=cert,
            username="gpufleet", password_env="LAB_SMTP_PASSWORD",
        )  # fmt: skip
        store = open_store(settings.database_url)
        try:
            now = at("2024-02-28T12:00:00")
            mailer = ReportMailer(settings, store, clock=lambda: now)
            mailer.subscriptions.add("pi@lab.example", "weekly", "fleet", now)
            (result,) = mailer.check(at("2024-03-04T09:00:00"))
            assert result["sent"] is True, result
            assert logins == [(b"gpufleet", b"s3cret")] and len(inbox.messages) == 1
            # a certificate the client does not trust: refused, not sent, retried later
            untrusted = settings_for(data_dir, tmp_path, controller.port, starttls=True)
            mailer.settings = untrusted
            mailer.subscriptions.add("dean@lab.example", "weekly", "user", now)
            (result,) = mailer.check(at("2024-03-04T09:05:00"))
            assert result["sent"] is False and "CERTIFICATE_VERIFY_FAILED" in result["error"]
        finally:
            store.close()
    finally:
        controller.stop()


def test_mailed_reports_use_the_configured_host_groups(data_dir, tmp_path):
    from gpufleet.reports.mail import local_fetch

    first, last = (datetime.fromtimestamp(t, UTC).date() for t in (START, END))
    settings = settings_for(data_dir, tmp_path, None)
    store = open_store(data_dir / "gpufleet.duckdb")
    try:
        by_host = local_fetch(settings, store)("month", "host", first, last)["rows"]
        hosts = sorted({r["key"] for r in by_host})
        groups = settings.hosts.model_copy(update={"groups": {"first": [hosts[0]]}})
        grouped = settings.model_copy(update={"hosts": groups})
        rows = local_fetch(grouped, store)("month", "host_group", first, last)["rows"]
    finally:
        store.close()
    assert len(hosts) == 2
    assert {r["key"] for r in rows} == {"first", "(ungrouped)"}
