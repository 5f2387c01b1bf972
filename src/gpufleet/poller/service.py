"""The agent-less poller that runs inside the server: poll each configured host over SSH on its
own task and interval, and hand every poll to the server as one :class:`gpufleet.wire.Batch`.

Usage (what the server does with its config's ``ssh.hosts``)::

    hosts = [SshHostConfig.model_validate(h) for h in settings.ssh.hosts]
    poller = SshPoller(hosts, sink)          # sink: async (Batch) -> None, e.g. the ingest path
    await poller.start()
    ...
    poller.status()   # {"gpu-07": {"ok": False, "reason": "auth failed: ...", ...}}
    await poller.stop()

A host that cannot be reached sends nothing (so it goes stale/offline like a silent agent) and
its ``status()`` says why: DNS, refused, auth, host key, timeout. A host that answers but whose
``nvidia-smi`` is missing or hung still sends host metrics; ``Sample.errors`` and ``status()``
say what is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet import __version__
from gpufleet.poller.parse import Counters, parse_poll
from gpufleet.poller.ssh import PollError, SshHostClient
from gpufleet.wire import HOST_NAME_RE, Batch, Sample

log = logging.getLogger(__name__)

Sink = Callable[[Batch], Awaitable[None]]
AGENT_VERSION = f"gpufleet-ssh/{__version__}"

_SSH_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]%-]{1,253}$")
_SSH_USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}\$?$")


class SshHostConfig(BaseModel):
    """One agent-less host, as listed under ``ssh.hosts`` in the server's config.

    ``known_hosts``: path of an OpenSSH ``known_hosts`` file used to verify the host's key.
    Left unset (``None``) the poller **accepts any host key**: anyone who can divert traffic
    to that address (DNS, ARP, a reinstalled machine) can pose as the host and feed it false
    data, and will see the poll commands (it gets no password: keys only). Set it on networks
    you do not fully trust; ``ssh-keyscan -p PORT HOST >> known_hosts`` fills it.

    The key file must be an unencrypted private key (OpenSSH or PEM). It is read when the host
    is first polled; an unreadable key shows in ``status()``, it does not stop the server.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="Name the host is shown and stored under (letters, digits, '.', '_', '-').",
    )
    host: str = Field(description="Address to connect to: DNS name, IPv4 or IPv6 address.")
    port: int = Field(22, description="SSH port.")
    user: str = Field(description="Account to log in as (needs no privileges).")
    key_file: Path = Field(description="Private key for that account (no passphrase).")
    known_hosts: Path | None = Field(
        None, description="known_hosts file to verify the host key; unset = accept any key."
    )
    interval_seconds: float = Field(5.0, description="Seconds between polls of this host.")
    timeout_seconds: float = Field(
        10.0, description="Limit for one poll (connect + command); nvidia-smi gets 40% of it."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(HOST_NAME_RE, value):
            raise ValueError(
                f"{value!r} is not a valid host name: use letters, digits, '.', '_' and '-',"
                " starting with a letter or digit (at most 253 characters)"
            )
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _SSH_HOST_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a host address: give a DNS name or an IP address,"
                " without user@ or :port (use the 'user' and 'port' keys)"
            )
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {value}")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _SSH_USER_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid Unix user name")
        return value

    @field_validator("key_file", "known_hosts")
    @classmethod
    def _path(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if str(value).strip() in ("", "."):
            raise ValueError("must be a file path")
        return value.expanduser()

    @field_validator("interval_seconds")
    @classmethod
    def _interval(cls, value: float) -> float:
        if not 0.5 <= value <= 86400:
            raise ValueError(f"interval_seconds must be between 0.5 and 86400, got {value}")
        return value

    @field_validator("timeout_seconds")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 1 <= value <= 600:
            raise ValueError(f"timeout_seconds must be between 1 and 600, got {value}")
        return value

    def client(self) -> SshHostClient:
        return SshHostClient(
            host=self.host,
            port=self.port,
            user=self.user,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
            timeout_seconds=self.timeout_seconds,
        )


@dataclass
class _HostState:
    config: SshHostConfig
    client: SshHostClient
    counters: Counters | None = None
    task: asyncio.Task[None] | None = None
    status: dict[str, Any] = field(default_factory=dict)


class SshPoller:
    """Poll ``hosts`` over SSH, each on its own task, and pass each poll's batch to ``sink``."""

    def __init__(
        self,
        hosts: Sequence[SshHostConfig],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._hosts: dict[str, _HostState] = {}
        for cfg in hosts:
            if cfg.name in self._hosts:
                raise ValueError(f"ssh host {cfg.name!r} is listed twice")
            self._hosts[cfg.name] = _HostState(
                cfg,
                cfg.client(),
                status={
                    "ok": False,
                    "reason": "not polled yet",
                    "kind": None,
                    "reachable": None,
                    "last_poll": None,
                    "last_ok": None,
                    "latency_seconds": None,
                    "sink_error": None,
                },
            )
        self._running = False

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    async def start(self) -> None:
        """Start one polling task per host (spread over the first interval)."""
        if self._running:
            return
        self._running = True
        count = len(self._hosts)
        for i, state in enumerate(self._hosts.values()):
            offset = state.config.interval_seconds * i / count
            state.task = asyncio.create_task(
                self._run(state, offset), name=f"ssh-poll:{state.config.name}"
            )

    async def stop(self) -> None:
        """Stop polling and close every SSH connection."""
        self._running = False
        tasks = [s.task for s in self._hosts.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._hosts.values():
            state.task = None
            await state.client.close()

    def client(self, name: str) -> SshHostClient:
        """The SSH client (and its one connection) of a host, to share with the dispatcher."""
        return self._hosts[name].client

    def status(self) -> dict[str, dict[str, Any]]:
        """Per host: ``ok`` (last poll gave a sample without errors), ``reason`` (why not),
        ``kind`` (dns, refused, auth, timeout, nvidia-smi, ...), ``reachable``, ``last_poll``,
        ``last_ok`` (Unix seconds), ``latency_seconds``, ``sink_error``."""
        return {name: dict(state.status) for name, state in self._hosts.items()}

    async def poll_once(self, name: str) -> Sample | None:
        """Poll one host now and send its batch; return the sample (``None`` when unreachable:
        ``status()[name]["reason"]`` says why)."""
        return await self._poll_and_send(self._hosts[name])

    async def _run(self, state: _HostState, offset: float) -> None:
        loop = asyncio.get_running_loop()
        interval = state.config.interval_seconds
        next_at = loop.time() + offset
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self._poll_and_send(state)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad round end the host's task
                log.exception("ssh poll of %s failed unexpectedly", state.config.name)
            next_at += interval
            now = loop.time()
            if next_at < now:  # a poll overran: skip the missed ticks, keep the phase
                next_at += ((now - next_at) // interval + 1) * interval

    async def _poll_and_send(self, state: _HostState) -> Sample | None:
        cfg = state.config
        status = state.status
        try:
            raw = await state.client.poll()
        except PollError as exc:
            status.update(
                ok=False,
                reason=exc.reason,
                kind=exc.kind,
                reachable=exc.kind == "exit",  # logged in, but the command failed
                last_poll=self._clock(),
                latency_seconds=None,
            )
            if exc.kind in ("timeout", "dns", "refused", "unreachable", "network"):
                log.info("ssh poll of %s: %s", cfg.name, exc.reason)
            else:
                log.warning("ssh poll of %s: %s", cfg.name, exc.reason)
            return None
        ts = self._clock()
        try:
            sample, state.counters = parse_poll(
                raw.text,
                host=cfg.name,
                ts=ts,
                interval_seconds=cfg.interval_seconds,
                previous=state.counters,
                agent_version=AGENT_VERSION,
            )
        except Exception as exc:
            log.exception("ssh poll of %s: could not parse its output", cfg.name)
            status.update(
                ok=False,
                reason=f"could not parse the poll output: {exc}"[:1000],
                kind="parse",
                reachable=True,
                last_poll=ts,
                latency_seconds=raw.latency_seconds,
            )
            return None
        kind = None
        if sample.errors:
            first = sample.errors[0]
            kind = "nvidia-smi" if first.startswith("nvidia-smi") else "partial"
        status.update(
            ok=not sample.errors,
            reason="; ".join(sample.errors)[:1000] or None,
            kind=kind,
            reachable=True,
            last_poll=ts,
            latency_seconds=raw.latency_seconds,
        )
        if not sample.errors:
            status["last_ok"] = ts
        batch = Batch(
            batch_id=f"ssh:{cfg.name[:80]}:{uuid.uuid4().hex}",
            source="ssh",
            agent_version=AGENT_VERSION,
            sent_at=max(self._clock(), ts),
            samples=[sample],
        )
        try:
            await self._sink(batch)
            status["sink_error"] = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server's problem, not the host's: keep polling
            log.exception("ssh poll of %s: the sink rejected the batch", cfg.name)
            status["sink_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        return sample
