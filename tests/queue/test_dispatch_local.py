"""The local dispatcher: real processes under the real supervisor, state directories on disk,
a dispatcher process killed mid-job and another one re-attaching."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gpufleet.queue.dispatch.base import DispatchError, EventKind
from gpufleet.queue.dispatch.local import LocalDispatcher

from . import dispatch_helpers as h

pytestmark = pytest.mark.timeout(120)

Body = Callable[[LocalDispatcher, h.Recorder], Awaitable[None]]


def run(tmp_path: Path, body: Body, **kw: object) -> None:
    h.drive(lambda: LocalDispatcher(tmp_path / "jobs", kill_grace_seconds=0.5, **kw), body)  # type: ignore[arg-type]


def test_env_exit_code_and_logs(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_env_exit_logs(d, rec, tmp_path, "h1"))


def test_oom_is_reported_as_oom(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_oom(d, rec, "h1"))


def test_cancel_kills_the_process_group(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_cancel(d, rec, tmp_path, "h1"))


def test_second_launch_returns_the_existing_handle(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_idempotent(d, rec, tmp_path, "h1"))


def test_a_job_launched_again_after_its_end_runs_again(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_rerun(d, rec, tmp_path, "h1"))


def test_launch_failures_name_the_cause(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_launch_failed(d, rec, tmp_path, "h1"))


def test_time_limit(tmp_path: Path) -> None:
    run(tmp_path, lambda d, rec: h.scenario_time_limit(d, rec, "h1"))


def test_unknown_host_and_bad_job_id_start_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "runs"

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        with pytest.raises(DispatchError, match="'gpu-9' is not served"):
            await d.launch(h.launch("x-1", f"echo >> {h.q(marker)}", (("gpu-9", (0,)),)))
        with pytest.raises(DispatchError, match="job_id must be"):
            await d.launch(h.launch("../evil", f"echo >> {h.q(marker)}", (("h1", (0,)),)))
        with pytest.raises(DispatchError, match="only the image"):
            from gpufleet.queue.dispatch.base import HostGpus, Launch

            await d.launch(Launch("img-1", "n", "u", (HostGpus("h1", (0,)),), image="pytorch"))

    run(tmp_path, body, hosts={"h1"})
    assert not marker.exists()


def test_a_failing_rank_stops_the_others(tmp_path: Path) -> None:
    out = tmp_path / "ranks"

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        script = (
            f'echo "$GPUFLEET_RANK $GPUFLEET_HOSTS $CUDA_VISIBLE_DEVICES" >> {h.q(out)}; '
            'if [ "$GPUFLEET_RANK" = 1 ]; then exit 2; fi; sleep 300'
        )
        handle = await d.launch(h.launch("mr-1", script, (("a", (0, 1)), ("b", (3,)))))
        assert [p.rsplit("@", 1)[1] for p in handle.split(",")] == ["a", "b"]
        end = await rec.wait_end("mr-1")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 2)
        assert sorted(out.read_text().splitlines()) == ["0 a,b 0,1", "1 a,b 3"]
        rank0 = int(handle.split(",")[0].split("@")[0])
        await h.wait_until(lambda: not h.pid_alive(rank0), "rank 0 to be stopped")

    run(tmp_path, body)


@pytest.mark.slow
def test_killed_dispatcher_reattach_runs_nothing_twice(tmp_path: Path) -> None:
    """A process holding the dispatcher is SIGKILLed mid-job; a new one re-attaches: the
    running job is STARTED again (not re-run), jobs that ended meanwhile get EXITED with their
    stored code, unknown ones LOST; every job ran exactly once."""
    crash = h.CrashJobs(tmp_path)
    handles = crash.launch_and_kill(
        {"kind": "local", "root": str(tmp_path / "jobs"), "host_name": "h1"}
    )
    crash.end_unwatched()

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        await d.reattach(
            [
                ("alive", handles["alive"]),
                ("ends", handles["ends"]),
                ("fast", None),  # crashed before the handle was stored: found by searching
                ("ghost", None),
                ("ghost-2", "4242@h1"),
            ]
        )
        assert (await rec.wait("alive", EventKind.STARTED)).handle == handles["alive"]
        end = await rec.wait_end("ends")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 5)
        assert rec.kinds("ends") == [EventKind.EXITED]
        end = await rec.wait_end("fast")
        assert (end.kind, end.exit_code, end.handle) == (EventKind.EXITED, 4, handles["fast"])
        assert (await rec.wait_end("ghost")).kind == EventKind.LOST
        assert (await rec.wait_end("ghost-2")).kind == EventKind.LOST
        # The queue retries a launch it was not sure of: nothing starts again.
        assert await d.launch(h.launch("alive", "echo never")) == handles["alive"]
        crash.go_alive.touch()
        end = await rec.wait_end("alive")
        assert (end.kind, end.exit_code) == (EventKind.EXITED, 0)
        assert rec.kinds("alive") == [EventKind.STARTED, EventKind.EXITED]

    run(tmp_path, body)
    assert crash.runs() == {"alive": 1, "ends": 1, "fast": 1}


def test_dead_supervisor_is_reported_lost(tmp_path: Path) -> None:
    """A supervisor killed with its job (no exit record) is LOST, with the reason."""
    pids = tmp_path / "pids"

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        handle = await d.launch(h.launch("doomed", f"echo $$ $PPID > {h.q(pids)}; sleep 300"))
        await h.wait_until(lambda: pids.exists() and bool(pids.read_text().strip()), "pids")
        job_pid, supervisor_pid = map(int, pids.read_text().split())
        os.kill(supervisor_pid, signal.SIGKILL)
        os.kill(job_pid, signal.SIGKILL)
        await h.wait_until(lambda: not h.pid_alive(supervisor_pid), "the supervisor to die")
        fresh = LocalDispatcher(tmp_path / "jobs")
        async with h.started(fresh) as rec2:
            await fresh.reattach([("doomed", handle)])
            end = await rec2.wait_end("doomed")
            assert end.kind == EventKind.LOST
            assert end.reason is not None and "supervisor died" in end.reason

    run(tmp_path, body)


def test_old_state_is_pruned_running_state_kept(tmp_path: Path) -> None:
    """An agent that starts deletes the state of jobs ended longer ago than the retention
    (it is then LOST to a reattach); a running job's state is kept."""
    go = tmp_path / "go"

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        await d.launch(h.launch("old-1", "exit 0"))
        await rec.wait_end("old-1")
        running = await d.launch(
            h.launch("run-1", f"while [ ! -e {h.q(go)} ]; do sleep 0.05; done")
        )
        fresh = LocalDispatcher(tmp_path / "jobs", keep_state_seconds=0)
        async with h.started(fresh) as rec2:
            await fresh.reattach([("old-1", None), ("run-1", running)])
            assert (await rec2.wait_end("old-1")).kind == EventKind.LOST
            assert (await rec2.wait("run-1", EventKind.STARTED)).handle == running
            go.touch()
            assert (await rec2.wait_end("run-1")).exit_code == 0

    run(tmp_path, body)


