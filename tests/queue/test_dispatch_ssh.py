"""The SSH dispatcher against real OpenSSH servers on loopback (several sshd instances are
several servers; each gets its own state directory, as they share this machine's home)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gpufleet.poller.service import SshHostConfig, SshPoller
from gpufleet.queue.dispatch.base import DispatchError, EventKind
from gpufleet.queue.dispatch.ssh import SshDispatcher
from gpufleet.wire import Batch
from tests.poller.conftest import SSHD, Sshd, free_port, new_key, sshd_factory  # noqa: F401

from . import dispatch_helpers as h

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]

Factory = Callable[..., Sshd]
Body = Callable[[SshDispatcher, h.Recorder], Awaitable[None]]


def host_config(name: str, sshd: Sshd) -> SshHostConfig:
    return SshHostConfig(
        name=name, host="127.0.0.1", port=sshd.port, user=sshd.user, key_file=sshd.key_file
    )


def dispatcher(servers: dict[str, Sshd], tmp: Path, **kw: object) -> SshDispatcher:
    return SshDispatcher(
        [host_config(n, s) for n, s in servers.items()],
        state_dirs={n: str(tmp / f"state-{n}") for n in servers},
        kill_grace_seconds=0.5,
        **kw,  # type: ignore[arg-type]
    )


def run(servers: dict[str, Sshd], tmp: Path, body: Body, **kw: object) -> None:
    h.drive(lambda: dispatcher(servers, tmp, **kw), body)


def listener_pid(sshd: Sshd) -> int:
    return int((sshd.tmp / "sshd.pid").read_text())


def sessions(sshd: Sshd) -> list[int]:
    """The per-connection sshd processes of a server (children of its listener)."""
    parent, found = listener_pid(sshd), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def stop(sshd: Sshd) -> None:
    """The server goes away: its listener and every open connection."""
    for pid in [*sessions(sshd), listener_pid(sshd)]:
        os.kill(pid, signal.SIGKILL)


def restart(sshd: Sshd) -> subprocess.Popen[bytes]:
    """The server is back on the same port, with the same keys (the caller stops it)."""
    with (sshd.tmp / "sshd.log").open("ab") as log:
        return subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(sshd.tmp / "sshd_config")], stdout=log, stderr=log
        )


@pytest.fixture
def one(sshd_factory: Factory) -> dict[str, Sshd]:  # noqa: F811
    return {"gpu-a": sshd_factory(smi=False)}


def test_env_exit_code_and_logs(one: dict[str, Sshd], tmp_path: Path) -> None:
    run(one, tmp_path, lambda d, rec: h.scenario_env_exit_logs(d, rec, tmp_path, "gpu-a"))


def test_oom_is_reported_as_oom(one: dict[str, Sshd], tmp_path: Path) -> None:
    run(one, tmp_path, lambda d, rec: h.scenario_oom(d, rec, "gpu-a"))


def test_cancel_kills_the_process_group(one: dict[str, Sshd], tmp_path: Path) -> None:
    run(one, tmp_path, lambda d, rec: h.scenario_cancel(d, rec, tmp_path, "gpu-a"))


def test_second_launch_returns_the_existing_handle(one: dict[str, Sshd], tmp_path: Path) -> None:
    run(one, tmp_path, lambda d, rec: h.scenario_idempotent(d, rec, tmp_path, "gpu-a"))


def test_a_job_launched_again_after_its_end_runs_again(
    one: dict[str, Sshd], tmp_path: Path
) -> None:
    run(one, tmp_path, lambda d, rec: h.scenario_rerun(d, rec, tmp_path, "gpu-a"))


def test_launch_failures_and_time_limit(one: dict[str, Sshd], tmp_path: Path) -> None:
    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        await h.scenario_launch_failed(d, rec, tmp_path, "gpu-a")
        await h.scenario_time_limit(d, rec, "gpu-a")

    run(one, tmp_path, body)


def test_multi_host_job_one_connection_per_host(sshd_factory: Factory, tmp_path: Path) -> None:  # noqa: F811
    """A job on three servers runs once on each with its rank; many launches reuse one SSH
    connection and one agent session per host."""
    servers = {f"gpu-{i}": sshd_factory(smi=False) for i in range(3)}
    out = tmp_path / "ranks"

    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        script = f'echo "$GPUFLEET_RANK $GPUFLEET_HOSTS $CUDA_VISIBLE_DEVICES" >> {h.q(out)}'
        hosts = (("gpu-2", (0, 1)), ("gpu-0", (3,)), ("gpu-1", (7,)))
        handle = await d.launch(h.launch("mh-1", script, hosts))
        assert [p.rsplit("@", 1)[1] for p in handle.split(",")] == ["gpu-2", "gpu-0", "gpu-1"]
        end = await rec.wait_end("mh-1")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 0)
        assert sorted(out.read_text().splitlines()) == [
            "0 gpu-2,gpu-0,gpu-1 0,1",
            "1 gpu-2,gpu-0,gpu-1 3",
            "2 gpu-2,gpu-0,gpu-1 7",
        ]
        for i in range(10):
            await d.launch(h.launch(f"many-{i}", "true", ((f"gpu-{i % 3}", (0,)),)))
        for i in range(10):
            assert (await rec.wait_end(f"many-{i}")).exit_code == 0
        assert [d.client(n).connects for n in servers] == [1, 1, 1]
        assert [d.link(n).connects for n in servers] == [1, 1, 1]

    run(servers, tmp_path, body)


def test_shares_the_pollers_connection(one: dict[str, Sshd], tmp_path: Path) -> None:
    batches: list[Batch] = []

    async def sink(batch: Batch) -> None:
        batches.append(batch)

    async def main() -> None:
        poller = SshPoller([host_config("gpu-a", one["gpu-a"])], sink)
        d = dispatcher(one, tmp_path, clients={"gpu-a": poller.client("gpu-a")})
        try:
            async with h.started(d) as rec:
                assert await poller.poll_once("gpu-a") is not None
                await d.launch(h.launch("shared-1", "exit 0", (("gpu-a", (0,)),)))
                assert (await rec.wait_end("shared-1")).exit_code == 0
                assert await poller.poll_once("gpu-a") is not None
                assert poller.client("gpu-a").connects == 1 and len(batches) == 2
        finally:
            await poller.stop()

    asyncio.run(main())


def test_lost_connection_reconnects_and_delivers_the_exit(
    one: dict[str, Sshd], tmp_path: Path
) -> None:
    go = tmp_path / "go"

    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        script = f"while [ ! -e {h.q(go)} ]; do sleep 0.05; done; exit 6"
        await d.launch(h.launch("drop-1", script, (("gpu-a", (0,)),)))
        await rec.wait("drop-1", EventKind.STARTED)
        for pid in sessions(one["gpu-a"]):
            os.kill(pid, signal.SIGKILL)  # the network dropped the connection
        go.touch()
        end = await rec.wait_end("drop-1")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 6)
        assert rec.kinds("drop-1") == [EventKind.STARTED, EventKind.EXITED]
        await h.wait_until(lambda: d.link("gpu-a").connects == 2, "the agent to reconnect")

    run(one, tmp_path, body)


def test_unreachable_host_starts_nothing(sshd_factory: Factory, tmp_path: Path) -> None:  # noqa: F811
    """A launch to a host that cannot be reached starts nothing; a two-host launch that
    reaches one host only stops the rank it started and fails the job, saying why."""
    good, down = sshd_factory(smi=False), sshd_factory(smi=False)
    down.port = free_port()  # nothing listens there
    marker, pid_file = tmp_path / "runs", tmp_path / "rank0.pid"

    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        with pytest.raises(DispatchError, match="gpu-x down: connection refused"):
            await d.launch(h.launch("down-1", f"echo >> {h.q(marker)}", (("gpu-x", (0,)),)))
        with pytest.raises(DispatchError, match="not an SSH host"):
            await d.launch(h.launch("down-2", "true", (("nowhere", (0,)),)))
        script = f"echo $$ > {h.q(pid_file)}; sleep 300"
        await d.launch(h.launch("half-1", script, (("gpu-ok", (0,)), ("gpu-x", (0,)))))
        end = await rec.wait_end("half-1")
        assert end.kind == EventKind.FAILED and end.reason is not None
        assert end.reason.startswith("launch failed: host gpu-x down: connection refused")
        await h.wait_until(lambda: bool(pid_file.exists() and pid_file.read_text()), "rank 0")
        rank0 = int(pid_file.read_text())
        await h.wait_until(lambda: not h.pid_alive(rank0), "the started rank to be stopped")

    run({"gpu-ok": good, "gpu-x": down}, tmp_path, body)
    assert not marker.exists()


def test_missing_python_is_a_clear_error(one: dict[str, Sshd], tmp_path: Path) -> None:
    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        with pytest.raises(DispatchError, match=r"agent did not start: .*python-nope"):
            await d.launch(h.launch("nopy-1", "true", (("gpu-a", (0,)),)))

    run(one, tmp_path, body, python="python-nope")


@pytest.mark.slow
def test_host_down_fails_the_job_and_a_new_run_replaces_the_old(
    sshd_factory: Factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A host unreachable past the grace period: its job FAILED, reason "host down". The
    queue requeues it; launched again on that host as soon as it is back, the old run (still
    going there) is stopped first and the new run is the only one left."""
    sshd = sshd_factory(smi=False)
    pids = tmp_path / "job.pids"
    restarted: list[subprocess.Popen[bytes]] = []
    script = f"echo $$ >> {h.q(pids)}; sleep 300"

    def started_pids() -> list[int]:
        return [int(p) for p in pids.read_text().split()] if pids.exists() else []

    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        await d.launch(h.launch("hd-1", script, (("gpu-a", (0,)),)))
        await rec.wait("hd-1", EventKind.STARTED)
        await h.wait_until(lambda: len(started_pids()) == 1, "the first run's pid")
        old = started_pids()[0]
        stop(sshd)
        end = await rec.wait_end("hd-1")
        assert (end.kind, end.reason) == (EventKind.FAILED, "host down")
        assert h.pid_alive(old)  # the server still runs it: we cannot reach it
        restarted.append(restart(sshd))
        rec.events.clear()
        deadline = asyncio.get_running_loop().time() + h.DEADLINE_SECONDS
        while True:  # requeued: launched again once the host answers
            try:
                handle = await d.launch(h.launch("hd-1", script, (("gpu-a", (0,)),)))
                break
            except DispatchError:
                assert asyncio.get_running_loop().time() < deadline, "sshd did not come back"
                await asyncio.sleep(0.1)
        assert not h.pid_alive(old)
        await rec.wait("hd-1", EventKind.STARTED)
        await h.wait_until(lambda: len(started_pids()) == 2, "the new run's pid")
        new = started_pids()[1]
        assert handle == f"{new}@gpu-a" and h.pid_alive(new)
        await d.cancel("hd-1", handle)
        assert (await rec.wait_end("hd-1")).kind == EventKind.CANCELLED
        assert rec.kinds("hd-1") == [EventKind.STARTED, EventKind.CANCELLED]

    try:
        run({"gpu-a": sshd}, tmp_path, body, host_down_after_seconds=1.0)
    finally:
        for proc in restarted:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
