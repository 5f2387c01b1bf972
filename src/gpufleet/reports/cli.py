"""``gpufleet report`` and ``gpufleet rollup``."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.http.local import config_option, data_dir_option, settings_from
from gpufleet.i18n import N_, _, plural, width
from gpufleet.reports.core import BY
from gpufleet.reports.words import BY_WORDS, PERIOD_NAMES
from gpufleet.warehouse.calendar import PERIODS

if TYPE_CHECKING:
    from gpufleet.config import Settings
    from gpufleet.store import Store


def _open_local(settings: Settings) -> Store:
    from gpufleet.store import StoreError, open_store

    try:
        return open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(
            str(exc),
            hint=_(
                "a gpufleet server owns this store: ask it instead with "
                "--server http://HOST:PORT (or set GPUFLEET_SERVER)"
            ),
        ) from None


@click.command()
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
@click.option("--by", "by", type=click.Choice(BY), default="fleet", show_default=True)
@click.option(
    "--from", "first", metavar="YYYY-MM-DD", help="First local day (default: a few periods back)."
)
@click.option(
    "--to", "last", metavar="YYYY-MM-DD", help="Last local day, included (default: today)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--server", envvar="GPUFLEET_SERVER", metavar="URL",
    help="Ask this server's API [$GPUFLEET_SERVER]. Default: the server running on the data "
    "dir if there is one (found by itself), else read the local store.",
)  # fmt: skip
@click.option(
    "--wide", is_flag=True,
    help="Every column in the table (default: the ones that fit the terminal, by priority).",
)  # fmt: skip
@click.option(
    "--tier", type=click.Choice(["auto", "day", "hour", "raw"]), default="auto", hidden=True
)
@click.option(
    "--send-to", metavar="ADDR",
    help="E-mail the report (HTML with charts, CSV attached; the mail settings' SMTP server) "
    "instead of printing it; without --from/--to: the latest complete period.",
)  # fmt: skip
@config_option
@data_dir_option
def report(
    period: str, by: str, first: str | None, last: str | None, fmt: str, server: str | None,
    wide: bool, tier: str, send_to: str | None, config_path: str | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Usage report: GPU-hours held and busy, average and p95 utilisation, memory GB-hours,
    energy, held-but-idle hours, availability and the fleet's long tail, per period.

    Days are local days in the configured warehouse.timezone. Examples:

      gpufleet report --period month --by user

      gpufleet report --period year --by host --from 2024-01-01 --to 2024-12-31 --format csv
    """
    from gpufleet.http.local import running_server
    from gpufleet.reports.service import ReportError, compute_report, parse_date, to_csv

    key = None
    settings = None
    if not server:  # the server running on this data dir, as `token` and `user` find it
        settings = settings_from(config_path, data_dir=data_dir)
        found = running_server(settings.server.data_dir)
        if found is not None:
            server, key = found

    def fetch(
        server: str, period: str, by: str, first: str | None, last: str | None, tier: str
    ) -> dict:
        return _fetch(server, period, by, first, last, tier, key=key)

    if send_to:  # a one-off e-mail (docs/reports.md)
        from gpufleet.reports.mail import send_from_cli

        settings = settings or settings_from(config_path, data_dir=data_dir)
        sent = send_from_cli(
            send_to, settings, period=period, by=by, first=first, last=last, server=server,
            fetch_remote=fetch, open_local=_open_local,
        )  # fmt: skip
        click.echo(sent)
        return
    if server:
        data = fetch(server, period, by, first, last, tier)
    else:
        assert settings is not None
        store = _open_local(settings)
        try:
            data = compute_report(
                store, period=period, by=by, first=parse_date(first, "--from"),
                last=parse_date(last, "--to"), tz=settings.warehouse.timezone, tier=tier,
                busy_util_percent=settings.warehouse.busy_util_percent,
                host_groups=settings.hosts.groups,
            )  # fmt: skip
        except ReportError as exc:
            raise GpufleetError(
                report_message(str(exc)), hint=_("see `gpufleet report --help`")
            ) from None
        finally:
            store.close()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        click.echo(to_csv(data), nl=False)
    else:
        _table(data, wide=wide)


