"""The SSH dispatcher: jobs run on the fleet's servers under the supervisor, reached over the
poller's SSH connections (one per host, reused; asyncssh).

Per host there is one long-lived SSH session running the supervisor's *agent*: the dispatcher
pipes ``supervisor.py`` (standard library only) into ``python3 -c`` on it, so nothing is
installed on the host; it needs POSIX ``sh``, ``python3`` >= 3.7 and Linux ``/proc``. Launch,
cancel, status and logs are JSON lines on that session; a job's exit is pushed by its
supervisor to the agent (a datagram on ``<state_dir>/.agent.sock``) and from there to us, so
completion costs no polling: one idle ``python3`` process and one SSH channel per host.

Hosts are named as the poller names them (``SshHostConfig.name``); pass the poller's clients
(``SshPoller.client(name)``) to share its connections. A host whose connection cannot be
re-opened for ``host_down_after_seconds`` gets its jobs reported ``FAILED`` with reason
``host down`` (docs/dispatchers.md); jobs keep running there, and if the host comes back
those runs are stopped, so a requeued copy never runs beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncssh

from gpufleet.poller.service import SshHostConfig
from gpufleet.poller.ssh import PollError, SshHostClient
from gpufleet.queue.dispatch import supervisor
from gpufleet.queue.dispatch.agentlink import AgentChannel, Opener
from gpufleet.queue.dispatch.base import DispatchError
from gpufleet.queue.dispatch.supervised import SupervisedDispatcher

SUPERVISOR_SOURCE = Path(supervisor.__file__).read_bytes()
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./~+-]{1,1024}$")
# Reads exactly N bytes of program from stdin, then runs it; the rest of stdin is the protocol.
# Only characters that every login shell (sh, bash, zsh, fish, csh) leaves alone in '...'.
_BOOTSTRAP = (
    "import os,sys;n=int(sys.argv[1]);b=bytes();"
    'exec("while len(b)<n:\\n c=os.read(0,n-len(b))\\n if not c: sys.exit(3)\\n b+=c");'
    'sys.argv=["gpufleet-supervisor"]+sys.argv[2:];'
    'exec(compile(b,"gpufleet-supervisor","exec"))'
)


def agent_command(python: str, state_dir: str, keep_seconds: float = 30 * 86400) -> str:
    """The remote command line that starts the agent from the source we send on stdin."""
    for what, value in (("python", python), ("state_dir", state_dir)):
        if not _SAFE_ARG.match(value):
            raise ValueError(f"{what} {value!r}: use letters, digits and '_./~+-' only")
    keep = repr(float(keep_seconds))
    return f"{python} -c '{_BOOTSTRAP}' {len(SUPERVISOR_SOURCE)} agent '{state_dir}' {keep}"


class _SshChannel:
    def __init__(self, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self._proc = proc

    async def send(self, data: bytes) -> None:
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()

    async def readline(self) -> bytes:
        return await self._proc.stdout.readline()

    async def error_text(self) -> str:
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(2):
                return (await self._proc.stderr.read(4096)).decode(errors="replace")
        return ""

    def close(self) -> None:
        self._proc.close()


async def open_ssh_agent(name: str, client: SshHostClient, command: str) -> AgentChannel:
    """Start the agent on ``client``'s host over its (reused) connection."""
    try:
        conn = await client.connection()
    except PollError as exc:
        raise DispatchError(f"host {name} down: {exc.reason}") from None
    try:
        proc = await conn.create_process(command, encoding=None)
    except (asyncssh.Error, OSError) as exc:
        raise DispatchError(f"host {name} down: {client.classify(exc).reason}") from None
    proc.stdin.write(SUPERVISOR_SOURCE)
    return _SshChannel(proc)


class SshDispatcher(SupervisedDispatcher):
    """Run jobs on SSH hosts under the supervisor (see module docs)."""

    name = "ssh"

    def __init__(
        self,
        hosts: Sequence[SshHostConfig],
        *,
        clients: Mapping[str, SshHostClient] | None = None,
        state_dir: str = "~/.gpufleet/jobs",
        state_dirs: Mapping[str, str] | None = None,
        python: str = "python3",
        kill_grace_seconds: float = 10.0,
        host_down_after_seconds: float = 60.0,
        keep_state_seconds: float = 30 * 86400,
    ) -> None:
        super().__init__(
            kill_grace_seconds=kill_grace_seconds,
            host_down_after_seconds=host_down_after_seconds,
        )
        self._configs = {h.name: h for h in hosts}
        if len(self._configs) != len(hosts):
            raise ValueError("ssh dispatcher: a host name is listed twice")
        self._shared = dict(clients or {})
        self._own: dict[str, SshHostClient] = {}
        self._commands = {
            name: agent_command(python, (state_dirs or {}).get(name, state_dir), keep_state_seconds)
            for name in self._configs
        }

    def _link_name(self, host: str) -> str:
        if host not in self._configs:
            raise DispatchError(
                f"host {host!r} is not an SSH host of this dispatcher"
                f" (known: {', '.join(sorted(self._configs)) or 'none'})"
            )
        return host

    def _link_names(self) -> list[str]:
        return list(self._configs)

    def client(self, host: str) -> SshHostClient:
        """The SSH client of ``host``: the poller's when shared, else one of our own."""
        shared = self._shared.get(host)
        if shared is not None:
            return shared
        if host not in self._own:
            self._own[host] = self._configs[host].client()
        return self._own[host]

    def _opener(self, link_name: str) -> Opener:
        command = self._commands[link_name]
        return lambda: open_ssh_agent(link_name, self.client(link_name), command)

    async def close(self) -> None:
        await super().close()
        await asyncio.gather(*(c.close() for c in self._own.values()))