def test_killed_dispatcher_reattach_runs_nothing_twice(
    one: dict[str, Sshd], tmp_path: Path
) -> None:
    """The process holding the SSH dispatcher is SIGKILLed mid-job; a new one re-attaches."""
    crash = h.CrashJobs(tmp_path)
    conf = {
        "kind": "ssh",
        "host": json.loads(host_config("gpu-a", one["gpu-a"]).model_dump_json()),
        "state_dirs": {"gpu-a": str(tmp_path / "state-gpu-a")},
        "host_name": "gpu-a",
    }
    handles = crash.launch_and_kill(conf)
    crash.end_unwatched()

    async def body(d: SshDispatcher, rec: h.Recorder) -> None:
        await d.reattach(
            [
                ("alive", handles["alive"]),
                ("ends", None),
                ("fast", handles["fast"]),
                ("ghost", "1@gpu-a"),
            ]
        )
        assert (await rec.wait("alive", EventKind.STARTED)).handle == handles["alive"]
        end = await rec.wait_end("ends")
        assert (end.kind, end.exit_code, end.handle) == (EventKind.EXITED, 5, handles["ends"])
        assert rec.kinds("ends") == [EventKind.EXITED]
        assert (await rec.wait_end("fast")).exit_code == 4
        assert (await rec.wait_end("ghost")).kind == EventKind.LOST
        assert (
            await d.launch(h.launch("alive", "echo never", (("gpu-a", (0,)),))) == handles["alive"]
        )
        crash.go_alive.touch()
        end = await rec.wait_end("alive")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 0)

    run(one, tmp_path, body)
    assert crash.runs() == {"alive": 1, "ends": 1, "fast": 1}


