"""The replay dispatcher's GPU-memory model: a run whose true memory need does not fit on the
GPUs it was placed on fails as an OOM (``FAILED`` ``"oom"``; the job ends ``oom`` in the queue),
one that fits runs to its end; co-located runs add up; the truth stays in the replayed world."""

from __future__ import annotations

import asyncio

import pytest

from gpufleet.queue import store as st
from gpufleet.queue.dispatch.base import EventKind, HostGpus, Launch
from gpufleet.queue.dispatch.oom import looks_like_cuda_oom
from gpufleet.queue.dispatch.replay import ReplayDispatcher
from gpufleet.queue.driver import QueueDriver
from gpufleet.queue.fleet import FleetGpu, FleetHost
from gpufleet.queue.policies import policy_factory
from gpufleet.queue.service import QueueService
from gpufleet.queue.store import JobStore
from gpufleet.sched.job import parse_job
from tests.queue.dispatch_helpers import drive, wait_until

GIB = 2**30
MEMORY = {"small": 16 * GIB, "big": 80 * GIB}  # each GPU of the host holds this


def launch(job_id: str, host: str, gpus: tuple[int, ...] = (0,), seconds: float = 0.3) -> Launch:
    return Launch(job_id, f"job-{job_id}", "ann", (HostGpus(host, gpus),), ("sleep", f"{seconds}"))


def replay(tmp_path, needs: dict[str, int], **kw) -> ReplayDispatcher:
    """A replayed world where job ``name`` really allocates ``needs[name]`` bytes per GPU."""
    return ReplayDispatcher(
        tmp_path / "r.json",
        host_gpu_memory_bytes=MEMORY,
        job_memory_bytes=lambda launch: needs.get(launch.name),
        **kw,
    )


def test_a_run_that_does_not_fit_its_gpu_fails_as_oom_one_that_fits_succeeds(tmp_path):
    needs = {"job-1": 20 * GIB, "job-2": 20 * GIB, "job-3": 12 * GIB}

    async def body(d, rec):
        await d.launch(launch("1", "small"))  # 20 GiB on a 16 GiB GPU
        await d.launch(launch("2", "big"))  # 20 GiB on an 80 GiB GPU
        await d.launch(launch("3", "small", (1,)))  # 12 GiB on a 16 GiB GPU
        assert looks_like_cuda_oom(await d.logs("1", None))
        assert not looks_like_cuda_oom(await d.logs("2", None))
        oom = await rec.wait_end("1")
        assert (oom.kind, oom.reason, oom.exit_code) == (EventKind.FAILED, "oom", 1)
        for job_id in ("2", "3"):
            end = await rec.wait_end(job_id)
            assert (end.kind, end.exit_code, end.reason) == (EventKind.EXITED, 0, None)
        assert rec.kinds("1") == [EventKind.STARTED, EventKind.FAILED]

    drive(lambda: replay(tmp_path, needs, oom_after_seconds=0.1), body)


def test_runs_sharing_a_gpu_add_up_and_the_one_that_overflows_it_fails(tmp_path):
    needs = {"job-1": 10 * GIB, "job-2": 10 * GIB, "job-3": 10 * GIB}

    async def body(d, rec):
        await d.launch(launch("1", "small", (0,), seconds=5.0))
        await d.launch(launch("2", "small", (0,)))  # 10 + 10 GiB on one 16 GiB GPU
        await d.launch(launch("3", "small", (1,)))  # alone on the next GPU
        assert (await rec.wait_end("2")).reason == "oom"
        assert (await rec.wait_end("3")).kind == EventKind.EXITED
        assert "1" in d.runs and not d.runs["1"].oom  # the run that was there keeps running
        await d.cancel("1", None)

    drive(lambda: replay(tmp_path, needs, oom_after_seconds=0.05), body)


def test_no_memory_figure_means_every_run_fits(tmp_path):
    async def body(d, rec):
        await d.launch(launch("1", "small"))  # the job's need is not known
        await d.launch(launch("2", "elsewhere"))  # nor the host's memory
        for job_id in ("1", "2"):
            assert (await rec.wait_end(job_id)).kind == EventKind.EXITED

    needs = {"job-2": 500 * GIB}
    drive(lambda: replay(tmp_path, needs, oom_after_seconds=0.0), body)


def test_an_oom_run_keeps_no_work_and_an_oom_that_happened_while_down_is_reported(tmp_path):
    async def main():
        now = [0.0]
        needs = {"job-7": 20 * GIB, "job-8": 20 * GIB}
        d = replay(tmp_path, needs, oom_after_seconds=2.0, clock=lambda: now[0])
        await d.start()
        await d.launch(launch("7", "small", seconds=10))
        assert d.runs["7"].ends_seconds == 2.0  # it fails at its first allocations
        now[0] = 1.0
        await d.cancel("7", None)  # a preemption before the failure: nothing was computed
        await d.launch(launch("7", "big", seconds=10))
        assert d.runs["7"].ends_seconds == 11.0  # all 10 s, not 9
        await d.launch(launch("8", "small", seconds=10))
        await d.close()
        now[0] = 30.0  # the server was down meanwhile
        again = replay(tmp_path, needs, oom_after_seconds=2.0, clock=lambda: now[0])
        await again.start()
        events = again.events()
        await again.reattach([("8", None), ("7", None)])
        first, second = await anext(events), await anext(events)
        assert (first.job_id, first.kind, first.reason, first.at_seconds) == (
            "8", EventKind.FAILED, "oom", 3.0,
        )  # fmt: skip
        assert (second.job_id, second.kind, second.exit_code) == ("7", EventKind.EXITED, 0)
        await again.close()

    asyncio.run(main())


