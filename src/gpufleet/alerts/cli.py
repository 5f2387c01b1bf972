"""``gpufleet alerts`` and ``gpufleet silence``: what fires now, and silences. Run on the server's
machine: they talk to the running server through the data dir (its admin key), or read the
alert state file (``alerts.sqlite3``) when no server runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.http.local import (
    SERVER_FILE,
    LocalAdmin,
    config_option,
    data_dir_option,
    print_rows,
    settings_from,
)
from gpufleet.i18n import _

API = "/api/v1/admin"
SPAN_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def parse_span(text: str) -> float:
    m = SPAN_RE.fullmatch(text.strip())
    if not m:
        raise click.BadParameter(_("{text!r}: write a span like 30m, 2h, 1d", text=text))
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def parse_matchers(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(
                _("{item!r}: write LABEL=PATTERN, e.g. host=dgx-0*", item=item)
            )
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class _Conn:
    """The running server's admin API (as ``gpufleet usermap`` reaches it), or the alert
    state file when no server runs (never the store: alerts keep their own file)."""

    def __init__(self, config_path: str | None, data_dir: Path | None) -> None:
        settings = settings_from(config_path, data_dir=data_dir)
        self.db: Any = None
        self.admin: LocalAdmin | None = None
        if (settings.server.data_dir / SERVER_FILE).exists():
            self.admin = LocalAdmin(settings)
            if self.admin.url is None:  # a stale server file: it opened the store; let go
                self.admin.close()
                self.admin = None
        if self.admin is None:
            from gpufleet.alerts.persist import AlertDB
            from gpufleet.alerts.service import DB_FILE

            path = settings.server.data_dir / DB_FILE
            if not path.exists():
                raise GpufleetError(
                    _(
                        "no alert state in {data_dir} and no server running",
                        data_dir=settings.server.data_dir,
                    ),
                    hint=_("start the server (gpufleet server) or pass --data-dir"),
                )
            self.db = AlertDB(path)

    @property
    def url(self) -> str | None:
        return self.admin.url if self.admin is not None else None

    def call(self, method: str, path: str, **kw: Any) -> Any:
        assert self.admin is not None
        return self.admin.call(method, path, **kw)

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.db is not None:
            self.db.close()


def _fmt_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@click.command("alerts")
@click.option("--history", is_flag=True, help="Show state changes (newest first) instead.")
@click.option("--search", "-q", help="With --history: text in the rule, host or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (what the API returns).")
@config_option
@data_dir_option
def alerts(history: bool, search: str | None, as_json: bool, config_path: str | None,
           data_dir: Path | None) -> None:  # fmt: skip
    """Firing and pending alerts, most severe first, with what mutes them (silenced,
    inhibited). Silence one with `gpufleet silence add`."""
    conn = _Conn(config_path, data_dir)
    try:
        if history:
            if conn.url:
                params = {"q": search} if search else {}
                data = conn.call("GET", f"{API}/alerts/history", params=params)
            else:
                data = {"events": conn.db.history(text=search)}
        elif conn.url:
            data = conn.call("GET", f"{API}/alerts")
        else:
            from gpufleet.alerts.engine import Alert

            alerts_ = [Alert.from_dict(d) for d in conn.db.load()[0]]
            data = {"alerts": [a.to_dict() | {"muted": None} for a in alerts_],
                    "note": "no server running: the state saved at its last tick"}  # fmt: skip
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now = time.time()
    if history:
        rows = [[e["at"], e["event"], e["alert"]["rule"], e["alert"]["summary"]]
                for e in data["events"]]  # fmt: skip
        print_rows([_("when"), _("event"), _("rule"), _("summary")], rows, time_columns={0})
        return
    if not data["alerts"]:
        click.echo(_("nothing is firing or pending"))
        return
    rows = [[a["state"], a["severity"], a["rule"], a["summary"], _fmt_age(now - a["active_since"]),
             a.get("muted") or "", a.get("acked_by") or "", a["fingerprint"]]
            for a in data["alerts"]]  # fmt: skip
    print_rows([_("state"), _("severity"), _("rule"), _("summary"), _("for"), _("muted"),
                _("ack"), "id"], rows)  # fmt: skip


@click.group("silence")
def silence() -> None:
    """Silence alerts for a while (maintenance, a known problem): matching alerts still show
    on /alerts but nobody is messaged. Matchers are LABEL=PATTERN with shell-style patterns
    (host=dgx-0*, rule=gpu_too_hot, gpu=3, user=alice, group=rack1)."""


@silence.command("add")
@click.argument("matchers", nargs=-1, required=True)
@click.option("--for", "span", required=True, help="How long: 30m, 2h, 1d.")
@click.option("--reason", required=True, help="Why (shown with the silence).")
@config_option
@data_dir_option
def silence_add(matchers: tuple[str, ...], span: str, reason: str, config_path: str | None,
                data_dir: Path | None) -> None:  # fmt: skip
    """Add a silence, e.g. `gpufleet silence add host=dgx-03 --for 2h --reason "PSU swap"`."""
    wanted, seconds = parse_matchers(matchers), parse_span(span)
    body: dict[str, Any] = {"matchers": wanted, "reason": reason, "duration_seconds": seconds}
    conn = _Conn(config_path, data_dir)
    try:
        if conn.url:
            s = conn.call("POST", f"{API}/silences", json=body)
        else:
            from pydantic import ValidationError

            from gpufleet.alerts.notify import Silence

            now = time.time()
            try:
                made = Silence(matchers=wanted, starts_at=now,
                               ends_at=now + seconds, reason=reason,
                               created_by="cli", created_at=now)  # fmt: skip
            except ValidationError as exc:
                err = exc.errors()[0]
                raise GpufleetError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            s = conn.db.add_silence(made).model_dump()
    finally:
        conn.close()
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["ends_at"]))
    click.echo(_("silence {id} until {until}: {matchers}", id=s["id"], until=until,
                 matchers=" ".join(f"{k}={v}" for k, v in s["matchers"].items())))  # fmt: skip


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also the expired ones.")
@config_option
@data_dir_option
def silence_list(show_all: bool, config_path: str | None, data_dir: Path | None) -> None:
    """The active silences (with --all: every one)."""
    conn = _Conn(config_path, data_dir)
    try:
        if conn.url:
            items = conn.call("GET", f"{API}/silences", params={"all": show_all})
            items = items["silences"]
        else:
            items = [s.model_dump() for s in
                     conn.db.silences(include_expired=show_all, now=time.time())]  # fmt: skip
    finally:
        conn.close()
    if not items:
        click.echo(_("no silences"))
        return
    rows = [[s["id"], " ".join(f"{k}={v}" for k, v in s["matchers"].items()), s["ends_at"],
             s["reason"], s["created_by"]] for s in items]  # fmt: skip
    print_rows(["id", _("matchers"), _("until"), _("reason"), _("by")], rows, time_columns={2})


@silence.command("expire")
@click.argument("silence_id")
@config_option
@data_dir_option
def silence_expire(silence_id: str, config_path: str | None, data_dir: Path | None) -> None:
    """End the silence SILENCE_ID now (`gpufleet silence list` shows the ids)."""
    conn = _Conn(config_path, data_dir)
    try:
        if conn.url:
            conn.call("DELETE", f"{API}/silences/{silence_id}")
        elif conn.db.expire_silence(silence_id, time.time()) is None:
            raise GpufleetError(_("no silence {id!r}", id=silence_id), hint="gpufleet silence list")
    finally:
        conn.close()
    click.echo(_("silence {id} expired", id=silence_id))