def test_launches_to_a_silent_host_fail_together(tmp_path: Path) -> None:
    """Launches queued behind a connect attempt that times out fail with it, instead of each
    waiting for a connect timeout of its own (counted: connections the host saw)."""
    accepted: list[asyncio.StreamWriter] = []

    async def main() -> None:
        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # accepts, never says a word: a hung sshd

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        key = tmp_path / "key"
        new_key(key)
        conf = SshHostConfig(
            name="gpu-h", host="127.0.0.1", port=port, user="x", key_file=key, timeout_seconds=1
        )
        d = SshDispatcher([conf], state_dirs={"gpu-h": str(tmp_path / "state")})
        try:
            results = await asyncio.gather(
                *(d.launch(h.launch(f"s-{i}", "true", (("gpu-h", (0,)),))) for i in range(6)),
                return_exceptions=True,
            )
            assert all(isinstance(r, DispatchError) for r in results), results
            assert all("gpu-h down: timeout" in str(r) for r in results), results
            assert len(accepted) <= 2  # one attempt for the burst (+ maybe one retry)
        finally:
            await d.close()
            for writer in accepted:
                writer.close()
            server.close()

    asyncio.run(main())


@pytest.mark.slow
def test_reattach_while_the_host_is_away_waits_for_it(one: dict[str, Sshd], tmp_path: Path) -> None:
    """A restarted dispatcher re-attaches while the job's host is unreachable: nothing is said
    until the host is back; then the exit that happened meanwhile comes with its code."""
    sshd, go = one["gpu-a"], tmp_path / "go"
    restarted: list[subprocess.Popen[bytes]] = []

    async def first(d: SshDispatcher, rec: h.Recorder) -> None:
        handles["j"] = await d.launch(
            h.launch("away-1", f"{h.wait_for_file(go)}; exit 4", (("gpu-a", (0,)),))
        )
        await rec.wait("away-1", EventKind.STARTED)

    async def second(d: SshDispatcher, rec: h.Recorder) -> None:
        stop(sshd)
        await d.reattach([("away-1", handles["j"])])
        go.touch()  # it ends while nobody can ask
        await h.wait_until(lambda: d.link("gpu-a").last_error != "", "a failed connect")
        assert rec.of("away-1") == []
        restarted.append(restart(sshd))
        end = await rec.wait_end("away-1")
        assert (end.kind, end.exit_code, end.handle) == (EventKind.EXITED, 4, handles["j"])
        assert rec.kinds("away-1") == [EventKind.EXITED]

    handles: dict[str, str] = {}
    run(one, tmp_path, first)
    try:
        run(one, tmp_path, second)
    finally:
        for proc in restarted:
            proc.terminate()
            proc.wait(10)
