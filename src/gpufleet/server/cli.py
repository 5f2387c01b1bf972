"""``gpufleet server`` and ``gpufleet token``."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import click

from gpufleet.errors import GpufleetError
from gpufleet.http.local import (
    LocalAdmin,
    config_option,
    data_dir_option,
    fresh_token,
    open_store_or_explain,
    print_rows,
    server_file,
    settings_from,
    spawn_agent,
    stop_process,
)
from gpufleet.i18n import _

log = logging.getLogger("gpufleet.server")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)  # a requested stop, done in order: a success (for systemd too)


@click.command()
@config_option
@data_dir_option
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on.  [default: 8000]")
@click.option("--database", help="Store URL (default: DuckDB file in the data dir).")
@click.option(
    "--ingest-workers", type=click.IntRange(0, 64),
    help="Worker processes that answer agents' ingest, each on its own core; 0: the server "
    "answers it itself.  [default: ingest.workers, auto: one per core but one, up to 4]",
)  # fmt: skip
@click.option(
    "--local-agent/--no-local-agent", default=False,
    help="Also run an agent for this machine, pushing to this server (a token 'local' is made).",
)  # fmt: skip
def server(
    config_path: str | None, data_dir: Path | None, host: str | None, port: int | None,
    database: str | None, ingest_workers: int | None, local_agent: bool,
) -> None:  # fmt: skip
    """Run the gpufleet server: ingest API, live state, history, /metrics, and the agent-less
    SSH poller for the hosts in the config's ``ssh.hosts``.

    The embedded store (one DuckDB file) is created in the data dir on first start. API docs
    are served at /docs; health at /healthz.
    """
    import uvicorn

    from gpufleet.server.app import create_app
    from gpufleet.server.workers.pool import protocol_class

    settings = settings_from(
        config_path, data_dir=data_dir, host=host, port=port, database=database
    )
    if ingest_workers is not None:
        settings.ingest.workers = ingest_workers
    data = settings.server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = open_store_or_explain(settings)
    url = f"http://{settings.server.host}:{settings.server.port}"
    agent_proc = None
    if local_agent:
        agent_proc = spawn_agent(url, fresh_token(store, "local"), data / "agent-spool")
    workers = settings.ingest.worker_count()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    app = create_app(settings, store=store, ingest_workers=workers, log_level=level)
    log.info("gpufleet server on %s (data dir %s); API docs at %s/docs", url, data, url)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again with
    # the handler it found: make that an orderly exit, so the `finally` below closes the
    # store (it moves the ingest log into the database) and stops the local agent.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    try:
        with server_file(data, url):
            uvicorn.run(
                app, host=settings.server.host, port=settings.server.port, log_level="warning",
                access_log=False, backlog=4096, timeout_keep_alive=30,
                http=protocol_class(app) if workers else "auto",
            )  # fmt: skip
    finally:
        if agent_proc is not None:
            stop_process(agent_proc)
        store.close()
        log.info("gpufleet server stopped; store closed")


# -- tokens ------------------------------------------------------------------------------------


@click.group()
def token() -> None:
    """Create, list and revoke agent tokens (run on the server's machine: it reads the data dir).

    Only a hash of each token is stored; the token itself is printed once, by `create`.
    """


@token.command("create")
@click.argument("name")
@config_option
@data_dir_option
def token_create(name: str, config_path: str | None, data_dir: Path | None) -> None:
    """Create a token named NAME (e.g. the host or group it is for) and print it."""
    import re

    from gpufleet.accounts.admin import TOKEN_NAME

    if not re.fullmatch(TOKEN_NAME, name):
        raise GpufleetError(
            _("invalid token name {name!r}", name=name),
            hint=_("use letters, digits, '.', '_' and '-' (≤ 64)"),
        )
    admin = LocalAdmin(settings_from(config_path, data_dir=data_dir))
    try:
        if admin.url:
            token_text = admin.call("POST", "/api/v1/admin/tokens", json={"name": name})["token"]
        else:
            from gpufleet.http.auth import new_token
            from gpufleet.store import StoreError

            token_text, record = new_token(name)
            try:
                admin.store.create_token(record)
            except StoreError as exc:
                raise GpufleetError(
                    str(exc),
                    hint=_("gpufleet token revoke {name}, or pick another name", name=name),
                ) from None
    finally:
        admin.close()
    click.echo(token_text)
    click.echo(_("Start the agent with: gpufleet agent --server URL --token {token}",
                 token=token_text), err=True)  # fmt: skip


@token.command("list")
@config_option
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(config_path: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List tokens (names and dates, never secrets)."""
    from gpufleet.accounts.admin import token_view

    admin = LocalAdmin(settings_from(config_path, data_dir=data_dir))
    try:
        rows = (
            admin.call("GET", "/api/v1/admin/tokens")["tokens"]
            if admin.url
            else [token_view(t) for t in admin.store.tokens()]
        )
    finally:
        admin.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        [_("name"), "id", _("created"), _("revoked")],
        [[r["name"], r["id"], r["created_at"], r["revoked_at"]] for r in rows],
        time_columns={2, 3},
    )


@token.command("revoke")
@click.argument("name")
@config_option
@data_dir_option
def token_revoke(name: str, config_path: str | None, data_dir: Path | None) -> None:
    """Revoke the token named NAME: its agents get 403 from now on."""
    admin = LocalAdmin(settings_from(config_path, data_dir=data_dir))
    try:
        if admin.url:
            admin.call("DELETE", f"/api/v1/admin/tokens/{name}")
        else:
            from gpufleet.store import StoreError

            try:
                admin.store.revoke_token(name, time.time())
            except StoreError as exc:
                raise GpufleetError(
                    str(exc), hint=_("gpufleet token list shows the names")
                ) from None
    finally:
        admin.close()
    click.echo(_("revoked {name}", name=name), err=True)
