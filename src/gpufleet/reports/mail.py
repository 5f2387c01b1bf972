"""Scheduled e-mail reports: subscriptions, the e-mail (HTML with the charts as inline PNG
images and the report's CSV attached) and the server task that sends each period once.

- Subscriptions and what was sent live in ``report-subscriptions.json`` in the data folder,
  written atomically (temporary file, fsync, rename): a handful of admin-made records that
  need no query, kept out of the store's schema.
- A weekly / monthly / yearly subscription gets the report of each week / month / year that
  ends after it was made, once: the send is recorded under (subscription, period start), so
  a restart does not send it again. A period is due when the rollup has passed its end (or
  ``mail.wait_for_rollup_hours`` after its end, when hosts stopped reporting); after a long
  outage only the latest complete period is sent.
- The figures come from ``gpufleet.reports.service.compute_report`` (the API's function):
  the attached CSV is what ``GET /api/v1/reports?...&format=csv`` answers for that period.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gpufleet import i18n
from gpufleet.config import Settings
from gpufleet.i18n import N_, _
from gpufleet.reports.core import BY
from gpufleet.reports.service import compute_report, to_csv
from gpufleet.reports.words import BY_WORDS, PERIOD_NAMES
from gpufleet.store.base import Store
from gpufleet.warehouse import calendar as cal

log = logging.getLogger(__name__)

FILE_NAME = "report-subscriptions.json"
SCHEDULES = {"weekly": "week", "monthly": "month", "yearly": "year"}
EMAIL = re.compile(r"^[^@\s<>,;\"']{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
MAX_SUBSCRIPTIONS = 1000
TOP_ROWS = 20  # keys in the e-mail's table (the CSV has them all)
TOP_SERIES = 10  # keys in the stacked chart, the rest summed as "other"
PALETTE = ["#2f6fde", "#2f9e6e", "#d9822b", "#c2413a", "#7b4bc4", "#1b9aaa", "#b7791f",
           "#5b6478", "#e05297", "#6a994e", "#9aa3b2"]  # fmt: skip

Fetch = Callable[[str, str, date, date], dict[str, Any]]  # (period, by, first, last) -> report


class SubscriptionError(ValueError):
    """A subscription that cannot be made or found (code as in the API's error shape)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Subscription:
    id: str
    email: str
    schedule: str  # weekly | monthly | yearly
    by: str
    created_at: float
    language: str | None = None  # en | zh-CN; None: the server's ui.language

    @property
    def period(self) -> str:
        return SCHEDULES[self.schedule]


def check_language(language: Any) -> str | None:
    """A subscription's language: en, zh-CN, or None/"" for the server's ``ui.language``."""
    if language is None or language == "":
        return None
    if language not in i18n.LANGUAGES:
        raise SubscriptionError(
            422, "invalid_subscription",
            f"language: {str(language)[:40]!r}; use one of {', '.join(i18n.LANGUAGES)} "
            "(or leave it out for the server's ui.language)",
        )  # fmt: skip
    return str(language)


def check_subscription(email: Any, schedule: Any, by: Any) -> tuple[str, str, str]:
    """The cleaned (email, schedule, by), or SubscriptionError naming the bad field."""
    if not isinstance(email, str) or not EMAIL.match(email.strip()):
        raise SubscriptionError(
            422, "invalid_subscription", f"email: {str(email)[:80]!r} is not an e-mail address"
        )
    if schedule not in SCHEDULES:
        raise SubscriptionError(
            422, "invalid_subscription",
            f"schedule: {str(schedule)[:40]!r}; use one of {', '.join(SCHEDULES)}",
        )  # fmt: skip
    if by not in BY:
        raise SubscriptionError(
            422, "invalid_subscription", f"by: {str(by)[:40]!r}; use one of {', '.join(BY)}"
        )
    return email.strip(), schedule, by


class SubscriptionStore:
    """The subscriptions and the record of sent reports, in one JSON file (atomic writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": 1, "subscriptions": [], "sent": []}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read {self.path}: {exc}") from None
        data.setdefault("subscriptions", [])
        data.setdefault("sent", [])
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        try:  # the rename itself survives a power cut
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def items(self) -> list[Subscription]:
        with self._lock:
            return [Subscription(**s) for s in self._load()["subscriptions"]]

    def get(self, sub_id: str) -> Subscription:
        for s in self.items():
            if s.id == sub_id:
                return s
        raise SubscriptionError(404, "unknown_subscription", f"no subscription {sub_id!r}")

    def add(
        self, email: Any, schedule: Any, by: Any, now: float, language: Any = None
    ) -> Subscription:
        email, schedule, by = check_subscription(email, schedule, by)
        lang = check_language(language)
        with self._lock:
            data = self._load()
            subs = data["subscriptions"]
            for s in subs:
                if (s["email"].lower(), s["schedule"], s["by"]) == (email.lower(), schedule, by):
                    raise SubscriptionError(
                        409, "conflict", f"{email} already gets the {schedule} report by {by}"
                    )
            if len(subs) >= MAX_SUBSCRIPTIONS:
                raise SubscriptionError(
                    409, "conflict", f"at most {MAX_SUBSCRIPTIONS} subscriptions"
                )
            sub = Subscription(f"sub_{secrets.token_hex(6)}", email, schedule, by, now, lang)
            subs.append(asdict(sub))
            self._save(data)
            return sub

    def delete(self, sub_id: str) -> Subscription:
        with self._lock:
            data = self._load()
            for s in data["subscriptions"]:
                if s["id"] == sub_id:
                    data["subscriptions"].remove(s)
                    data["sent"] = [x for x in data["sent"] if x["subscription"] != sub_id]
                    self._save(data)
                    return Subscription(**s)
        raise SubscriptionError(404, "unknown_subscription", f"no subscription {sub_id!r}")

    def sent(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._load()["sent"])

    def was_sent(self, sub_id: str, period_start: str) -> bool:
        return any(
            x["subscription"] == sub_id and x["period_start"] == period_start for x in self.sent()
        )

    def record_sent(self, sub_id: str, period_start: str, now: float, message_id: str) -> None:
        with self._lock:
            data = self._load()
            data["sent"].append(
                {"subscription": sub_id, "period_start": period_start, "sent_at": now,
                 "message_id": message_id}
            )  # fmt: skip
            self._save(data)


def last_complete_period(period: str, now: float, tz: str) -> tuple[date, date, int]:
    """(first day, last day, end as Unix s) of the latest ``period`` that has ended by ``now``."""
    zone = cal.zone(tz)
    current = cal.period_start(cal.local_date(now, zone), period)
    first = cal.previous_period_start(current, period)
    return first, current - timedelta(1), cal.day_start_ts(current, zone)


# -- the e-mail ------------------------------------------------------------------------------


def _pad(text: str, columns: int, right: bool = False) -> str:
    """``text`` cut and padded to ``columns`` terminal columns (a Chinese character takes 2)."""
    while i18n.width(text) > columns:
        text = text[:-1]
    fill = " " * (columns - i18n.width(text))
    return fill + text if right else text + fill


def _num(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _change(v: Any) -> str:
    return "–" if v is None else f"{v:+.0f}%"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.set_layout_engine("constrained")
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#eef0f3")
    ax.set_axisbelow(True)


@cache
def cjk_font() -> str | None:
    """A font family with Chinese glyphs that matplotlib can use, or None (then the charts'
    own words stay English: matplotlib would draw boxes; the mail around them is Chinese)."""
    from matplotlib import font_manager

    wanted = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
              "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN", "SimHei")  # fmt: skip
    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((w for w in wanted if w in names), None)


class _ChartWords:
    """The charts' words: in ``lang`` when a font can draw them, else English."""

    def __init__(self, lang: str) -> None:
        self.font = cjk_font() if lang != i18n.ENGLISH else None
        self.lang = lang if self.font or lang == i18n.ENGLISH else i18n.ENGLISH

    def __call__(self, msgid: str, **params: Any) -> str:
        return i18n.translate(msgid, self.lang, **params)

    def style(self) -> Any:  # matplotlib rc settings (its stubs want literal keys)
        return {"font.family": [self.font, "sans-serif"]} if self.font else {}


def chart_stacked(series: dict[str, Any], by: str, lang: str = i18n.ENGLISH) -> bytes:
    """Stacked GPU-hours per key over the report's sub-periods (top keys, the rest 'other')."""
    tr = _ChartWords(lang)
    from matplotlib import rc_context

    with rc_context(tr.style()):
        return _chart_stacked(series, by, tr)


def _chart_stacked(series: dict[str, Any], by: str, tr: _ChartWords) -> bytes:
    rows = series["rows"]
    labels = sorted({r["period_start"] for r in rows})
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["key"]] = totals.get(r["key"], 0.0) + (r["gpu_hours"] or 0.0)
    top = [k for k, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SERIES]]
    idx = {p: i for i, p in enumerate(labels)}
    stacks: dict[str, list[float]] = {k: [0.0] * len(labels) for k in top}
    other = [0.0] * len(labels)
    for r in rows:
        target = stacks.get(r["key"], other)
        target[idx[r["period_start"]]] += r["gpu_hours"] or 0.0
    if any(other):
        stacks[tr("other")] = other
    fig = _figure(7.2, 3.0)
    ax = fig.add_subplot()
    bottom = [0.0] * len(labels)
    x = list(range(len(labels)))
    for i, (key, ys) in enumerate(stacks.items()):
        ax.bar(x, ys, bottom=bottom, color=PALETTE[i % len(PALETTE)], label=key, width=0.8)
        bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
    step = max(1, len(labels) // 12)
    ax.set_xticks(x[::step], [lab[5:] if len(labels) > 6 else lab for lab in labels][::step])
    ax.set_ylabel(tr("GPU-hours held"), fontsize=8)
    ax.set_title(tr("GPU-hours by {by}", by=tr(BY_WORDS.get(by, by))), fontsize=10, loc="left")
    _style(ax)
    if stacks:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def chart_heatmap(grid: dict[str, Any], lang: str = i18n.ENGLISH) -> bytes:
    """Average utilisation, host x sub-period."""
    tr = _ChartWords(lang)
    from matplotlib import rc_context

    with rc_context(tr.style()):
        return _chart_heatmap(grid, tr)


def _chart_heatmap(grid: dict[str, Any], tr: _ChartWords) -> bytes:
    rows = grid["rows"]
    labels = sorted({r["period_start"] for r in rows})
    hosts = sorted({r["key"] for r in rows})
    data = [[float("nan")] * len(labels) for _ in hosts]
    hi, li = {h: i for i, h in enumerate(hosts)}, {p: i for i, p in enumerate(labels)}
    for r in rows:
        if r["avg_util"] is not None:
            data[hi[r["key"]]][li[r["period_start"]]] = r["avg_util"]
    many = len(hosts) > 40
    height = max(1.6, 0.9 + (0.11 if many else 0.18) * len(hosts))
    fig = _figure(7.2, height)
    ax = fig.add_subplot()
    if hosts and labels:
        im = ax.imshow(data, aspect="auto", cmap="Blues", vmin=0, vmax=100,
                       interpolation="nearest")  # fmt: skip
        ax.set_yticks(range(len(hosts)), hosts)
        step = max(1, len(labels) // 12)
        ax.set_xticks(range(0, len(labels), step), [lab[5:] for lab in labels][::step])
        length = min(height * 0.8, 3.0)  # inches: a slim bar, whatever the host count
        bar = fig.colorbar(im, ax=ax, shrink=length / height, aspect=length / 0.12, pad=0.02)
        bar.set_label(tr("avg util %"), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    ax.tick_params(labelsize=5 if many else 7)
    period = tr(PERIOD_WORDS.get(grid["period"], grid["period"]))
    ax.set_title(tr("Utilisation, host × {period}", period=period), fontsize=10, loc="left")
    return _png(fig)


def chart_long_tail(report: dict[str, Any], lang: str = i18n.ENGLISH) -> bytes:
    """Hosts ranked by GPU-hours held (bars) with their average utilisation."""
    tr = _ChartWords(lang)
    from matplotlib import rc_context

    with rc_context(tr.style()):
        return _chart_long_tail(report, tr)


def _chart_long_tail(report: dict[str, Any], tr: _ChartWords) -> bytes:
    ranked = report["long_tail"]["hosts_ranked"]
    fig = _figure(7.2, 2.8)
    ax = fig.add_subplot()
    x = list(range(len(ranked)))
    ax.bar(x, [h["gpu_hours"] for h in ranked], color="#2f6fde", width=0.8)
    if len(ranked) <= 40:
        ax.set_xticks(x, [h["host"] for h in ranked], rotation=60, ha="right")
    else:
        ax.set_xticks([])
        ax.set_xlabel(tr("{n} hosts, busiest first", n=len(ranked)), fontsize=8)
    ax.set_ylabel(tr("GPU-hours held"), fontsize=8)
    ax.set_title(tr("Long tail: hosts ranked by use"), fontsize=10, loc="left")
    _style(ax)
    return _png(fig)


def _subperiod(period: str) -> str:
    return "month" if period == "year" else "day"


MONTHS = (
    N_("January"), N_("February"), N_("March"), N_("April"), N_("May"), N_("June"),
    N_("July"), N_("August"), N_("September"), N_("October"), N_("November"), N_("December"),
)  # fmt: skip
PERIOD_WORDS = {"day": N_("day"), "month": N_("month")}  # the charts' sub-periods
REPORT_NAMES = {
    "weekly": N_("weekly report"), "monthly": N_("monthly report"),
    "yearly": N_("yearly report"),
}  # fmt: skip


def period_label(period: str, first: date, lang: str = i18n.ENGLISH) -> str:
    if period == "week":
        return i18n.translate("week of {date}", lang, date=first.isoformat())
    if period == "month":
        month = i18n.translate(MONTHS[first.month - 1], lang)
        return i18n.translate("{month} {year}", lang, month=month, year=first.year)
    if period == "quarter":
        return i18n.translate("Q{q} {year}", lang, q=(first.month - 1) // 3 + 1, year=first.year)
    if period == "year":
        return i18n.translate("{year}", lang, year=first.year)
    return first.isoformat()


def local_fetch(settings: Settings, store: Store) -> Fetch:
    """Reports straight from a store (the server's and the CLI's way)."""
    wh = settings.warehouse

    def fetch(period: str, by: str, first: date, last: date) -> dict[str, Any]:
        return compute_report(
            store, period=period, by=by, first=first, last=last, tz=wh.timezone,
            busy_util_percent=wh.busy_util_percent, host_groups=settings.hosts.groups,
        )  # fmt: skip

    return fetch


def build_message(
    fetch: Fetch,
    *,
    to: str,
    period: str,
    by: str,
    first: date,
    last: date,
    from_address: str,
    public_url: str | None = None,
    schedule: str | None = None,
    lang: str = i18n.ENGLISH,
) -> EmailMessage:
    """The report e-mail for local days ``first``..``last``: HTML with three charts as inline
    PNG images, a plain-text twin, and the report's CSV attached; in ``lang`` (the subject,
    the text, the HTML; the charts' words too when a Chinese font is installed)."""
    from gpufleet.http.templates import TEMPLATE_DIR, translator

    def tr(msgid: str, **params: Any) -> str:
        return i18n.translate(msgid, lang, **params)

    report = fetch(period, by, first, last)
    sub = _subperiod(period)
    series = fetch(sub, by, first, last) if by != "fleet" or sub != period else report
    grid = fetch(sub, "host", first, last)
    label = period_label(period, first, lang)
    what = tr(REPORT_NAMES[schedule]) if schedule in REPORT_NAMES else tr("report")
    by_word = tr(BY_WORDS.get(by, by))
    subject = tr(
        "gpufleet {what}: GPU usage by {by}, {label} ({first} to {last})",
        what=what, by=by_word, label=label, first=first, last=last,
    )  # fmt: skip
    top = sorted(report["rows"], key=lambda r: (-(r["gpu_hours"] or 0.0), r["key"]))[:TOP_ROWS]
    link = None
    if public_url:
        q = urlencode({"period": period, "by": by, "from": first, "to": last})
        link = f"{public_url.rstrip('/')}/reports?{q}"

    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = from_address
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False)
    domain = from_address.rsplit("@", 1)[-1]
    msg["Message-ID"] = make_msgid("gpufleet-report", domain=domain)
    t, lt = report["totals"], report["long_tail"]
    text = [
        subject, "",
        tr(
            "GPU-hours held {held}, busy {busy}, held but idle {idle}; average utilisation "
            "{avg}%, p95 {p95}%; energy {kwh} kWh.",
            held=_num(t.get("gpu_hours")), busy=_num(t.get("busy_gpu_hours")),
            idle=_num(t.get("idle_held_hours")), avg=_num(t.get("avg_util")),
            p95=_num(t.get("p95_util"), 0), kwh=_num(t.get("energy_kwh")),
        ), "",
        _pad(by_word, 24) + " " + " ".join(
            _pad(tr(h), 10 if i == 0 else 8, right=True)
            for i, h in enumerate((N_("GPU-h"), N_("vs prev"), N_("avg util")))
        ),
    ]  # fmt: skip
    for r in top:
        text.append(
            f"{_pad(str(r['key']), 24)} {_num(r['gpu_hours']):>10} "
            f"{_change(r['gpu_hours_change_percent']):>8} {_num(r['avg_util']):>8}"
        )
    text += ["", tr("All rows are in the attached CSV.")]
    text += [tr("On the web: {link}", link=link)] if link else []
    msg.set_content("\n".join(text) + "\n")

    charts = {
        "stacked": chart_stacked(series, by, lang),
        "heatmap": chart_heatmap(grid, lang),
        "longtail": chart_long_tail(report, lang),
    }
    cids = {name: make_msgid(f"chart-{name}", domain=domain) for name in charts}
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape())
    env.filters["num"] = _num
    env.filters["change"] = _change
    env.globals["_"] = translator(lang)
    html = env.get_template("report-email.html").render(
        subject=subject, report=report, totals=t, long_tail=lt, top=top, by=by_word, lang=lang,
        label=label,
        first=first, last=last, link=link, cids={k: v[1:-1] for k, v in cids.items()},
        more=len(report["rows"]) - len(top),
    )  # fmt: skip
    msg.add_alternative(html, subtype="html")
    html_part: EmailMessage = msg.get_payload()[1]  # type: ignore[index,assignment]
    for name, png in charts.items():
        html_part.add_related(
            png, maintype="image", subtype="png", cid=cids[name], filename=f"{name}.png"
        )
    msg.add_attachment(
        to_csv(report).encode(), maintype="text", subtype="csv",
        filename=f"gpufleet-{period}-by-{by}-{first}-{last}.csv",
    )  # fmt: skip
    return msg


def smtp_send(settings: Settings, msg: EmailMessage) -> None:
    """Hand the message to the configured SMTP server (raises on failure)."""
    cfg = settings.mail
    if not cfg.smtp_host:
        raise RuntimeError("mail.smtp_host is not set: e-mail is off (see docs/reports.md)")
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    smtp: smtplib.SMTP
    if cfg.ssl:
        smtp = smtplib.SMTP_SSL(
            cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=context
        )
    else:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
    with smtp:
        smtp.ehlo()
        if cfg.starttls and not cfg.ssl:
            smtp.starttls(context=context)
            smtp.ehlo()
        if cfg.username:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise RuntimeError(
                    f"mail.username is set but ${cfg.password_env} (mail.password_env) is not"
                )
            smtp.login(cfg.username, password)
        smtp.send_message(msg)


def send_from_cli(
    to: str,
    settings: Settings,
    *,
    period: str,
    by: str,
    first: str | None,
    last: str | None,
    server: str | None,
    fetch_remote: Callable[..., dict[str, Any]],
    open_local: Callable[[Settings], Store],
) -> str:
    """``gpufleet report --send-to ADDR``: one report by e-mail, from the local store or a
    server's API; without dates, the latest complete ``period``."""
    from gpufleet.errors import GpufleetError
    from gpufleet.reports.service import ReportError, parse_date

    try:
        check_subscription(to, "weekly", by)
        d_first, d_last = parse_date(first, "--from"), parse_date(last, "--to")
    except (SubscriptionError, ReportError) as exc:
        raise GpufleetError(f"--send-to: {exc}", hint=_("see `gpufleet report --help`")) from None
    if d_first is None or d_last is None:
        if period == "custom":
            raise GpufleetError(_("a custom period needs --from and --to"))
        p_first, p_last, _end = last_complete_period(
            period, time.time(), settings.warehouse.timezone
        )
        d_first, d_last = d_first or p_first, d_last or p_last
    store = None
    fetch: Fetch
    if server:
        url = server

        def fetch(p: str, b: str, a: date, z: date) -> dict[str, Any]:
            return fetch_remote(url, p, b, a.isoformat(), z.isoformat(), "auto")

    else:
        store = open_local(settings)
        fetch = local_fetch(settings, store)
    cfg = settings.mail
    try:
        msg = build_message(
            fetch, to=to, period=period, by=by, first=d_first, last=d_last,
            from_address=cfg.from_address, public_url=cfg.public_url,
            lang=i18n.current.get(),  # the CLI's language (GPUFLEET_LANG, ui.language, locale)
        )  # fmt: skip
        smtp_send(settings, msg)
    except ReportError as exc:
        raise GpufleetError(str(exc), hint=_("see `gpufleet report --help`")) from None
    except (OSError, smtplib.SMTPException, RuntimeError) as exc:
        raise GpufleetError(
            _("the report was not sent: {error}", error=exc),
            hint=_("check the mail settings (mail.smtp_host, smtp_port, ...: docs/reports.md)"),
        ) from None
    finally:
        if store is not None:
            store.close()
    return _(
        "sent the {period} report by {by} ({first} to {last}) to {to}",
        period=_(PERIOD_NAMES.get(period, period)), by=_(BY_WORDS.get(by, by)),
        first=d_first, last=d_last, to=to,
    )  # fmt: skip


# -- the schedule ----------------------------------------------------------------------------


class ReportMailer:
    """Subscriptions plus the sending: ``check()`` sends what is due; the server runs it every
    ``mail.check_interval_seconds`` (``run_forever``)."""

    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.subscriptions = SubscriptionStore(Path(settings.server.data_dir) / FILE_NAME)
        self.fetch = local_fetch(settings, store)
        self._send_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.mail.smtp_host)

    def _rolled_up_until(self) -> float | None:
        try:
            state = self.store.warehouse_state()
        except Exception:  # a store without the warehouse: wait for the grace time
            return None
        from gpufleet.reports.service import rolled_up_until

        return rolled_up_until(state)  # late hours still waiting hold a report back

    def due(self, now: float | None = None) -> list[tuple[Subscription, date, date]]:
        """The (subscription, first day, last day) reports to send now."""
        now = self.clock() if now is None else now
        tz = self.settings.warehouse.timezone
        wait = self.settings.mail.wait_for_rollup_hours * 3600
        wm = self._rolled_up_until()
        sent = {(x["subscription"], x["period_start"]) for x in self.subscriptions.sent()}
        out = []
        for sub in self.subscriptions.items():
            first, last, end_ts = last_complete_period(sub.period, now, tz)
            if end_ts <= sub.created_at or (sub.id, first.isoformat()) in sent:
                continue
            if (wm is not None and wm >= end_ts) or now >= end_ts + wait:
                out.append((sub, first, last))
        return out

    def message_for(self, sub: Subscription, first: date, last: date) -> EmailMessage:
        cfg = self.settings.mail
        return build_message(
            self.fetch, to=sub.email, period=sub.period, by=sub.by, first=first, last=last,
            from_address=cfg.from_address, public_url=cfg.public_url, schedule=sub.schedule,
            lang=sub.language or self.settings.ui.language,
        )  # fmt: skip

    def check(self, now: float | None = None) -> list[dict[str, Any]]:
        """Send every due report once; a failed send is retried at the next check."""
        now = self.clock() if now is None else now
        results = []
        with self._send_lock:  # never two checks at once (no double send)
            for sub, first, last in self.due(now):
                item = {"subscription": sub.id, "email": sub.email, "period_start": str(first)}
                try:
                    msg = self.message_for(sub, first, last)
                    smtp_send(self.settings, msg)
                except Exception as exc:
                    log.warning("mail: %s report to %s failed: %s", sub.schedule, sub.email, exc)
                    results.append({**item, "sent": False, "error": str(exc)})
                    continue
                self.subscriptions.record_sent(sub.id, first.isoformat(), now, msg["Message-ID"])
                log.info("mail: sent the %s report for %s to %s", sub.schedule, first, sub.email)
                results.append({**item, "sent": True})
        return results

    def send_now(self, sub_id: str) -> dict[str, Any]:
        """A one-off send of a subscription's latest complete period (not recorded)."""
        sub = self.subscriptions.get(sub_id)
        first, last, _end = last_complete_period(
            sub.period, self.clock(), self.settings.warehouse.timezone
        )
        smtp_send(self.settings, self.message_for(sub, first, last))
        return {
            "subscription": sub.id,
            "email": sub.email,
            "period_start": str(first),
            "sent": True,
        }

    async def run_forever(self) -> None:
        if not self.enabled:
            log.info("mail: mail.smtp_host is not set; scheduled e-mail reports are off")
            return
        while True:
            try:
                await asyncio.to_thread(self.check)
            except Exception:
                log.exception("mail: checking for due reports failed; will try again")
            await asyncio.sleep(self.settings.mail.check_interval_seconds)


def attach(app: Any, ctx: Any) -> asyncio.Task:
    """Make the app's mailer (``app.state.report_mailer``) and start its task."""
    mailer = ReportMailer(ctx.settings, ctx.store)
    app.state.report_mailer = mailer
    return asyncio.create_task(mailer.run_forever())
