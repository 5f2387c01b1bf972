"""``gpufleet server`` and ``gpufleet token``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from gpufleet.config import Settings, load_settings
from gpufleet.errors import GpufleetError

log = logging.getLogger("gpufleet.server")

SERVER_FILE = "server.json"

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False),
    help="YAML config file (default: $GPUFLEET_CONFIG, else built-in defaults).",
)  # fmt: skip
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the store and state (default: ./gpufleet-data or $GPUFLEET_DATA_DIR).",
)  # fmt: skip


def _settings(config_path: str | None, **server: Any) -> Settings:
    return load_settings(config_path, overrides={"server": server})


@click.command()
@config_option
@data_dir_option
@click.option("--host", help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on.  [default: 8000]")
@click.option("--database", help="Store URL (default: DuckDB file in the data dir).")
@click.option(
    "--local-agent/--no-local-agent", default=False,
    help="Also run an agent for this machine, pushing to this server (a token 'local' is made).",
)  # fmt: skip
def server(
    config_path: str | None, data_dir: Path | None, host: str | None, port: int | None,
    database: str | None, local_agent: bool,
) -> None:  # fmt: skip
    """Run the gpufleet server: ingest API, live state, history, /metrics, and the agent-less
    SSH poller for the hosts in the config's ``ssh.hosts``.

    The embedded store (one DuckDB file) is created in the data dir on first start. API docs
    are served at /docs; health at /healthz.
    """
    import uvicorn

    from gpufleet.server.app import create_app
    from gpufleet.store import StoreError, open_store

    settings = _settings(config_path, data_dir=data_dir, host=host, port=port, database=database)
    data = settings.server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    try:
        store = open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(
            str(exc), hint=f"is another gpufleet server using {data}? stop it or pass --data-dir"
        ) from None
    url = f"http://{settings.server.host}:{settings.server.port}"
    agent_proc: subprocess.Popen | None = None
    if local_agent:
        token = _local_token(store)
        agent_proc = _spawn_agent(url, token, data / "agent-spool")
    app = create_app(settings, store=store)
    (data / SERVER_FILE).write_text(json.dumps({"url": url, "pid": os.getpid()}))
    log.info("gpufleet server on %s (data dir %s); API docs at %s/docs", url, data, url)
    try:
        uvicorn.run(
            app, host=settings.server.host, port=settings.server.port, log_level="warning",
            access_log=False, backlog=4096, timeout_keep_alive=30,
        )  # fmt: skip
    finally:
        if agent_proc is not None:
            agent_proc.send_signal(signal.SIGTERM)
            try:
                agent_proc.wait(10)
            except subprocess.TimeoutExpired:
                agent_proc.kill()
        (data / SERVER_FILE).unlink(missing_ok=True)
        store.close()


def _local_token(store) -> str:
    """A fresh token for the local agent (the previous 'local' token is revoked)."""
    from gpufleet.server.auth import new_token

    for t in store.tokens():
        if t.name == "local" and t.revoked_at is None:
            store.revoke_token("local", time.time())
    name = "local"
    if any(t.name == name for t in store.tokens()):
        name = f"local-{int(time.time())}"
    token, record = new_token(name)
    store.create_token(record)
    return token


def _spawn_agent(url: str, token: str, spool: Path) -> subprocess.Popen:
    env = {**os.environ, "GPUFLEET_TOKEN": token}
    cmd = [sys.executable, "-m", "gpufleet", "agent", "--server", url, "--spool-dir", str(spool)]
    log.info("starting a local agent: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env)


# -- tokens ------------------------------------------------------------------------------------


class _Admin:
    """Talks to the running server if there is one, else opens the store file itself."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url, self.key = self._running_server()
        self.store = None
        if self.url is None:
            from gpufleet.store import StoreError, open_store

            try:
                self.store = open_store(settings.database_url)
            except StoreError as exc:
                raise GpufleetError(
                    str(exc), hint="is a gpufleet server running with this data dir? "
                    f"its {SERVER_FILE} is missing from {settings.server.data_dir}",
                ) from None  # fmt: skip

    def _running_server(self) -> tuple[str | None, str | None]:
        data = self.settings.server.data_dir
        try:
            info = json.loads((data / SERVER_FILE).read_text())
            os.kill(int(info["pid"]), 0)
            key = (data / "admin.key").read_text().strip()
        except (OSError, ValueError, KeyError):
            return None, None
        return info["url"], key

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = httpx.request(
                method,
                self.url + path,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=10,
                **kw,
            )
        except httpx.HTTPError as exc:
            raise GpufleetError(f"cannot reach the server at {self.url}: {exc}") from None
        if r.status_code >= 400:
            raise GpufleetError(r.json().get("error", {}).get("message", r.text))
        return r.json()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


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

    from gpufleet.server.admin import TOKEN_NAME

    if not re.fullmatch(TOKEN_NAME, name):
        raise GpufleetError(
            f"invalid token name {name!r}", hint="use letters, digits, '.', '_' and '-' (≤ 64)"
        )
    admin = _Admin(_settings(config_path, data_dir=data_dir))
    try:
        if admin.url:
            token_text = admin.call("POST", "/api/v1/admin/tokens", json={"name": name})["token"]
        else:
            from gpufleet.server.auth import new_token
            from gpufleet.store import StoreError

            token_text, record = new_token(name)
            try:
                admin.store.create_token(record)
            except StoreError as exc:
                raise GpufleetError(
                    str(exc), hint=f"gpufleet token revoke {name}, or pick another name"
                ) from None
    finally:
        admin.close()
    click.echo(token_text)
    click.echo(f"Start the agent with: gpufleet agent --server URL --token {token_text}", err=True)


@token.command("list")
@config_option
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(config_path: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List tokens (names and dates, never secrets)."""
    from gpufleet.server.admin import token_view

    admin = _Admin(_settings(config_path, data_dir=data_dir))
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
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "id", "created", "revoked")
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""  # noqa: E731
    for r in rows:
        table.add_row(r["name"], r["id"], fmt(r["created_at"]), fmt(r["revoked_at"]))
    Console().print(table)


@token.command("revoke")
@click.argument("name")
@config_option
@data_dir_option
def token_revoke(name: str, config_path: str | None, data_dir: Path | None) -> None:
    """Revoke the token named NAME: its agents get 403 from now on."""
    admin = _Admin(_settings(config_path, data_dir=data_dir))
    try:
        if admin.url:
            admin.call("DELETE", f"/api/v1/admin/tokens/{name}")
        else:
            from gpufleet.store import StoreError

            try:
                admin.store.revoke_token(name, time.time())
            except StoreError as exc:
                raise GpufleetError(str(exc), hint="gpufleet token list shows the names") from None
    finally:
        admin.close()
    click.echo(f"revoked {name}", err=True)
