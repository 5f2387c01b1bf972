"""The queue service: an asyncio task pair in the server. One consumes ``Dispatcher.events()``
(completion is an event, never a scan); the other runs the driver's pass when woken (a submit,
a finish, a release, the policy's wake-up time) or every ``refresh_seconds`` (the fleet's live
state changes by itself). Every transition is stored before the queue acts on it.

On start-up every job the store says is dispatching or running is handed to the driver as
running and to the dispatcher's ``reattach``: the dispatcher reports what became of each
(STARTED, EXITED/FAILED, LOST), so no job runs twice and none is lost.

Host-down rule: a job whose host went down (``FAILED`` or ``LOST`` with a reason starting
``host down``) goes back to
pending when it had run less than ``requeue_within_seconds``; after that it fails with "host
down" (a job that ran long has likely written results or side effects; rerunning it is the
user's call: ``gpufleet submit`` again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gpufleet.queue import store as st
from gpufleet.queue.dispatch.base import (
    Dispatcher,
    DispatchError,
    DispatchEvent,
    EventKind,
    HostGpus,
    Launch,
)
from gpufleet.queue.driver import QueueDriver, Start
from gpufleet.queue.fleet import FleetHost
from gpufleet.queue.quota import WEEK_SECONDS, Usage
from gpufleet.queue.store import JobRecord, JobStore
from gpufleet.sched.job import GB, JobSpec

log = logging.getLogger(__name__)


class SubmitError(ValueError):
    """A job the queue refuses (the message names the field or the quota)."""


class QueueService:
    def __init__(
        self,
        store: JobStore,
        dispatcher: Dispatcher,
        driver: QueueDriver,
        fleet: Callable[[], list[FleetHost]],
        *,
        refresh_seconds: float = 5.0,
        requeue_within_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.driver = driver
        self.fleet = fleet
        self.refresh_seconds = refresh_seconds
        self.requeue_within_seconds = requeue_within_seconds
        self.clock = clock
        self.listeners: list[Callable[[list[int]], None]] = []  # told which jobs changed
        self.passes = 0
        self.decision_seconds: list[float] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()  # one pass or one event at a time

    # -- life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.dispatcher.start()
        now = self.clock()
        self.driver.set_fleet(self.fleet())
        active = []
        for record in self.store.jobs(states=[st.PENDING, st.DISPATCHING, st.RUNNING]):
            if record.state == st.PENDING:
                self.driver.add(record, now)
            else:
                self.driver.adopt_running(record, start_of(record), now)
                active.append((str(record.id), record.handle))
        if active:
            log.info("queue: re-attaching %d dispatched or running job(s)", len(active))
            await self.dispatcher.reattach(active)
        self._tasks = [
            asyncio.create_task(self._consume()),
            asyncio.create_task(self._schedule_forever()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.close()

    def wake(self) -> None:
        self._wake.set()

    def _changed(self, job_ids: list[int]) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener(job_ids)

    # -- what users do ------------------------------------------------------------------------
    async def submit(self, spec: JobSpec, held: bool = False) -> JobRecord:
        if not spec.command:
            raise SubmitError("command: is required (the command the queue runs on the GPUs)")
        group = self.driver.quotas.group_of(spec.user)
        draft = draft_record(spec, group)
        why = self.driver.quotas.refusal(spec.user, group, draft_gpus(spec))
        why = why or self.driver.refusal(draft)
        if why is not None:
            raise SubmitError(why)
        predicted = self.driver.predicted_seconds(draft)
        async with self._lock:
            record = await asyncio.to_thread(
                self.store.submit, spec, group, predicted, st.HELD if held else st.PENDING
            )
            if not held:
                self.driver.add(record, self.clock())
        self._changed([record.id])
        self.wake()
        return record

    async def cancel(self, job_id: int, by: str) -> JobRecord:
        async with self._lock:
            record = self.store.get(job_id)
            if record.state in (st.PENDING, st.HELD):
                record = await asyncio.to_thread(
                    self.store.transition, job_id, st.CANCELLED, f"cancelled by {by}",
                    expect=[record.state], end_seconds=self.clock(), reason=f"cancelled by {by}",
                )  # fmt: skip
                self.driver.withdraw(job_id, self.clock())
            elif record.state in st.ACTIVE:
                await asyncio.to_thread(
                    self.store.transition, job_id, record.state, f"cancel requested by {by}"
                )
                await self.dispatcher.cancel(str(job_id), record.handle)
            else:
                raise st.TransitionError(f"job {job_id} is {record.state}: nothing to cancel")
        self._changed([job_id])
        self.wake()
        return record

    async def hold(self, job_id: int, by: str) -> JobRecord:
        async with self._lock:
            record = await asyncio.to_thread(
                self.store.transition, job_id, st.HELD, f"held by {by}", expect=[st.PENDING]
            )
            self.driver.withdraw(job_id, self.clock())
        self._changed([job_id])
        return record

    async def release(self, job_id: int, by: str) -> JobRecord:
        async with self._lock:
            record = await asyncio.to_thread(
                self.store.transition, job_id, st.PENDING, f"released by {by}", expect=[st.HELD]
            )
            self.driver.add(record, self.clock())
        self._changed([job_id])
        self.wake()
        return record

    async def set_priority(self, job_id: int, priority: int, by: str) -> JobRecord:
        async with self._lock:
            record = await asyncio.to_thread(self.store.set_priority, job_id, priority, by)
            if record.state == st.PENDING:
                self.driver.set_priority(record, self.clock())
        self._changed([job_id])
        self.wake()
        return record

    async def logs(self, job_id: int, tail_bytes: int = 65536) -> str:
        record = self.store.get(job_id)
        if record.state in (st.PENDING, st.HELD):
            return ""
        return await self.dispatcher.logs(str(job_id), record.handle, tail_bytes)

    # -- the pass -----------------------------------------------------------------------------
    async def _schedule_forever(self) -> None:
        while True:
            timeout = self.refresh_seconds
            wake = self.driver.next_wakeup_seconds()
            if wake is not None:
                timeout = max(0.0, min(timeout, wake - self.clock()))
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.run_pass()
            except Exception:
                log.exception("queue: a scheduling pass failed; will try again")
                await asyncio.sleep(1.0)

    def usage(self, now: float) -> Usage:
        if not self.driver.quotas.any:
            return Usage()
        hours: dict[tuple[str, str], float] = {}
        for user, group, seconds in self.store.gpu_seconds_since(now - WEEK_SECONDS, now):
            for key in (("user", user), ("group", group)):
                hours[key] = hours.get(key, 0.0) + seconds / 3600.0
        return Usage(gpu_hours=hours)

    async def run_pass(self) -> None:
        async with self._lock:
            now = self.clock()
            usage = self.usage(now)
            self.driver.set_fleet(self.fleet())
            t0 = time.perf_counter()
            decisions = self.driver.schedule(now, usage)
            self.decision_seconds.append(time.perf_counter() - t0)
            del self.decision_seconds[:-1000]
            self.passes += 1
            changed = []
            for preempt in decisions.preempts:  # pending once the run has stopped
                changed.append(preempt.job_id)
                record = self.store.get(preempt.job_id)
                await asyncio.to_thread(
                    self.store.transition, preempt.job_id, record.state,
                    "preempted by the policy: stopping its run",
                )  # fmt: skip
                await self.dispatcher.cancel(str(preempt.job_id), record.handle)
            for start in decisions.starts:
                changed.append(start.job_id)
                await self._launch(start)
        if changed:
            self._changed(changed)

    async def _launch(self, start: Start) -> None:
        record = await asyncio.to_thread(
            self.store.transition, start.job_id, st.DISPATCHING,
            f"placed on {', '.join(f'{h}:{list(g)}' for h, g in start.hosts)}",
            expect=[st.PENDING],
            placement=[{"host": h, "gpu_indices": list(g)} for h, g in start.hosts],
            gpu_model=start.gpu_model, handle=None,
        )  # fmt: skip
        spec = record.job_spec()
        launch = Launch(
            job_id=str(record.id),
            name=record.name,
            user=record.user,
            hosts=tuple(HostGpus(h, g) for h, g in start.hosts),
            command=spec.command,
            gpu_memory_bytes=start.memory_bytes,
            annotations=_annotations(spec),
        )
        try:
            handle = await self.dispatcher.launch(launch)
        except DispatchError as exc:
            await self._end(record.id, st.FAILED, f"launch failed: {exc}", self.clock(), None)
            return
        await asyncio.to_thread(
            self.store.transition, record.id, st.DISPATCHING, f"launched: {handle}", handle=handle
        )

    # -- events -------------------------------------------------------------------------------
    async def _consume(self) -> None:
        async for event in self.dispatcher.events():
            try:
                async with self._lock:
                    await self.on_event(event)
            except Exception:
                log.exception("queue: could not apply %s", event)
            self._changed([int(event.job_id)] if event.job_id.isdigit() else [])
            self.wake()

    async def on_event(self, event: DispatchEvent) -> None:
        job_id = int(event.job_id)
        try:
            record = self.store.get(job_id)
        except st.UnknownJobError:
            log.warning("queue: event for unknown job %s: %s", job_id, event.kind)
            return
        if job_id in self.driver.stopping and event.kind != EventKind.STARTED:
            deferred = self.driver.stopped(job_id)
            if event.kind == EventKind.CANCELLED and record.state in st.ACTIVE:
                await asyncio.to_thread(
                    self.store.transition, job_id, st.PENDING, "preempted: its run stopped",
                    reason="preempted",
                )  # fmt: skip
                if deferred is not None:
                    await self._launch(deferred)
                return
            # it ended by itself before the stop took effect: it ends as it ended, below
            # (``_end`` -> ``driver.finished``, which also drops a restart the policy made
            # meanwhile: its GPUs are released and the policy is told the job finished)
        if record.state in st.FINAL or record.state not in st.ACTIVE:
            if record.state in st.FINAL and job_id in self.driver.jobs:
                self.driver.finished(job_id, event.at_seconds)  # it holds nothing any more
            return  # late or repeated news of a job already settled (or waiting again)
        at = event.at_seconds
        if event.kind == EventKind.STARTED:
            if record.state == st.DISPATCHING:
                await asyncio.to_thread(
                    self.store.transition, job_id, st.RUNNING, f"running: {event.handle}",
                    start_seconds=at, handle=event.handle or record.handle,
                    attempts=record.attempts + 1,
                )  # fmt: skip
            return
        if event.kind == EventKind.EXITED:
            if event.reason == "oom":
                await self._out_of_memory(record, at, event.exit_code)
            elif event.exit_code == 0:
                await self._end(job_id, st.SUCCEEDED, "exit code 0", at, 0)
            else:
                why = event.reason or f"exit code {event.exit_code}"
                await self._end(job_id, st.FAILED, why, at, event.exit_code)
        elif event.kind == EventKind.FAILED or (
            event.kind == EventKind.LOST and (event.reason or "").startswith("host down")
        ):
            reason = event.reason or "failed"
            ran = at - record.start_seconds if record.start_seconds is not None else 0.0
            if reason == "oom":
                await self._out_of_memory(record, at, event.exit_code)
            elif reason.startswith("host down") and ran < self.requeue_within_seconds:
                record = await asyncio.to_thread(
                    self.store.transition, job_id, st.PENDING,
                    f"host down after {ran:.0f} s: requeued", reason="host down: requeued",
                )  # fmt: skip
                if job_id in self.driver.jobs:
                    self.driver.requeue(job_id, at, "host down")
                else:
                    self.driver.add(record, at)
            else:
                await self._end(job_id, st.FAILED, reason, at, event.exit_code)
        elif event.kind == EventKind.CANCELLED:
            await self._end(job_id, st.CANCELLED, event.reason or "cancelled", at, event.exit_code)
        elif event.kind == EventKind.LOST:
            await self._end(job_id, st.LOST, event.reason or "lost by the dispatcher", at, None)

    async def _out_of_memory(self, record: JobRecord, at: float, exit_code: int | None) -> None:
        """A run ran out of GPU memory: the job waits for a GPU model with more memory if the
        fleet has one (docs/queue.md, "Failures"), else it ends ``oom``."""
        floor, larger = self.driver.oom_floor(record)
        if floor is None or not larger or record.id not in self.driver.jobs:
            await self._end(record.id, st.OOM, "ran out of GPU memory", at, exit_code)
            return
        where = f"{record.gpu_model} ({floor / 2**30:.0f} GiB per GPU)"
        record = await asyncio.to_thread(
            self.store.transition, record.id, st.PENDING,
            f"ran out of GPU memory on {where}: waits for a larger GPU ({', '.join(larger)})",
            reason="oom: waits for a larger GPU", memory_floor_bytes=floor,
        )  # fmt: skip
        self.driver.retry_larger(record, at)

    async def _end(
        self, job_id: int, state: str, reason: str, at: float, exit_code: int | None
    ) -> None:
        record = self.store.get(job_id)
        runtime = at - record.start_seconds if record.start_seconds is not None else None
        await asyncio.to_thread(
            self.store.transition, job_id, state, reason, end_seconds=at,
            runtime_seconds=runtime, exit_code=exit_code, reason=reason,
        )  # fmt: skip
        self.driver.finished(job_id, at, runtime if state == st.SUCCEEDED else None)

    # -- what the page shows ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        decisions = sorted(self.decision_seconds)
        p99 = decisions[int(0.99 * (len(decisions) - 1))] if decisions else None
        return {
            "dispatcher": self.dispatcher.name,
            "policy": self.driver.policy.name if self.driver.policy else None,
            "passes": self.passes,
            # the fleet as the scheduler last saw it (a job is judged against this)
            "fleet_hosts": len(self.driver.fleet),
            "fleet_gpus": sum(len(h.gpus) for h in self.driver.fleet),
            "decision_p99_seconds": p99,
            "predictor_recent_error": self.driver.recent_error(),
            "predictor_observed": self.driver.predictor.observed,
        }


def start_of(record: JobRecord) -> Start:
    hosts = tuple((p["host"], tuple(p["gpu_indices"])) for p in record.placement or [])
    return Start(record.id, hosts, record.gpu_model or "", None)


def draft_gpus(spec: JobSpec) -> int:
    from gpufleet.queue.driver import num_gpus

    return num_gpus(spec.gpus)


def draft_record(spec: JobSpec, group: str) -> JobRecord:
    """The record a spec would become (id 0), to judge it before anything is stored."""
    return JobRecord(
        0, spec.name, spec.user, group, st.spec_json(spec), spec.gpus, spec.priority, st.PENDING,
        None, None, None, 0.0, None, None, None, None, None, None, 0,
    )  # fmt: skip


def _annotations(spec: JobSpec) -> dict[str, str]:
    """The job's own metadata, as the Kubernetes Job annotations it may have come from
    (``model_name``, ``epoch``, ``data_size`` in GB): kept by dispatchers that have a place."""
    out = {"model_name": spec.model_name}
    if spec.epochs is not None:
        out["epoch"] = str(spec.epochs)
    if spec.data_size_bytes:
        out["data_size"] = f"{spec.data_size_bytes / GB:g}"
    return out