def _fetch(
    server: str, period: str, by: str, first: str | None, last: str | None, tier: str,
    key: str | None = None,
) -> dict:  # fmt: skip
    import httpx

    params = {"period": period, "by": by, "tier": tier}
    if first:
        params["from"] = first
    if last:
        params["to"] = last
    url = server.rstrip("/") + "/api/v1/reports"
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(url, params=params, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise GpufleetError(
            _("cannot reach {url}: {error}", url=url, error=exc),
            hint=_("is the server running? check --server"),
        ) from None
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            msg = err["message"]
        except Exception:
            msg = r.text[:200]
        raise GpufleetError(
            f"{url}: {r.status_code}: {report_message(msg)}",
            hint=_("see `gpufleet report --help`"),
        )
    return r.json()


# The report's own refusals (reports.service, the API's English) as the CLI words them
REPORT_MESSAGES = (
    (re.compile(r"(?P<what>\S+)=(?P<text>'.*') is not a date; use YYYY-MM-DD"),
     N_("{what}={text} is not a date; use YYYY-MM-DD")),
    (re.compile(r"from \((?P<first>[^)]*)\) is after to \((?P<last>[^)]*)\)"),
     N_("from ({first}) is after to ({last})")),
    (re.compile(r"a custom period needs both from and to"),
     N_("a custom period needs both from and to")),
    (re.compile(r"a report covers at most 20 years"), N_("a report covers at most 20 years")),
)  # fmt: skip


def report_message(message: str) -> str:
    """A refusal of the report service in the CLI's language (unknown ones as they are)."""
    for pattern, msgid in REPORT_MESSAGES:
        if m := pattern.fullmatch(message):
            return _(msgid, **m.groupdict())
    return message


def _num(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


# The table's columns (header, field, digits; None: text), in the order they are shown, and
# the order they are kept in when the terminal is too narrow for all of them.
COLUMNS = (
    (N_("period"), "period_start", None), ("{by}", "key", None),
    (N_("GPU-h held"), "gpu_hours", 1), (N_("GPU-h busy"), "busy_gpu_hours", 1),
    (N_("idle-held h"), "idle_held_hours", 1), (N_("avg util %"), "avg_util", 1),
    (N_("p95 util %"), "p95_util", 0), (N_("mem GB-h"), "mem_gb_hours", 0),
    (N_("energy kWh"), "energy_kwh", 1), (N_("avail GPU-h"), "availability_hours", 1),
    (N_("peak GPUs"), "peak_concurrent_gpus", 0),
    (N_("held vs prev %"), "gpu_hours_change_percent", 0),
)  # fmt: skip
PRIORITY = (
    "key", "period_start", "gpu_hours", "avg_util", "idle_held_hours", "busy_gpu_hours",
    "p95_util", "peak_concurrent_gpus", "energy_kwh", "mem_gb_hours", "availability_hours",
    "gpu_hours_change_percent",
)  # fmt: skip


def fit_columns(widths: dict[str, int], room: int) -> list[str]:
    """The fields that fit in ``room`` terminal columns, taken by PRIORITY (a column costs its
    width plus 3 for borders and padding), in the table's order. Widths are in terminal
    columns: a Chinese header's characters take two each (``i18n.width``)."""
    kept: set[str] = set()
    used = 1
    for field in PRIORITY:
        if field in widths and (used + widths[field] + 3 <= room or len(kept) < 2):
            kept.add(field)
            used += widths[field] + 3
    return [f for _, f, _ in COLUMNS if f in kept]


def _table(data: dict, wide: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    by_word = _(BY_WORDS.get(data["by"], data["by"]))
    title = _(
        "GPU usage by {by}, per {period}: {first} .. {last} ({timezone})",
        by=by_word, period=_(PERIOD_NAMES.get(data["period"], data["period"])),
        first=data["from"], last=data["to"], timezone=data["timezone"],
    )  # fmt: skip
    tot = data["totals"]
    cells: dict[str, list[str]] = {}
    for _name, k, d in COLUMNS:
        values = [str(r[k]) if d is None else _num(r.get(k), d) for r in data["rows"]]
        total = _("total") if k == "period_start" else "" if d is None else _num(tot.get(k), d or 0)
        cells[k] = [*values, total]
    headers = {k: by_word if k == "key" else _(name) for name, k, _d in COLUMNS}
    widths = {k: max(width(headers[k]), *(width(v) for v in cells[k])) for k in cells}
    console = Console()
    shown = [k for _, k, _ in COLUMNS] if wide else fit_columns(widths, console.width)
    if wide:
        console = Console(width=max(console.width, sum(widths.values()) + 3 * len(widths) + 1))
    t = Table(title=title, title_justify="left", header_style="bold")
    digits = {k: d for _, k, d in COLUMNS}
    for k in shown:
        t.add_column(headers[k], justify="left" if digits[k] is None else "right", no_wrap=True)
    n = len(data["rows"])
    for i in range(n):
        t.add_row(*[cells[k][i] for k in shown])
    t.add_section()
    t.add_row(*[cells[k][n] for k in shown])
    console.print(t)
    left_out = [headers[k] for _n, k, _d in COLUMNS if k not in shown]
    if left_out:
        console.print(_("not shown (too narrow): {columns}; --wide for all",
                        columns=", ".join(left_out)), style="dim")  # fmt: skip
    lt = data["long_tail"]
    if lt["hosts"]:
        share = lt["busiest_hosts_gpu_hours_share"]
        console.print(
            _(
                "long tail: {hosts} hosts; busiest 20% hold {share} of GPU-hours; Gini of "
                "host utilisation {gini}; idle GPU-hours {idle}, of which on the least-used "
                "hosts ({least}) {least_idle}",
                hosts=lt["hosts"], share="-" if share is None else f"{share * 100:.0f}%",
                gini=_num(lt["host_util_gini"], 2), idle=_num(lt["idle_gpu_hours"]),
                least=", ".join(lt["least_used_hosts"][:5]),
                least_idle=_num(lt["least_used_idle_gpu_hours"]),
            )
        )  # fmt: skip
    console.print(
        _(
            "p95 within {points} points; tier {tier}; rolled up until {until}; avg util over "
            "{over}",
            points=f"{data['p95_error_bound_percent']:g}", tier=data["tier"],
            until=data.get("rolled_up_until") or "-", over=data.get("avg_util_over", "-"),
        ),
        style="dim",
    )  # fmt: skip
    if not data["rows"]:
        console.print(
            _(
                "no usage in this period yet: the store has no samples for it (start `gpufleet "
                "server` and an agent on each GPU server, or `make run` for the demo; --from/--to "
                "for another period)"
            ),
            style="yellow",
        )
    if data.get("late_hours_waiting"):
        console.print(
            plural(
                "{n} hour of late samples waits for the next rollup: its periods will still change",
                "{n} hours of late samples wait for the next rollup: their periods will "
                "still change",
                data["late_hours_waiting"],
            ),
            style="yellow",
        )


def _when(text: str | None, tz: str) -> float | None:
    if not text:
        return None
    from zoneinfo import ZoneInfo

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise GpufleetError(
            _("cannot read {text!r}", text=text), hint=_("use YYYY-MM-DD or an ISO 8601 time")
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.timestamp()


@click.command()
@click.option(
    "--from",
    "first",
    metavar="DATE",
    help="Start (local date or ISO time); default: the oldest raw sample.",
)
@click.option(
    "--to", "last", metavar="DATE", help="End (excluded); default: the newest raw sample."
)
@config_option
@data_dir_option
def rollup(
    first: str | None, last: str | None, config_path: str | None, data_dir: Path | None
) -> None:
    """Roll raw samples up into the warehouse tiers (minute, hour, day) of the local store.

    Without --from/--to: every completed hour since the last rollup, and the hours late
    samples touched (what the server does every warehouse.rollup_interval_seconds). With
    them: recompute that range (a backfill). Idempotent: re-running gives the same tiers.
    """
    from gpufleet.http.local import running_server

    settings = settings_from(config_path, data_dir=data_dir)
    wh = settings.warehouse
    found = running_server(settings.server.data_dir)
    if found is not None:
        raise GpufleetError(
            _(
                "the server at {url} owns this store and rolls it up by itself every "
                "{seconds} s",
                url=found[0], seconds=f"{wh.rollup_interval_seconds:g}",
            ),
            hint=_(
                "to recompute a range (--from/--to), stop the server first, then run "
                "`gpufleet rollup` again"
            ),
        )  # fmt: skip
    store = _open_local(settings)
    try:
        kw: dict[str, Any] = {
            "now": time.time(), "tz": wh.timezone, "busy_util_percent": wh.busy_util_percent,
            "from_ts": _when(first, wh.timezone), "to_ts": _when(last, wh.timezone),
        }  # fmt: skip
        if sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(_("rolling up hours"), total=None)
                done = store.rollup(
                    **kw, progress=lambda d, t: bar.update(task, completed=d, total=t)
                )
        else:
            done = store.rollup(**kw)
    finally:
        store.close()
    click.echo(
        _(
            "rolled up {hours} hour(s), {days} local day(s) in {seconds} s",
            hours=done["hours"], days=done["days"], seconds=done["seconds"],
        )
    )  # fmt: skip