def test_bad_memory_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"host 'small'.*GPU memory"):
        ReplayDispatcher(tmp_path / "r.json", host_gpu_memory_bytes={"small": 0})
    with pytest.raises(ValueError, match="oom_after_seconds"):
        ReplayDispatcher(tmp_path / "r.json", oom_after_seconds=-1.0)


def test_the_queue_ends_a_job_that_ran_out_of_memory_as_oom_and_frees_its_gpus(tmp_path):
    """Through the service: the fleet is one 16 GiB GPU; the queue knows its memory (the
    hardware) but not what the undeclared job allocates (the truth, in the replayed world)."""
    fleet = [FleetHost("small", "t4", (FleetGpu(0, 16 * GIB, 0),))]
    needs = {"big-model": 30 * GIB, "small-model": 4 * GIB}

    def job(name: str) -> object:
        return parse_job(
            f"name: {name}\nuser: alice\ngpus: 1\nmodel_name: m\nepochs: 1\ncommand: sleep 0.2\n"
        )

    async def main():
        svc = QueueService(
            JobStore(tmp_path / "q.sqlite3"),
            replay(tmp_path, needs, oom_after_seconds=0.05),
            QueueDriver(policy_factory("fifo")),
            lambda: fleet,
            refresh_seconds=0.05,
        )
        await svc.start()
        big = await svc.submit(job("big-model"))
        small = await svc.submit(job("small-model"))  # waits for the one GPU
        store = svc.store
        await wait_until(lambda: store.get(small.id).state in st.FINAL, "both jobs to end")
        ended = store.get(big.id)
        assert (ended.state, ended.reason, ended.exit_code) == (st.OOM, "ran out of GPU memory", 1)
        assert store.get(small.id).state == st.SUCCEEDED
        assert svc.driver.held_gpus() == {}
        await svc.stop()
        store.close()

    asyncio.run(main())


def test_a_job_that_ran_out_of_memory_waits_for_a_larger_gpu_across_a_restart(tmp_path):
    """Through the service: the first host's GPU holds 16 GiB, the second's 80 GiB (busy with
    work that is not the queue's at first). The undeclared job runs out of memory on the small
    GPU, waits (not on the small GPU any more, even after a restart of the server) and runs to
    its end on the large one once that is free; the second OOM-free run is its last."""
    busy = {"big": True}

    def fleet() -> list[FleetHost]:
        return [
            FleetHost("small", "t4", (FleetGpu(0, 16 * GIB, 0),)),
            FleetHost("big", "a100", (FleetGpu(0, 80 * GIB, 0, busy=busy["big"]),)),
        ]

    spec = "name: llm\nuser: alice\ngpus: 1\nmodel_name: m\nepochs: 1\ncommand: sleep 0.2\n"

    def service() -> QueueService:
        return QueueService(
            JobStore(tmp_path / "q.sqlite3"),
            replay(tmp_path, {"llm": 40 * GIB}, oom_after_seconds=0.05),
            QueueDriver(policy_factory("fifo")),
            fleet,
            refresh_seconds=0.05,
        )

    async def main():
        svc = service()
        await svc.start()
        job = await svc.submit(parse_job(spec))
        store = svc.store
        await wait_until(lambda: store.get(job.id).memory_floor_bytes is not None, "the OOM")
        waiting = store.get(job.id)
        assert (waiting.state, waiting.reason) == (st.PENDING, "oom: waits for a larger GPU")
        assert waiting.memory_floor_bytes == 16 * GIB
        log = [e["message"] for e in store.events(job.id)]
        assert any("ran out of GPU memory on t4 (16 GiB per GPU)" in m for m in log), log
        await asyncio.sleep(0.3)  # passes go by: the small GPU is free, the job stays off it
        assert store.get(job.id).state == st.PENDING and store.get(job.id).attempts == 1
        await svc.stop()
        store.close()

        svc = service()  # a restart: the floor is read back from the store
        await svc.start()
        await asyncio.sleep(0.3)
        assert svc.store.get(job.id).state == st.PENDING
        busy["big"] = False
        await wait_until(lambda: svc.store.get(job.id).state in st.FINAL, "the job to end")
        done = svc.store.get(job.id)
        assert (done.state, done.gpu_model, done.attempts) == (st.SUCCEEDED, "a100", 2)
        await svc.stop()
        svc.store.close()

    asyncio.run(main())


def test_a_job_that_ran_out_of_memory_on_the_largest_gpu_ends_oom(tmp_path):
    fleet = [
        FleetHost("small", "t4", (FleetGpu(0, 16 * GIB, 0),)),
        FleetHost("big", "a100", (FleetGpu(0, 80 * GIB, 0),)),
    ]
    spec = "name: huge\nuser: alice\ngpus: 1\nmodel_name: m\nepochs: 1\ncommand: sleep 0.2\n"

    async def main():
        svc = QueueService(
            JobStore(tmp_path / "q.sqlite3"),
            replay(tmp_path, {"huge": 100 * GIB}, oom_after_seconds=0.05),
            QueueDriver(policy_factory("fifo")),
            lambda: fleet,
            refresh_seconds=0.05,
        )
        await svc.start()
        job = await svc.submit(parse_job(spec))
        await wait_until(lambda: svc.store.get(job.id).state in st.FINAL, "the job to end")
        ended = svc.store.get(job.id)
        assert (ended.state, ended.reason) == (st.OOM, "ran out of GPU memory")
        assert ended.attempts == 2 and ended.memory_floor_bytes == 16 * GIB  # t4, then a100
        await svc.stop()
        svc.store.close()

    asyncio.run(main())
