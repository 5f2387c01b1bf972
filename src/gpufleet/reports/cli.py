"""``gpufleet report`` and ``gpufleet rollup``."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.reports.calendar import PERIODS
from gpufleet.reports.core import BY
from gpufleet.server.local import config_option, data_dir_option, settings_from


def _open_local(settings) -> Any:
    from gpufleet.store import StoreError, open_store

    try:
        return open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(
            str(exc),
            hint="a gpufleet server owns this store: ask it instead with "
            "--server http://HOST:PORT (or set GPUFLEET_SERVER)",
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
    help="Ask a running server's API (default: read the local store; $GPUFLEET_SERVER).",
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
    tier: str, send_to: str | None, config_path: str | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Usage report: GPU-hours held and busy, average and p95 utilisation, memory GB-hours,
    energy, held-but-idle hours, availability and the fleet's long tail, per period.

    Days are local days in the configured warehouse.timezone. Examples:

      gpufleet report --period month --by user

      gpufleet report --period year --by host --from 2024-01-01 --to 2024-12-31 --format csv
    """
    from gpufleet.reports.service import ReportError, compute_report, parse_date, to_csv

    if send_to:  # a one-off e-mail (docs/reports.md)
        from gpufleet.reports.mail import send_from_cli

        settings = settings_from(config_path, data_dir=data_dir)
        sent = send_from_cli(
            send_to, settings, period=period, by=by, first=first, last=last, server=server,
            fetch_remote=_fetch, open_local=_open_local,
        )  # fmt: skip
        click.echo(sent)
        return
    if server:
        data = _fetch(server, period, by, first, last, tier)
    else:
        settings = settings_from(config_path, data_dir=data_dir)
        store = _open_local(settings)
        try:
            data = compute_report(
                store, period=period, by=by, first=parse_date(first, "--from"),
                last=parse_date(last, "--to"), tz=settings.warehouse.timezone, tier=tier,
                busy_util_percent=settings.warehouse.busy_util_percent,
                host_groups=settings.hosts.groups,
            )  # fmt: skip
        except ReportError as exc:
            raise GpufleetError(str(exc), hint="see `gpufleet report --help`") from None
        finally:
            store.close()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        click.echo(to_csv(data), nl=False)
    else:
        _table(data)


def _fetch(
    server: str, period: str, by: str, first: str | None, last: str | None, tier: str
) -> dict:
    import httpx

    params = {"period": period, "by": by, "tier": tier}
    if first:
        params["from"] = first
    if last:
        params["to"] = last
    url = server.rstrip("/") + "/api/v1/reports"
    try:
        r = httpx.get(url, params=params, timeout=120)
    except httpx.HTTPError as exc:
        raise GpufleetError(
            f"cannot reach {url}: {exc}", hint="is the server running? check --server"
        ) from None
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            msg = err["message"]
        except Exception:
            msg = r.text[:200]
        raise GpufleetError(f"{url}: {r.status_code}: {msg}", hint="see `gpufleet report --help`")
    return r.json()


def _num(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _table(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"GPU usage by {data['by']}, per {data['period']}: {data['from']} .. {data['to']}"
        f" ({data['timezone']})"
    )
    t = Table(title=title, title_justify="left", header_style="bold")
    cols = [
        ("period", "period_start", None), (data["by"], "key", None),
        ("GPU-h held", "gpu_hours", 1), ("GPU-h busy", "busy_gpu_hours", 1),
        ("idle-held h", "idle_held_hours", 1), ("avg util %", "avg_util", 1),
        ("p95 util %", "p95_util", 0), ("mem GB-h", "mem_gb_hours", 0),
        ("energy kWh", "energy_kwh", 1), ("avail GPU-h", "availability_hours", 1),
        ("peak GPUs", "peak_concurrent_gpus", 0), ("held vs prev %", "gpu_hours_change_percent", 0),
    ]  # fmt: skip
    for name, _, digits in cols:
        t.add_column(name, justify="left" if digits is None else "right", no_wrap=True)
    for r in data["rows"]:
        t.add_row(*[str(r[k]) if d is None else _num(r.get(k), d) for _, k, d in cols])
    tot = data["totals"]
    t.add_section()
    t.add_row("total", "", *[_num(tot.get(k), d or 0) for _, k, d in cols[2:]])
    console = Console()
    console.print(t)
    lt = data["long_tail"]
    if lt["hosts"]:
        share = lt["busiest_hosts_gpu_hours_share"]
        console.print(
            f"long tail: {lt['hosts']} hosts; busiest 20% hold "
            f"{'-' if share is None else f'{share * 100:.0f}%'} of GPU-hours; "
            f"Gini of host utilisation {_num(lt['host_util_gini'], 2)}; "
            f"idle GPU-hours {_num(lt['idle_gpu_hours'])}, of which on the least-used hosts "
            f"({', '.join(lt['least_used_hosts'][:5])}) {_num(lt['least_used_idle_gpu_hours'])}"
        )
    console.print(
        f"p95 within {data['p95_error_bound_percent']:g} points; tier {data['tier']}; "
        f"rolled up until {data.get('rolled_up_until') or '-'}",
        style="dim",
    )


def _when(text: str | None, tz: str) -> float | None:
    if not text:
        return None
    from zoneinfo import ZoneInfo

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise GpufleetError(
            f"cannot read {text!r}", hint="use YYYY-MM-DD or an ISO 8601 time"
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
    settings = settings_from(config_path, data_dir=data_dir)
    wh = settings.warehouse
    store = _open_local(settings)
    try:
        kw: dict[str, Any] = {
            "now": time.time(), "tz": wh.timezone, "busy_util_percent": wh.busy_util_percent,
            "from_ts": _when(first, wh.timezone), "to_ts": _when(last, wh.timezone),
        }  # fmt: skip
        if sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("rolling up hours", total=None)
                done = store.rollup(
                    **kw, progress=lambda d, t: bar.update(task, completed=d, total=t)
                )
        else:
            done = store.rollup(**kw)
    finally:
        store.close()
    click.echo(
        f"rolled up {done['hours']} hour(s), {done['days']} local day(s) in {done['seconds']} s"
    )
