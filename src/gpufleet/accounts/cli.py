"""``gpufleet user``: create, list, change and delete web users.

Like ``gpufleet token``, it runs on the server's machine: it talks to the running server
through the data dir (``server.json`` and ``admin.key``), or opens the store itself when no
server runs. ``gpufleet user create NAME --role admin`` bootstraps the first admin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gpufleet.accounts.passwords import check_password_policy, hash_password
from gpufleet.accounts.users import ROLES, new_user, user_view
from gpufleet.errors import GpufleetError
from gpufleet.http.local import (
    LocalAdmin,
    config_option,
    data_dir_option,
    print_rows,
    settings_from,
)
from gpufleet.i18n import _

role_choice = click.Choice(ROLES)


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(_("Password"), hide_input=True, confirmation_prompt=_("Repeat it"))
    try:
        check_password_policy(password)
    except ValueError as exc:
        raise GpufleetError(str(exc), hint=_("choose a longer password")) from None
    return password


def _open(config_path: str | None, data_dir: Path | None) -> LocalAdmin:
    return LocalAdmin(settings_from(config_path, data_dir=data_dir))


def _store_error(exc: Exception, hint: str) -> GpufleetError:
    return GpufleetError(str(exc), hint=hint)


@click.group()
def user() -> None:
    """Create, list, change and delete web users (run on the server's machine: it reads the
    data dir). Roles: viewer (sees the dashboard) < user (also submits work) < admin (also
    manages tokens, hosts and users). Passwords are stored as scrypt hashes only.
    """


@user.command("create")
@click.argument("name")
@click.option("--role", type=role_choice, default="viewer", show_default=True, help="Role.")
@click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)  # fmt: skip
@config_option
@data_dir_option
def user_create(
    name: str, role: str, password_stdin: bool, config_path: str | None, data_dir: Path | None
) -> None:
    """Create the user NAME; asks for the password twice (or reads it with --password-stdin)."""
    from gpufleet.accounts.users import check_user_name
    from gpufleet.store import StoreError

    try:
        check_user_name(name)
    except ValueError as exc:
        raise GpufleetError(str(exc)) from None
    password = _read_password(password_stdin)
    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            admin.call(
                "POST",
                "/api/v1/admin/users",
                json={"name": name, "password": password, "role": role},
            )
        else:
            try:
                admin.store.create_user(new_user(name, password, role))
            except StoreError as exc:
                raise _store_error(
                    exc, _("gpufleet user delete {name}, or pick another name", name=name)
                ) from None
    finally:
        admin.close()
    click.echo(_("created {role} {name!r}; log in at /login", role=role, name=name), err=True)


@user.command("list")
@config_option
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def user_list(config_path: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List users with their role, creation and last login (never password hashes)."""
    admin = _open(config_path, data_dir)
    try:
        rows: list[dict[str, Any]] = (
            admin.call("GET", "/api/v1/admin/users")["users"]
            if admin.url
            else [user_view(u) for u in admin.store.users()]
        )
    finally:
        admin.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        [_("name"), _("role"), _("created"), _("last login")],
        [[r["name"], r["role"], r["created_at"], r["last_login"]] for r in rows],
        time_columns={2, 3},
    )


def _change(config_path: str | None, data_dir: Path | None, name: str, **changes: Any) -> None:
    from gpufleet.store import StoreError

    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            body = {k: v for k, v in changes.items() if k in ("role", "password")}
            admin.call("PATCH", f"/api/v1/admin/users/{name}", json=body)
        else:
            if "password" in changes:
                changes["password_hash"] = hash_password(changes.pop("password"))
            try:
                admin.store.update_user(name, **changes)
            except StoreError as exc:
                raise _store_error(exc, "gpufleet user list shows the names") from None
    finally:
        admin.close()


@user.command("set-role")
@click.argument("name")
@click.argument("role", type=role_choice)
@config_option
@data_dir_option
def user_set_role(name: str, role: str, config_path: str | None, data_dir: Path | None) -> None:
    """Give the user NAME the ROLE (viewer, user or admin); takes effect on their next request."""
    _change(config_path, data_dir, name, role=role)
    click.echo(_("{name!r} is now a {role}", name=name, role=role), err=True)


@user.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@config_option
@data_dir_option
def user_set_password(
    name: str, password_stdin: bool, config_path: str | None, data_dir: Path | None
) -> None:
    """Set a new password for NAME; their other sessions end."""
    _change(config_path, data_dir, name, password=_read_password(password_stdin))
    click.echo(_("password of {name!r} changed", name=name), err=True)


@user.command("delete")
@click.argument("name")
@config_option
@data_dir_option
def user_delete(name: str, config_path: str | None, data_dir: Path | None) -> None:
    """Delete the user NAME; their sessions end at once."""
    from gpufleet.store import StoreError

    admin = _open(config_path, data_dir)
    try:
        if admin.url:
            admin.call("DELETE", f"/api/v1/admin/users/{name}")
        else:
            try:
                admin.store.delete_user(name)
            except StoreError as exc:
                raise _store_error(exc, "gpufleet user list shows the names") from None
    finally:
        admin.close()
    click.echo(_("deleted {name!r}", name=name), err=True)
