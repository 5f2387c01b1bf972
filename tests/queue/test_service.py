"""The queue service with the replay dispatcher: submit -> place -> run -> finish, cancel,
restart with jobs running (re-attach: none lost, none run twice), the host-down rule."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpufleet.queue import store as st
from gpufleet.queue.dispatch.base import DispatchEvent, EventKind, HostGpus, Launch
from gpufleet.queue.dispatch.replay import ReplayDispatcher, planned_run
from gpufleet.queue.driver import QueueDriver
from gpufleet.queue.fleet import FleetGpu, FleetHost
from gpufleet.queue.policies import policy_factory
from gpufleet.queue.service import QueueService, SubmitError
from gpufleet.queue.store import JobStore
from gpufleet.sched.job import parse_job

GIB = 2**30
FLEET = [
    FleetHost(f"h{i}", "a100", tuple(FleetGpu(g, 80 * GIB, 0) for g in range(2))) for i in range(2)
]


def spec(seconds: float = 0.2, gpus: int = 1, extra: str = ""):
    return parse_job(
        f"name: t\nuser: alice\ngpus: {gpus}\nmodel_name: m\nepochs: 1\n"
        f"command: sleep {seconds}{extra}\n"
    )


def service(tmp_path, **kw) -> QueueService:
    return QueueService(
        JobStore(tmp_path / "q.sqlite3"),
        ReplayDispatcher(tmp_path / "replay.json"),
        QueueDriver(policy_factory("gpufleet")),
        lambda: FLEET,
        refresh_seconds=0.05,
        **kw,
    )


async def until(check, deadline: float = 20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met before the deadline")


def test_planned_run_reads_sleep_and_exit():
    assert planned_run(("sleep", "30"), "1", 300.0) == (30.0, 0)
    assert planned_run(("sleep 5; exit 3",), "1", 300.0) == (5.0, 3)
    drawn, code = planned_run(("python", "train.py"), "7", 300.0)
    assert drawn > 0 and code == 0 and planned_run(("python",), "7", 300.0)[0] == drawn


def test_jobs_run_and_finish_and_teach_the_predictor(tmp_path):
    async def main():
        svc = service(tmp_path)
        await svc.start()
        ok = await svc.submit(spec(0.2))
        bad = await svc.submit(spec(0.2, extra="; exit 2"))
        store = svc.store
        await until(
            lambda: store.get(ok.id).state in st.FINAL and store.get(bad.id).state in st.FINAL
        )
        done, failed = store.get(ok.id), store.get(bad.id)
        assert (done.state, done.exit_code) == (st.SUCCEEDED, 0)
        assert (failed.state, failed.exit_code, failed.reason) == (st.FAILED, 2, "exit code 2")
        assert done.runtime_seconds == pytest.approx(0.2, abs=0.15)
        assert [e["state"] for e in store.events(ok.id)] == [
            "pending", "dispatching", "dispatching", "running", "succeeded",
        ]  # fmt: skip
        await until(lambda: svc.driver.predictor.observed == 2)  # stored first, then learnt
        assert svc.status()["predictor_recent_error"] is not None
        await svc.stop()

    asyncio.run(main())


def test_cancel_hold_release_and_refusals(tmp_path):
    async def main():
        svc = service(tmp_path)
        await svc.start()
        long = await svc.submit(spec(60, gpus=2))
        held = await svc.submit(spec(0.1), held=True)
        await until(lambda: svc.store.get(long.id).state == st.RUNNING)
        await svc.cancel(long.id, "alice")
        await until(lambda: svc.store.get(long.id).state == st.CANCELLED)
        assert svc.store.get(held.id).state == st.HELD
        await svc.release(held.id, "alice")
        await until(lambda: svc.store.get(held.id).state == st.SUCCEEDED)
        with pytest.raises(st.TransitionError, match="succeeded: nothing to cancel"):
            await svc.cancel(held.id, "alice")
        with pytest.raises(
            SubmitError, match="gpus: asks for 8; the largest usable GPU pool has 4"
        ):
            await svc.submit(spec(1, gpus=8))
        with pytest.raises(SubmitError, match="command: is required"):
            await svc.submit(parse_job("name: t\nuser: a\ngpus: 1\nmodel_name: m\nepochs: 1\n"))
        assert len(svc.store.jobs()) == 2
        await svc.stop()

    asyncio.run(main())


def test_restart_reattaches_running_jobs_none_lost_none_twice(tmp_path):
    async def first():
        svc = service(tmp_path)
        await svc.start()
        ids = [(await svc.submit(spec(s))).id for s in (0.3, 30.0, 30.0, 30.0, 30.0)]
        await until(lambda: sum(svc.store.get(i).state == st.RUNNING for i in ids) == 4)
        launches = svc.dispatcher.launches
        await svc.stop()  # as if killed: the jobs keep "running" on the replay fleet
        return ids, launches

    ids, launches = asyncio.run(first())
    time.sleep(0.4)  # the short job ends while no server watches

    async def second():
        svc = service(tmp_path)
        await svc.start()
        await until(lambda: svc.store.get(ids[0]).state == st.SUCCEEDED)
        await until(lambda: all(svc.store.get(i).state == st.RUNNING for i in ids[1:]))
        assert svc.dispatcher.launches == 1  # only the job that waited is launched now
        assert [e["state"] for e in svc.store.events(ids[0])].count("running") == 1
        await svc.stop()

    asyncio.run(second())
    assert launches == 4


def test_host_down_requeues_early_and_fails_late(tmp_path):
    async def main():
        svc = service(tmp_path, requeue_within_seconds=600)
        await svc.start()
        job = await svc.submit(spec(60))
        await until(lambda: svc.store.get(job.id).state == st.RUNNING)
        record = svc.store.get(job.id)
        await svc.dispatcher.cancel(str(job.id), None)  # the replay fleet forgets it...
        await until(lambda: svc.store.get(job.id).state == st.CANCELLED)
        other = await svc.submit(spec(60))
        await until(lambda: svc.store.get(other.id).state == st.RUNNING)
        started = svc.store.get(other.id).start_seconds
        svc.dispatcher.runs.pop(str(other.id))
        svc.dispatcher._channel.emit(
            DispatchEvent(str(other.id), EventKind.FAILED, started + 5, reason="host down")
        )
        await until(lambda: svc.store.get(other.id).reason == "host down: requeued")
        late = await svc.submit(spec(60))
        await until(lambda: svc.store.get(late.id).state == st.RUNNING)
        t = svc.store.get(late.id).start_seconds
        svc.dispatcher.runs.pop(str(late.id))
        svc.dispatcher._channel.emit(
            DispatchEvent(str(late.id), EventKind.FAILED, t + 3600, reason="host down")
        )
        await until(lambda: svc.store.get(late.id).state == st.FAILED)
        assert svc.store.get(late.id).reason == "host down"
        assert record.state == st.RUNNING
        await svc.stop()

    asyncio.run(main())


def test_replayed_jobs_resume_after_a_preemption(tmp_path):
    async def main():
        now = [0.0]
        d = ReplayDispatcher(tmp_path / "r.json", clock=lambda: now[0])
        await d.start()
        launch = Launch("7", "t", "ann", (HostGpus("h0", (0,)),), ("sleep", "10"))
        await d.launch(launch)
        now[0] = 4.0
        await d.cancel("7", None)
        now[0] = 10.0
        await d.launch(launch)
        assert d.runs["7"].ends_seconds == 16.0  # the 6 s left, not 10 again
        again = ReplayDispatcher(tmp_path / "r.json", clock=lambda: now[0])
        await again.start()
        assert again.done_seconds == {"7": 4.0} and again.runs["7"].ends_seconds == 16.0
        await d.close()

    asyncio.run(main())


def test_a_kubernetes_jobs_annotations_travel_with_its_launch():
    from gpufleet.queue.service import _annotations
    from gpufleet.sched.job import parse_job

    spec = parse_job(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: bert\n  annotations:\n"
        "    model_name: bert\n    data_size: '12.5'\n    epoch: '3'\n"
        "spec:\n  template:\n    spec:\n      containers:\n      - name: c\n"
        "        image: pytorch\n        command: [python, train.py]\n"
        "        resources:\n          limits:\n            nvidia.com/gpu: 2\n"
    )
    assert _annotations(spec) == {"model_name": "bert", "epoch": "3", "data_size": "12.5"}


class _Recording:
    """A dispatcher that only records: the test says what happens to each run."""

    def __init__(self) -> None:
        self.launched: list[str] = []
        self.cancelled: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def launch(self, launch: Launch) -> str:
        self.launched.append(launch.job_id)
        return f"run-{len(self.launched)}"

    async def cancel(self, job_id: str, handle: str | None) -> None:
        self.cancelled.append(job_id)

    async def reattach(self, jobs) -> None: ...

    async def events(self):
        await asyncio.Event().wait()
        yield  # pragma: no cover

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        return ""


def test_a_run_that_ends_by_itself_while_its_preemption_and_restart_wait_ends_the_job(tmp_path):
    """a runs; b preempts it; b is cancelled, so the policy starts a again, which waits for
    the stop of a's first run; that run then exits 0 on its own. a has succeeded: its waiting
    restart is dropped, its GPU is free, and no later pass launches it again (the restart
    used to stay in the scheduler's books: a pass then launched a succeeded job)."""
    two_gpus = [FleetHost("h0", "a100", (FleetGpu(0, 80 * GIB, 0), FleetGpu(1, 80 * GIB, 0)))]
    now = [0.0]

    async def main():
        d = _Recording()
        svc = QueueService(JobStore(tmp_path / "q.sqlite3"), d,
                           QueueDriver(policy_factory("gpufleet")), lambda: two_gpus,
                           clock=lambda: now[0])  # fmt: skip
        a = await svc.submit(spec(600))
        await svc.run_pass()
        await svc.on_event(DispatchEvent(str(a.id), EventKind.STARTED, 1.0, "run-1"))
        now[0] = 100.0
        b = await svc.submit(spec(600, gpus=2))
        await svc.run_pass()  # least attained service first: b outranks a
        assert d.cancelled == [str(a.id)] and svc.store.get(a.id).state == st.RUNNING
        await svc.cancel(b.id, "alice")
        now[0] = 101.0
        await svc.run_pass()  # a again on the free GPU, deferred until its first run stopped
        assert d.launched == [str(a.id)] and a.id in svc.driver.deferred
        await svc.on_event(DispatchEvent(str(a.id), EventKind.EXITED, 102.0, "run-1", 0))
        assert svc.store.get(a.id).state == st.SUCCEEDED
        assert a.id not in svc.driver.running and not svc.driver.held_gpus()
        c = await svc.submit(spec(600, gpus=2))
        for t in (103.0, 104.0, 105.0):
            now[0] = t
            await svc.run_pass()
        assert d.launched == [str(a.id), str(c.id)]  # a never again; c gets both GPUs

    asyncio.run(main())


def test_gpu_hour_quotas_count_a_preempted_jobs_runs_not_its_wait(tmp_path):
    """Before, the queue counted a job's GPU time from its *last* start: a preempted job
    counted as holding GPUs while it waited, and its earlier runs vanished once it restarted."""
    from gpufleet.queue.quota import Limit, QuotaRules

    store = JobStore(tmp_path / "q.sqlite3")
    svc = QueueService(
        store, ReplayDispatcher(tmp_path / "replay.json"),
        QueueDriver(policy_factory("gpufleet"),
                    quotas=QuotaRules(users={"alice": Limit(gpu_hours_per_week=100)})),
        lambda: FLEET,
    )  # fmt: skip
    job = store.submit(spec(gpus=2), group="vision")
    t0 = time.time() - 3 * 3600
    for t, state in ((0, st.DISPATCHING), (0, st.RUNNING), (3600, st.PENDING),
                     (7200, st.DISPATCHING), (7200, st.RUNNING)):  # fmt: skip
        fields = {"start_seconds": t0 + t} if state == st.RUNNING else {}
        store.transition(job.id, state, at_seconds=t0 + t, **fields)
    hours = svc.usage(t0 + 3 * 3600).gpu_hours
    # one hour run, one hour waiting (not counted), one hour running now: 2 GPUs x 2 h
    assert hours[("user", "alice")] == pytest.approx(4.0)
    assert hours[("group", "vision")] == pytest.approx(4.0)
    store.close()


def test_a_job_that_names_no_model_nor_epochs_runs(tmp_path):
    async def main():
        svc = service(tmp_path)
        await svc.start()
        try:
            job = await svc.submit(parse_job("name: plain\nuser: bob\ncommand: sleep 0.2\n"))
            await until(lambda: svc.store.get(job.id).state == st.SUCCEEDED)
        finally:
            await svc.stop()

    asyncio.run(main())
