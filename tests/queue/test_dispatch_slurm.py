"""The Slurm dispatcher against a real single-node Slurm (slurmctld + slurmd + munged, started by
``tests/queue/slurm_cluster.py``; GPUs declared by count, none needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gpufleet.queue.dispatch.base import (
    Dispatcher,
    DispatchError,
    DispatchEvent,
    EventKind,
    HostGpus,
    Launch,
)
from gpufleet.queue.dispatch.slurm import SlurmDispatcher
from gpufleet.queue.dispatch.slurm_script import batch_script, sbatch_args
from gpufleet.queue.dispatch.slurm_state import (
    SlurmJob,
    from_sacct_line,
    from_squeue_record,
    outcome,
)
from tests.queue.dispatch_helpers import Recorder, drive
from tests.queue.slurm_cluster import SlurmCluster, restart_controller, slurm_cluster

pytestmark = [pytest.mark.service]
__all__ = ["slurm_cluster"]  # the module-scoped fixture, imported for pytest


def launch_of(cluster: SlurmCluster, job_id: str, command: str, gpus: int = 1, **kw: Any) -> Launch:
    return Launch(
        job_id=job_id, name=f"test {job_id}", user="tester",
        hosts=(HostGpus(cluster.node, tuple(range(gpus))),), command=(command,), **kw,
    )  # fmt: skip


def dispatcher(cluster: SlurmCluster) -> SlurmDispatcher:
    return SlurmDispatcher(cluster.root / "jobs", env=cluster.env, poll_interval_seconds=0.3)


Body = Callable[[SlurmDispatcher, Recorder], Awaitable[None]]


def run(cluster: SlurmCluster, body: Body) -> None:
    drive(lambda: dispatcher(cluster), body)


def slurm_jobs_named(cluster: SlurmCluster, name: str) -> list[str]:
    out = cluster.run("squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i")
    return out.stdout.split()


def test_implements_the_dispatcher_protocol(tmp_path: Path) -> None:
    assert isinstance(SlurmDispatcher(tmp_path), Dispatcher)


def test_sbatch_arguments_carry_gres_nodes_time_and_name(tmp_path: Path) -> None:
    launch = Launch(
        job_id="j1", name="n", user="u", command=("python", "train.py"),
        hosts=(HostGpus("node1", (0, 1)), HostGpus("node2", (2, 3))), time_limit_seconds=61,
        workdir="/data",
    )  # fmt: skip
    args = sbatch_args(launch, tmp_path / "s.sh", tmp_path / "j1.log", "gpufleet-j1")
    assert "--gres=gpu:2" in args and "--nodes=2" in args
    assert "--nodelist=node1,node2" in args and "--time=2" in args  # whole minutes, up
    assert "--job-name=gpufleet-j1" in args and "--chdir=/data" in args
    assert args[-1] == str(tmp_path / "s.sh")
    uneven = Launch(job_id="j2", name="n", user="u", command=("x",),
                    hosts=(HostGpus("a", (0,)), HostGpus("b", (0, 1, 2))))  # fmt: skip
    assert "--gpus=4" in sbatch_args(uneven, tmp_path / "s", tmp_path / "l", "g")
    script = batch_script(launch)
    assert "srun --ntasks-per-node=1" in script and "GPUFLEET_RANK=$SLURM_NODEID" in script


def test_a_bad_env_name_is_refused_naming_the_key() -> None:
    launch = Launch(job_id="j", name="n", user="u", command=("true",),
                    hosts=(HostGpus("h", (0,)),), env={"BAD-NAME": "1"})  # fmt: skip
    with pytest.raises(DispatchError, match="BAD-NAME"):
        batch_script(launch)


def test_job_sees_its_gpus_and_exit_codes_arrive(slurm_cluster: SlurmCluster) -> None:
    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        env_job = launch_of(
            slurm_cluster, "env1",
            'echo "GPUS=$SLURM_JOB_GPUS CVD=$CUDA_VISIBLE_DEVICES RANK=$GPUFLEET_RANK '
            'ID=$GPUFLEET_JOB_ID HOSTS=$GPUFLEET_HOSTS MINE=$MY_VAR"', gpus=2,
            env={"MY_VAR": "it's here"},
        )  # fmt: skip
        fail = launch_of(slurm_cluster, "exit3", "echo failing; exit 3")
        killed = launch_of(slurm_cluster, "killed", "kill -9 $$")
        handles = [await d.launch(x) for x in (env_job, fail, killed)]
        assert all(h.isdigit() for h in handles) and len(set(handles)) == 3
        done = await rec.wait_end("env1")
        assert (done.kind, done.exit_code, done.handle) == (EventKind.EXITED, 0, handles[0])
        assert rec.kinds("env1") == [EventKind.STARTED, EventKind.EXITED]
        out = await d.logs("env1", handles[0])
        assert "CVD=" in out and "RANK=0 ID=env1" in out and "MINE=it's here" in out
        gpus = out.split("GPUS=")[1].split()[0].split(",")
        cvd = out.split("CVD=")[1].split()[0].split(",")
        assert len(gpus) == 2 and len(cvd) == 2, out  # its allocation, as Slurm set it
        assert f"HOSTS={slurm_cluster.node}" in out
        failed = await rec.wait_end("exit3")
        assert (failed.kind, failed.exit_code) == (EventKind.EXITED, 3)
        assert "failing" in await d.logs("exit3", None)
        signalled = await rec.wait_end("killed")
        assert signalled.exit_code == 128 + 9
        # a cancel that comes after the end, and a launch again, change nothing
        await d.cancel("exit3", None)
        assert await d.launch(fail) == handles[1]
        await d.launch(launch_of(slurm_cluster, "after1", "true"))
        await rec.wait("after1", EventKind.EXITED)
        assert rec.kinds("exit3") == [EventKind.STARTED, EventKind.EXITED]
        assert slurm_jobs_named(slurm_cluster, "gpufleet-exit3") == [handles[1]]

    run(slurm_cluster, body)


def test_cuda_oom_in_the_log_is_reported_as_oom(slurm_cluster: SlurmCluster) -> None:
    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        text = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        await d.launch(launch_of(slurm_cluster, "oom1", f"echo '{text}' >&2; exit 1"))
        event = await rec.wait_end("oom1")
        assert (event.kind, event.reason, event.exit_code) == (EventKind.FAILED, "oom", 1)

    run(slurm_cluster, body)


def test_cancel_a_running_and_a_pending_job(slurm_cluster: SlurmCluster) -> None:
    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        handle = await d.launch(launch_of(slurm_cluster, "long1", "sleep 600"))
        await rec.wait("long1", EventKind.STARTED)
        # more GPUs than the node has: it stays pending until cancelled
        too_big = launch_of(slurm_cluster, "wait1", "true", gpus=4)
        blocker = launch_of(slurm_cluster, "block1", "sleep 600", gpus=3)
        await d.launch(blocker)
        await rec.wait("block1", EventKind.STARTED)
        await d.launch(too_big)
        await d.cancel("long1", handle)
        await d.cancel("wait1", None)  # found by its name
        await d.cancel("block1", None)
        for job in ("long1", "wait1", "block1"):
            event = await rec.wait_end(job)
            assert event.kind is EventKind.CANCELLED and event.reason == "cancelled"
        assert EventKind.STARTED not in rec.kinds("wait1")
        await d.cancel("never1", None)  # never submitted: nothing to stop
        assert (await rec.wait("never1", EventKind.CANCELLED)).handle is None

    run(slurm_cluster, body)


def test_launch_is_idempotent_by_job_name(slurm_cluster: SlurmCluster) -> None:
    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        launch = launch_of(slurm_cluster, "same1", "sleep 600")
        first, again = await asyncio.gather(d.launch(launch), d.launch(launch))
        assert first == again
        # a restarted dispatcher (no memory of it) finds it by name and submits nothing
        other = dispatcher(slurm_cluster)
        await other.start()
        try:
            assert await other.launch(launch) == first
        finally:
            await other.close()
        assert slurm_jobs_named(slurm_cluster, "gpufleet-same1") == [first]
        await d.cancel("same1", first)
        await rec.wait("same1", EventKind.CANCELLED)

    run(slurm_cluster, body)


def test_reattach_after_a_dispatcher_restart(slurm_cluster: SlurmCluster) -> None:
    async def before(d: SlurmDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of(slurm_cluster, "re-run", "sleep 600"))
        await d.launch(launch_of(slurm_cluster, "re-end", "sleep 1; exit 7"))
        await rec.wait("re-run", EventKind.STARTED)
        await rec.wait("re-end", EventKind.STARTED)

    run(slurm_cluster, before)  # the dispatcher goes away; re-end ends while nobody watches
    while any(
        s != "FAILED"
        for s in slurm_cluster.run(
            "squeue", "-h", "-t", "all", "-n", "gpufleet-re-end", "-o", "%T"
        ).stdout.split()
    ):
        asyncio.run(asyncio.sleep(0.2))  # the test's own deadline (pytest-timeout) bounds this

    async def after(d: SlurmDispatcher, rec: Recorder) -> None:
        await d.reattach([("re-run", None), ("re-end", None), ("never-ran", "999999")])
        running = await rec.wait("re-run", EventKind.STARTED)
        ended = await rec.wait("re-end", EventKind.EXITED)
        lost = await rec.wait("never-ran", EventKind.LOST)
        assert running.handle and ended.exit_code == 7 and lost.handle == "999999"
        await d.cancel("re-run", running.handle)  # still watched after reattach
        await rec.wait("re-run", EventKind.CANCELLED)

    run(slurm_cluster, after)


async def ending(rec: Recorder, job_id: str) -> DispatchEvent:
    while True:
        ends = [e for e in rec.of(job_id) if e.kind is not EventKind.STARTED]
        if ends:
            return ends[0]
        await asyncio.sleep(0.5)


@pytest.mark.slow
def test_time_limit_is_reported_as_such(slurm_cluster: SlurmCluster) -> None:
    """Slurm counts limits in whole minutes and checks them every ~30 s: this takes 1-2 min."""

    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of(slurm_cluster, "late1", "sleep 600", time_limit_seconds=5))
        event = await asyncio.wait_for(ending(rec, "late1"), 240)  # beyond the usual deadline
        assert (event.kind, event.reason) == (EventKind.FAILED, "time limit")

    run(slurm_cluster, body)


def test_a_job_ending_while_the_controller_is_down_is_reported_when_it_is_back(
    slurm_cluster: SlurmCluster,
) -> None:
    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of(slurm_cluster, "ctl1", "sleep 2; echo bye; exit 5"))
        await rec.wait("ctl1", EventKind.STARTED)
        log_file = d.log_file("ctl1")

        def job_ends() -> None:  # the job finishes while nobody can ask the controller
            deadline = time.monotonic() + 120
            while "bye" not in log_file.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)

        await asyncio.to_thread(restart_controller, slurm_cluster, job_ends)
        event = await rec.wait_end("ctl1")
        assert (event.kind, event.exit_code) == (EventKind.EXITED, 5)
        assert rec.kinds("ctl1") == [EventKind.STARTED, EventKind.EXITED]

    run(slurm_cluster, body)


def test_a_job_slurm_forgot_is_not_submitted_again_and_is_lost(
    slurm_cluster: SlurmCluster,
) -> None:
    """Submitted before (its Slurm id on file) but gone from squeue and no accounting to ask:
    the launch submits nothing, and the watch reports it LOST."""

    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        d.log_dir.mkdir(parents=True, exist_ok=True)
        d.log_file("old1").with_suffix(".slurm-id").write_text("987654\n")
        assert await d.launch(launch_of(slurm_cluster, "old1", "true")) == "987654"
        lost = await rec.wait("old1", EventKind.LOST)
        assert lost.handle == "987654"
        assert slurm_jobs_named(slurm_cluster, "gpufleet-old1") == []

    run(slurm_cluster, body)


def test_records_of_both_json_shapes_and_sacct_lines_read_alike() -> None:
    """22.05 (the test cluster's) and the 23.02+ shape of ``squeue --json`` (written from
    Slurm's data_parser documentation, not captured from a running 23.02), and ``sacct
    --parsable2`` lines (accounting is off in the test cluster)."""
    old = {"job_id": 7, "name": "gpufleet-a", "job_state": "FAILED", "exit_code": 3 << 8,
           "start_time": 100, "end_time": 160}  # fmt: skip
    new = {"job_id": 7, "name": "gpufleet-a", "job_state": ["FAILED"],
           "exit_code": {"status": ["EXITED"], "return_code": {"set": True, "number": 3},
                         "signal": {"id": {"set": False, "number": 0}, "name": ""}},
           "start_time": {"set": True, "number": 100}, "end_time": {"set": True, "number": 160}}  # fmt: skip
    assert from_squeue_record(old) == from_squeue_record(new)
    job = from_squeue_record(old)
    assert (job.state, job.exit_code, job.start_seconds, job.ended) == ("FAILED", 3, 100.0, True)
    killed = from_squeue_record({**old, "exit_code": 9})  # the wait status of SIGKILL
    assert killed.exit_code == 137
    new_killed = {**new, "exit_code": {"return_code": {"set": True, "number": 0},
                                       "signal": {"id": {"set": True, "number": 9}}}}  # fmt: skip
    assert from_squeue_record(new_killed).exit_code == 137
    pending = from_squeue_record({**old, "job_state": "PENDING", "start_time": 0})
    assert pending.start_seconds is None and not pending.ended and not pending.running
    line = from_sacct_line("12|gpufleet-b|CANCELLED by 0|0:15\n")
    assert line is not None and (line.slurm_id, line.state, line.exit_code) == (
        "12",
        "CANCELLED",
        143,
    )
    assert from_sacct_line("13|gpufleet-c|TIMEOUT|0:0").state == "TIMEOUT"  # type: ignore[union-attr]
    assert from_sacct_line("garbage") is None


@pytest.mark.parametrize(
    ("state", "kind", "reason"),
    [
        ("COMPLETED", EventKind.EXITED, None),
        ("FAILED", EventKind.EXITED, None),
        ("CANCELLED", EventKind.CANCELLED, "cancelled"),
        ("TIMEOUT", EventKind.FAILED, "time limit"),
        ("OUT_OF_MEMORY", EventKind.FAILED, "out of host memory"),
        ("NODE_FAIL", EventKind.FAILED, "host down"),
        ("BOOT_FAIL", EventKind.FAILED, "host down"),
    ],
)
def test_slurm_states_map_to_events(state: str, kind: EventKind, reason: str | None) -> None:
    result = outcome(SlurmJob("1", "gpufleet-x", state, exit_code=2 if state == "FAILED" else 0))
    assert (result.kind, result.reason) == (kind, reason)
    assert result.exit_code == (2 if state == "FAILED" else 0)


def test_a_node_that_goes_down_fails_its_jobs_as_host_down(slurm_cluster: SlurmCluster) -> None:
    """An admin (or slurmctld, when slurmd stops answering) marks the node DOWN: Slurm ends the
    jobs on it as NODE_FAIL; with --no-requeue they stay ended and the queue decides."""

    async def body(d: SlurmDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of(slurm_cluster, "down1", "sleep 600"))
        await rec.wait("down1", EventKind.STARTED)
        node = f"nodename={slurm_cluster.node}"
        down = slurm_cluster.run("scontrol", "update", node, "state=DOWN", "reason=test")
        assert down.returncode == 0, down.stderr
        try:
            event = await rec.wait_end("down1")
            assert (event.kind, event.reason) == (EventKind.FAILED, "host down")
        finally:
            slurm_cluster.run("scontrol", "update", node, "state=RESUME")

        async def idle() -> None:
            while "idle" not in slurm_cluster.run("sinfo", "-h", "-o", "%t").stdout:
                await asyncio.sleep(0.2)

        await asyncio.wait_for(idle(), 120)  # the node serves the next test

    run(slurm_cluster, body)


def test_missing_slurm_commands_fail_start_naming_them(tmp_path: Path) -> None:
    async def main() -> None:
        d = SlurmDispatcher(tmp_path / "jobs", bin_dir=tmp_path / "no-slurm-here")
        with pytest.raises(DispatchError, match="cannot run squeue"):
            await d.start()

    asyncio.run(main())
