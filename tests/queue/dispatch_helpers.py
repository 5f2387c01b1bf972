"""What the dispatcher tests share (local, SSH, Slurm, Kubernetes): an event recorder, a
condition waiter, and the job scenarios the local and SSH dispatchers must both pass."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from gpufleet.queue.dispatch.base import Dispatcher, DispatchEvent, EventKind, HostGpus, Launch

DEADLINE_SECONDS = 180.0  # generous: a condition, never a speed claim (Slurm on a busy machine)


class Recorder:
    """Reads a dispatcher's events in the background; tests wait for the ones they expect."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.events: list[DispatchEvent] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(dispatcher))

    async def _run(self, dispatcher: Dispatcher) -> None:
        async for event in dispatcher.events():
            self.events.append(event)
            self._changed.set()

    def of(self, job_id: str) -> list[DispatchEvent]:
        return [e for e in self.events if e.job_id == job_id]

    def kinds(self, job_id: str) -> list[EventKind]:
        return [e.kind for e in self.of(job_id)]

    async def wait(self, job_id: str, kind: EventKind) -> DispatchEvent:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            for event in self.of(job_id):
                if event.kind == kind:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} event for {job_id}; got {self.of(job_id)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_end(self, job_id: str) -> DispatchEvent:
        """The terminal event of ``job_id`` (anything but STARTED)."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            ends = [e for e in self.of(job_id) if e.kind != EventKind.STARTED]
            if ends:
                return ends[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{job_id} did not end; events: {self.of(job_id)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


D = TypeVar("D", bound=Dispatcher)


@contextlib.asynccontextmanager
async def started(d: Dispatcher) -> AsyncIterator[Recorder]:
    """Start ``d`` and record its events; close both at the end."""
    assert isinstance(d, Dispatcher)
    await d.start()
    rec = Recorder(d)
    try:
        yield rec
    finally:
        await rec.stop()
        await d.close()


def drive(make: Callable[[], D], body: Callable[[D, Recorder], Awaitable[None]]) -> None:
    """Run ``body`` against a started dispatcher in a fresh event loop."""

    async def main() -> None:
        d = make()
        async with started(d) as rec:
            await body(d, rec)

    asyncio.run(main())


async def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until_sync(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def launch(
    job_id: str,
    script: str,
    hosts: tuple[tuple[str, tuple[int, ...]], ...] = (("h1", (0,)),),
    **kw: object,
) -> Launch:
    """A job that runs ``script`` through the shell on ``hosts``."""
    return Launch(
        job_id=job_id,
        name=f"test {job_id}",
        user="tester",
        hosts=tuple(HostGpus(h, g) for h, g in hosts),
        command=(script,),
        **kw,  # type: ignore[arg-type]
    )


def runs(marker: Path) -> int:
    """How many times a job whose script appends to ``marker`` has started."""
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def q(path: Path) -> str:
    return shlex.quote(str(path))


# ---- scenarios both dispatchers pass ------------------------------------------------------


async def scenario_env_exit_logs(d: Dispatcher, rec: Recorder, tmp: Path, host: str) -> None:
    """The job sees CUDA_VISIBLE_DEVICES and GPUFLEET_*; its exit code and output come back."""
    env_file = tmp / "env.txt"
    script = (
        f"env > {q(env_file)}; echo hello from the job; echo to stderr >&2; "
        f"pwd >> {q(env_file)}; exit 3"
    )
    job = launch("env-1", script, ((host, (2, 5)),), env={"EXTRA": "x y"}, workdir=str(tmp))
    handle = await d.launch(job)
    assert handle.endswith(f"@{host}")
    end = await rec.wait("env-1", EventKind.EXITED)
    assert rec.kinds("env-1") == [EventKind.STARTED, EventKind.EXITED]
    assert end.exit_code == 3 and end.reason is None and end.handle == handle
    lines = env_file.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5"
    assert env["GPUFLEET_JOB_ID"] == "env-1"
    assert env["GPUFLEET_RANK"] == "0"
    assert env["GPUFLEET_HOSTS"] == host
    assert env["EXTRA"] == "x y"
    assert "SSH_CONNECTION" not in env  # the job is not part of the session that started it
    assert lines[-1] == str(tmp)
    text = await d.logs("env-1", handle)
    assert "hello from the job\n" in text and "to stderr\n" in text
    assert (await d.logs("env-1", handle, tail_bytes=10)) == text[-10:]

    ok = await d.launch(launch("ok-1", "exit 0", ((host, (0,)),)))
    end = await rec.wait_end("ok-1")
    assert (end.kind, end.exit_code, end.reason, end.handle) == (EventKind.EXITED, 0, None, ok)


async def scenario_oom(d: Dispatcher, rec: Recorder, host: str) -> None:
    """CUDA out-of-memory output plus a failing exit is reported as "oom"; the same words in
    a job that succeeds, or a plain failure, are not."""
    oom = (
        "echo 'Traceback (most recent call last):' >&2; "
        "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2; exit 1"
    )
    await d.launch(launch("oom-1", oom, ((host, (0,)),)))
    await d.launch(launch("oom-2", "echo CUDA_ERROR_OUT_OF_MEMORY; exit 7", ((host, (0,)),)))
    cupy = (
        "echo 'cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 429,496,729,600"
        " bytes (allocated so far: 0 bytes).' >&2; exit 1"
    )  # as CuPy said it on an H200
    await d.launch(launch("oom-3", cupy, ((host, (0,)),)))
    await d.launch(launch("oom-ok", "echo 'CUDA out of memory, retrying smaller'", ((host, (0,)),)))
    await d.launch(launch("plain-fail", "echo ValueError; exit 1", ((host, (0,)),)))
    for job_id, code in (("oom-1", 1), ("oom-2", 7), ("oom-3", 1)):
        end = await rec.wait_end(job_id)
        assert (end.kind, end.exit_code, end.reason) == (EventKind.FAILED, code, "oom")
    end = await rec.wait_end("oom-ok")
    assert (end.kind, end.exit_code, end.reason) == (EventKind.EXITED, 0, None)
    end = await rec.wait_end("plain-fail")
    assert (end.kind, end.exit_code, end.reason) == (EventKind.EXITED, 1, None)


async def scenario_cancel(d: Dispatcher, rec: Recorder, tmp: Path, host: str) -> None:
    """Cancel stops the whole process group, escalating to SIGKILL for a job that ignores
    SIGTERM (the dispatcher's kill grace is short in these tests)."""
    child_pid = tmp / "child.pid"
    stubborn = (
        f"trap '' TERM; (trap '' TERM; sleep 300) & echo $! > {q(child_pid)}; "
        "echo ready; while true; do sleep 1; done"
    )
    handle = await d.launch(launch("cancel-1", stubborn, ((host, (0,)),)))
    await rec.wait("cancel-1", EventKind.STARTED)
    await wait_until(child_pid.exists, "the job's child to start")
    await wait_until(lambda: bool(child_pid.read_text().strip()), "the child's pid")
    child = int(child_pid.read_text())
    await d.cancel("cancel-1", handle)
    end = await rec.wait_end("cancel-1")
    assert (end.kind, end.reason) == (EventKind.CANCELLED, "cancelled")
    assert end.exit_code == 128 + 9  # it ignored SIGTERM: killed after the grace period
    await wait_until(lambda: not pid_alive(child), "the job's child to be killed")
    await d.cancel("cancel-1", handle)  # cancelling an ended job does nothing
    assert rec.kinds("cancel-1") == [EventKind.STARTED, EventKind.CANCELLED]


async def scenario_idempotent(d: Dispatcher, rec: Recorder, tmp: Path, host: str) -> None:
    """A second launch of the same job id starts nothing and returns the same handle."""
    marker, go = tmp / "idem.runs", tmp / "idem.go"
    script = f"echo run >> {q(marker)}; while [ ! -e {q(go)} ]; do sleep 0.05; done"
    job = launch("idem-1", script, ((host, (0,)),))
    first = await d.launch(job)
    again = await asyncio.gather(*(d.launch(job) for _ in range(3)))
    assert again == [first] * 3
    go.touch()
    await rec.wait("idem-1", EventKind.EXITED)
    assert runs(marker) == 1
    assert rec.kinds("idem-1") == [EventKind.STARTED, EventKind.EXITED]


async def scenario_rerun(d: Dispatcher, rec: Recorder, tmp: Path, host: str) -> None:
    """A job id launched again after its run ended (preempted, requeued) runs again, as a
    new run with its own handle, log and exit; the earlier run's news does not leak into it."""
    marker, go = tmp / "rerun.runs", tmp / "rerun.go"
    script = f"echo run $(wc -l < {q(marker)}) >> {q(marker)}; {wait_for_file(go)}; exit 9"
    marker.touch()
    first = await d.launch(launch("rerun-1", script, ((host, (0,)),)))
    await rec.wait("rerun-1", EventKind.STARTED)
    await wait_until(lambda: runs(marker) == 1, "the first run")
    await d.cancel("rerun-1", first)  # preempted
    assert (await rec.wait_end("rerun-1")).kind == EventKind.CANCELLED
    rec.events.clear()
    second = await d.launch(launch("rerun-1", script, ((host, (1,)),)))
    assert second != first
    assert await d.launch(launch("rerun-1", script, ((host, (1,)),))) == second
    await wait_until(lambda: runs(marker) == 2, "the second run")
    go.touch()
    end = await rec.wait_end("rerun-1")
    assert (end.kind, end.exit_code, end.handle) == (EventKind.EXITED, 9, second)
    assert rec.kinds("rerun-1") == [EventKind.STARTED, EventKind.EXITED]
    assert (await d.logs("rerun-1", second)) == ""  # its own log (the job wrote to the marker)
    assert runs(marker) == 2


async def scenario_launch_failed(d: Dispatcher, rec: Recorder, tmp: Path, host: str) -> None:
    """A command that cannot start, or a missing working directory, fails with the reason."""
    no_cmd = Launch("nocmd-1", "n", "u", (HostGpus(host, (0,)),), command=("no-such-cmd", "x"))
    await d.launch(no_cmd)
    end = await rec.wait_end("nocmd-1")
    assert end.kind == EventKind.FAILED
    assert end.reason is not None and end.reason.startswith("launch failed")
    assert "no-such-cmd" in end.reason
    bad_dir = launch("nodir-1", "true", ((host, (0,)),), workdir=str(tmp / "missing"))
    await d.launch(bad_dir)
    end = await rec.wait_end("nodir-1")
    assert end.kind == EventKind.FAILED and end.reason is not None
    assert str(tmp / "missing") in end.reason
    assert rec.kinds("nocmd-1") == [EventKind.FAILED]


async def scenario_time_limit(d: Dispatcher, rec: Recorder, host: str) -> None:
    await d.launch(launch("limit-1", "sleep 300", ((host, (0,)),), time_limit_seconds=0.5))
    end = await rec.wait_end("limit-1")
    assert (end.kind, end.reason) == (EventKind.FAILED, "time limit")


# ---- a dispatcher process killed mid-job ----------------------------------------------------

HOLDER = """
import asyncio, json, sys
from gpufleet.poller.service import SshHostConfig
from gpufleet.queue.dispatch.base import HostGpus, Launch
from gpufleet.queue.dispatch.local import LocalDispatcher
from gpufleet.queue.dispatch.ssh import SshDispatcher

async def main():
    conf = json.loads(sys.argv[1])
    if conf["kind"] == "local":
        d = LocalDispatcher(conf["root"])
    else:
        d = SshDispatcher([SshHostConfig(**conf["host"])], state_dirs=conf["state_dirs"])
    await d.start()
    gpus = (HostGpus(conf["host_name"], (0,)),)
    launches = [Launch(j, "n", "u", gpus, command=(script,)) for j, script in conf["jobs"]]
    handles = await asyncio.gather(*(d.launch(launch) for launch in launches))
    print(json.dumps({l.job_id: h for l, h in zip(launches, handles)}), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def launch_and_kill(conf: Mapping[str, object], jobs: list[list[str]]) -> dict[str, str]:
    """Launch ``jobs`` ([job_id, script]) from a holder process that runs a dispatcher as
    ``conf`` says, SIGKILL it once they all run, and return the handles it printed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, json.dumps({**conf, "jobs": jobs})],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        handles: dict[str, str] = json.loads(holder.stdout.readline())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    return handles


class CrashJobs:
    """Three jobs launched by a separate process that is then SIGKILLed: ``alive`` runs until
    released, ``ends`` exits 5 once no dispatcher watches, ``fast`` exits 4 at once. Each one
    appends to its marker file when it starts, so a second run would show."""

    def __init__(self, tmp: Path) -> None:
        self.go_alive, self.go_ends, self.pids = tmp / "go-alive", tmp / "go-ends", tmp / "pids"
        self.markers = {j: tmp / f"{j}.runs" for j in ("alive", "ends", "fast")}

    def scripts(self) -> list[list[str]]:
        m = self.markers
        return [
            ["alive", f"echo run >> {q(m['alive'])}; {wait_for_file(self.go_alive)}"],
            [
                "ends",
                f"echo run >> {q(m['ends'])}; echo $$ $PPID > {q(self.pids)}; "
                f"{wait_for_file(self.go_ends)}; exit 5",
            ],
            ["fast", f"echo run >> {q(m['fast'])}; exit 4"],
        ]

    def launch_and_kill(self, conf: Mapping[str, object]) -> dict[str, str]:
        return launch_and_kill(conf, self.scripts())

    def end_unwatched(self) -> None:
        """Let ``ends`` finish, and wait until it and its supervisor are gone."""
        wait_until_sync(lambda: bool(self.pids.exists() and self.pids.read_text()), "ends")
        job_pid, supervisor_pid = map(int, self.pids.read_text().split())
        self.go_ends.touch()
        wait_until_sync(
            lambda: not pid_alive(job_pid) and not pid_alive(supervisor_pid),
            "the job and its supervisor to finish",
        )
        wait_until_sync(lambda: runs(self.markers["fast"]) == 1, "fast to have run")

    def runs(self) -> dict[str, int]:
        return {j: runs(m) for j, m in self.markers.items()}


def wait_for_file(path: Path) -> str:
    return f"while [ ! -e {q(path)} ]; do sleep 0.05; done"