def _old_pythons() -> list[str]:
    """The oldest supported interpreters found here (the hosts' python3 may be old)."""
    found = []
    for version in ("3.7", "3.8"):
        pattern = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")
        for path in [*sorted(glob.glob(pattern)), shutil.which(f"python{version}")]:
            if path and subprocess.run([path, "-c", ""], capture_output=True).returncode == 0:
                found.append(path)
                break
    return found


@pytest.mark.slow
@pytest.mark.parametrize("python", _old_pythons() or ["none"])
def test_supervisor_runs_on_old_pythons(tmp_path: Path, python: str) -> None:
    """The supervisor needs only Python >= 3.7 on the host (not installed here: skipped)."""
    if python == "none":
        pytest.skip("no python3.7 or python3.8 on this machine")

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        await h.scenario_env_exit_logs(d, rec, tmp_path, "h1")
        await h.scenario_oom(d, rec, "h1")
        await h.scenario_cancel(d, rec, tmp_path, "h1")
        await h.scenario_rerun(d, rec, tmp_path, "h1")

    run(tmp_path, body, python=python)


@pytest.mark.slow
def test_fifty_jobs_survive_a_killed_dispatcher(tmp_path: Path) -> None:
    """50 jobs launched at once by a dispatcher process that is then SIGKILLed; half of them
    end (exit code = their number) while nobody watches. After reattach every job's state is
    right and each ran exactly once."""
    go_even, go_odd = tmp_path / "go-even", tmp_path / "go-odd"
    jobs = [
        [
            f"many-{i}",
            f"echo run >> {h.q(tmp_path / f'many-{i}.runs')}; "
            f"{h.wait_for_file(go_even if i % 2 == 0 else go_odd)}; exit {i}",
        ]
        for i in range(50)
    ]
    conf = {"kind": "local", "root": str(tmp_path / "jobs"), "host_name": "h1"}
    handles = h.launch_and_kill(conf, jobs)
    markers = [tmp_path / f"many-{i}.runs" for i in range(50)]
    h.wait_until_sync(lambda: all(h.runs(m) == 1 for m in markers), "every job to start")
    go_even.touch()  # the even ones end while no dispatcher runs

    async def body(d: LocalDispatcher, rec: h.Recorder) -> None:
        await d.reattach([(j, handles[j] if i % 3 else None) for i, (j, _) in enumerate(jobs)])
        for i in range(0, 50, 2):  # ended meanwhile (or as we looked): EXITED, their code
            end = await rec.wait_end(f"many-{i}")
            assert (end.kind, end.exit_code, end.handle) == (
                EventKind.EXITED,
                i,
                handles[f"many-{i}"],
            )
        for i in range(1, 50, 2):
            assert (await rec.wait(f"many-{i}", EventKind.STARTED)).handle == handles[f"many-{i}"]
        go_odd.touch()
        for i in range(1, 50, 2):
            end = await rec.wait_end(f"many-{i}")
            assert (end.kind, end.exit_code) == (EventKind.EXITED, i)
            assert rec.kinds(f"many-{i}") == [EventKind.STARTED, EventKind.EXITED]

    run(tmp_path, body)
    assert [h.runs(m) for m in markers] == [1] * 50
