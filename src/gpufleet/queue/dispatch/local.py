"""The local dispatcher: jobs run on this machine under the same supervisor the SSH dispatcher
uses on remote hosts, with no SSH in between.

For single-machine users, and for tests of the queue that need real processes (the server-kill
test). Every host name of a :class:`Launch` runs here (or only those listed in ``hosts``); each
rank gets its own state directory under ``root`` (default ``~/.gpufleet/jobs``), so a job's
state survives this process: a new :class:`LocalDispatcher` over the same ``root`` re-attaches.

Usage::

    dispatcher = LocalDispatcher(root=Path("/var/lib/gpufleet/jobs"))
    await dispatcher.start()
    handle = await dispatcher.launch(Launch(job_id="j1", name="train", user="ada",
                                            hosts=(HostGpus("localhost", (0,)),),
                                            command=("python train.py",)))
    async for event in dispatcher.events(): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Collection
from pathlib import Path

from gpufleet.queue.dispatch import supervisor
from gpufleet.queue.dispatch.agentlink import AgentChannel, Opener
from gpufleet.queue.dispatch.base import DispatchError
from gpufleet.queue.dispatch.supervised import SupervisedDispatcher

SUPERVISOR_PATH = Path(supervisor.__file__)
LINK = "local"


class _ProcessChannel:
    """The agent as a child process of this one; closing its stdin ends it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    async def send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()

    async def readline(self) -> bytes:
        assert self._proc.stdout is not None
        return await self._proc.stdout.readline()

    async def error_text(self) -> str:
        assert self._proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                return (await self._proc.stderr.read(4096)).decode(errors="replace")
        return ""

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def wait_closed(self) -> None:
        """Reap the agent (it exits when its stdin closes; killed if it does not)."""
        self.close()
        try:
            async with asyncio.timeout(5):
                await self._proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()


async def open_local_agent(root: Path, python: str, keep_seconds: float) -> _ProcessChannel:
    """Start ``supervisor.py agent ROOT KEEP_SECONDS`` here and return its channel."""
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            str(SUPERVISOR_PATH),
            "agent",
            str(root),
            repr(float(keep_seconds)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
    except OSError as exc:
        raise DispatchError(f"cannot start the supervisor agent with {python}: {exc}") from None
    return _ProcessChannel(proc)


class LocalDispatcher(SupervisedDispatcher):
    """Run jobs on this machine, detached under the supervisor (see module docs)."""

    name = "local"

    def __init__(
        self,
        root: Path | str = "~/.gpufleet/jobs",
        *,
        hosts: Collection[str] | None = None,
        python: str = sys.executable,
        kill_grace_seconds: float = 10.0,
        keep_state_seconds: float = 30 * 86400,
    ) -> None:
        super().__init__(kill_grace_seconds=kill_grace_seconds)
        self.keep_state_seconds = keep_state_seconds
        self.root = Path(root).expanduser()
        self.hosts = frozenset(hosts) if hosts is not None else None
        self.python = python
        self._agents: list[_ProcessChannel] = []

    def _link_name(self, host: str) -> str:
        if self.hosts is not None and host not in self.hosts:
            raise DispatchError(
                f"host {host!r} is not served by the local dispatcher (it runs {sorted(self.hosts)})"
            )
        return LINK

    def _link_names(self) -> list[str]:
        return [LINK]

    def _opener(self, link_name: str) -> Opener:
        async def open_agent() -> AgentChannel:
            channel = await open_local_agent(self.root, self.python, self.keep_state_seconds)
            self._agents.append(channel)
            return channel

        return open_agent

    async def close(self) -> None:
        await super().close()
        agents, self._agents = self._agents, []
        await asyncio.gather(*(a.wait_closed() for a in agents))
