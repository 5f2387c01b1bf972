"""``gpufleet usermap``: map Unix users to people and groups (reports ``by=person`` and
``by=group``). Like ``gpufleet user``, it runs on the server's machine: it talks to the running
server through the data dir (the local admin key), or opens the store itself when no server
runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.http.local import (
    LocalAdmin,
    config_option,
    data_dir_option,
    print_rows,
    settings_from,
)
from gpufleet.i18n import _
from gpufleet.usermap.core import Mapping, MappingError, from_store, make, parse_csv, to_csv

API = "/api/v1/admin/usermap"


def _open(config_path: str | None, data_dir: Path | None) -> LocalAdmin:
    return LocalAdmin(settings_from(config_path, data_dir=data_dir))


def _checked(fn: Any) -> Any:
    try:
        return fn()
    except MappingError as exc:
        raise GpufleetError(str(exc)) from None


@click.group()
def usermap() -> None:
    """Map Unix users to a person, a group and an e-mail address, for reports by person and by
    group and for notices about GPUs they hold idle. Users without a mapping are reported as
    themselves. Run on the server's machine (it reads the data dir); changes show in the next
    report."""


@usermap.command("set")
@click.argument("user")
@click.option("--person", help="The person (e.g. their web account name).")
@click.option("--group", "group_name", help="The group (lab, team, project).")
@click.option(
    "--email", help="Their e-mail address: notices about GPUs they hold idle go there "
    "(docs/alerts.md).",
)  # fmt: skip
@config_option
@data_dir_option
def usermap_set(
    user: str, person: str | None, group_name: str | None, email: str | None,
    config_path: str | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Map the Unix user USER to --person, --group and --email (replacing what it had)."""
    m = _checked(lambda: make(user, person, group_name, email))
    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            admin.call("PUT", f"{API}/{m.user}",
                       json={"person": m.person, "group": m.group, "email": m.email})  # fmt: skip
        else:
            admin.store.set_user_mapping(*m.row())
    finally:
        admin.close()
    click.echo(_("{user} -> person {person}, group {group}", user=m.user,
                 person=m.person or "-", group=m.group or "-")
               + (_(", e-mail {email}", email=m.email) if m.email else ""))  # fmt: skip


@usermap.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="Output format (csv is what `usermap import` reads).",
)  # fmt: skip
@config_option
@data_dir_option
def usermap_list(fmt: str, config_path: str | None, data_dir: Path | None) -> None:
    """Every mapping."""
    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            mappings = [
                Mapping(m["user"], m["person"], m["group"], m.get("email"))
                for m in admin.call("GET", API)["mappings"]
            ]
        else:
            mappings = from_store(admin.store.user_mapping())
    finally:
        admin.close()
    if fmt == "json":
        click.echo(json.dumps({"mappings": [m.view() for m in mappings]}, indent=2))
    elif fmt == "csv":
        click.echo(to_csv(mappings), nl=False)
    elif not mappings:
        click.echo(_("no mappings (every Unix user is reported as themselves)"))
    else:
        print_rows(
            [_("user"), _("person"), _("group"), _("e-mail")],
            [[m.user, m.person or "", m.group or "", m.email or ""] for m in mappings],
        )


@usermap.command("delete")
@click.argument("user")
@config_option
@data_dir_option
def usermap_delete(user: str, config_path: str | None, data_dir: Path | None) -> None:
    """Forget the mapping of the Unix user USER (they are reported as themselves again)."""
    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            admin.call("DELETE", f"{API}/{user}")
        else:
            if user not in {row[0] for row in admin.store.user_mapping()}:
                raise GpufleetError(
                    _("no mapping for the user {user!r}", user=user), hint="gpufleet usermap list"
                )
            admin.store.set_user_mapping(user, None, None)
    finally:
        admin.close()
    click.echo(_("deleted the mapping of {user}", user=user))


@usermap.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--replace", is_flag=True,
    help="Also forget the mappings of users not in the file (the file becomes the mapping).",
)  # fmt: skip
@config_option
@data_dir_option
def usermap_import(
    csv_file: str, replace: bool, config_path: str | None, data_dir: Path | None
) -> None:
    """Set the mappings in CSV_FILE ('-': standard input): a header line
    user,person,group,email, then one user per line (person, group or email may be empty or
    left out). Every line is checked before anything is stored."""
    source = "stdin" if csv_file == "-" else csv_file
    try:
        text = sys.stdin.read() if csv_file == "-" else Path(csv_file).read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GpufleetError(_("cannot read {source}: {error}", source=source, error=exc)) from None
    mappings = _checked(lambda: parse_csv(text, source))
    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            done = admin.call(
                "POST", f"{API}/import",
                json={"mappings": [m.view() for m in mappings], "replace": replace},
            )  # fmt: skip
            n_set, n_deleted = done["set"], done["deleted"]
        else:
            n_set, n_deleted = admin.store.set_user_mappings(
                [m.row() for m in mappings], replace=replace
            )
    finally:
        admin.close()
    click.echo(_("set {n} mapping(s)", n=n_set)
               + (_(", deleted {n}", n=n_deleted) if replace else ""))  # fmt: skip
