"""Running gpufleet on this machine from the command line: what `gpufleet server`, `gpufleet
demo`, `gpufleet token` and `gpufleet user` share.

- ``open_store_or_explain``: open the store, or say which server holds it;
- ``server_file``: while a server runs, ``<data dir>/server.json`` says where (URL, pid), so the
  admin commands talk to it instead of opening the store the server owns;
- ``LocalAdmin``: the running server's admin API (authorised by the data dir's admin key), or
  the store itself when no server runs;
- ``fresh_token``, ``spawn_agent``, ``stop_process``: the local agent a server or demo starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import click

from gpufleet.config import Settings, load_settings
from gpufleet.errors import GpufleetError
from gpufleet.i18n import _
from gpufleet.store import Store

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


def settings_from(config_path: str | None, **server: Any) -> Settings:
    """Settings from the config file and environment, with the ``server`` flags on top."""
    return load_settings(config_path, overrides={"server": server})


def open_store_or_explain(settings: Settings) -> Store:
    from gpufleet.store import StoreError, open_store

    try:
        return open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(
            str(exc),
            hint=_(
                "is another gpufleet server using {data_dir}? stop it or pass --data-dir",
                data_dir=settings.server.data_dir,
            ),
        ) from None


@contextlib.contextmanager
def server_file(data_dir: Path, url: str) -> Iterator[None]:
    """Announce a running server in its data dir for as long as the block runs."""
    path = data_dir / SERVER_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def fresh_token(store: Store, name: str) -> str:
    """A new agent token named ``name``; a live earlier one of that name is revoked."""
    from gpufleet.http.auth import new_token

    now = time.time()
    for t in store.tokens():
        if t.name == name and t.revoked_at is None:
            store.revoke_token(name, now)
    if any(t.name == name for t in store.tokens()):
        name = f"{name}-{int(now)}"
    token, record = new_token(name)
    store.create_token(record)
    return token


def spawn_agent(url: str, token: str, spool: Path) -> subprocess.Popen:
    """A real `gpufleet agent` for this machine, pushing to ``url``."""
    env = {**os.environ, "GPUFLEET_TOKEN": token}
    cmd = [sys.executable, "-m", "gpufleet", "agent", "--server", url, "--spool-dir", str(spool)]
    log.info("starting a local agent: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def running_server(data_dir: Path) -> tuple[str, str] | None:
    """(URL, admin key) of the server running on ``data_dir`` (its ``server.json`` names a
    live process), or None: how every CLI command finds it by itself."""
    try:
        info = json.loads((data_dir / SERVER_FILE).read_text())
        os.kill(int(info["pid"]), 0)
        key = (data_dir / "admin.key").read_text().strip()
        return str(info["url"]), key
    except (OSError, ValueError, KeyError, TypeError):
        return None


class LocalAdmin:
    """Talks to the running server if there is one, else opens the store file itself."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url, self.key = self._running_server()
        self.store: Any = None
        if self.url is None:
            from gpufleet.store import StoreError, open_store

            try:
                self.store = open_store(settings.database_url)
            except StoreError as exc:
                raise GpufleetError(
                    str(exc), hint=_(
                        "is a gpufleet server running with this data dir? its {file} is "
                        "missing from {data_dir}", file=SERVER_FILE,
                        data_dir=settings.server.data_dir,
                    ),
                ) from None  # fmt: skip

    def _running_server(self) -> tuple[str | None, str | None]:
        found = running_server(self.settings.server.data_dir)
        return found if found is not None else (None, None)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        assert self.url is not None, "call() needs a running server (see .url)"
        try:
            r = httpx.request(
                method,
                self.url + path,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=10,
                **kw,
            )
        except httpx.HTTPError as exc:
            raise GpufleetError(
                _("cannot reach the server at {url}: {error}", url=self.url, error=exc)
            ) from None
        if r.status_code >= 400:
            raise GpufleetError(r.json().get("error", {}).get("message", r.text))
        return r.json()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def print_rows(
    headers: list[str], rows: list[list[Any]], time_columns: AbstractSet[int] = frozenset()
) -> None:
    """A tidy terminal table; Unix times in ``time_columns`` shown as local dates."""
    from rich.table import Table

    from gpufleet.termtable import print_table

    table = Table(*headers)
    for row in rows:
        table.add_row(*[
            (time.strftime("%Y-%m-%d %H:%M", time.localtime(v)) if v else "")
            if i in time_columns else str(v)
            for i, v in enumerate(row)
        ])  # fmt: skip
    print_table(table)
