"""The replay dispatcher: jobs "run" on the demo's simulated servers, for as long as they say.

A job runs for the seconds of a leading ``sleep N`` in its command (``sleep 30`` runs 30 s;
``sleep 30; exit 3`` or ``sleep 30 && exit 3`` ends with exit code 3), otherwise for a duration
drawn from a log-normal around ``median_seconds`` (seeded by the job id, so a rerun draws the
same), times ``time_scale`` (the benchmark scales durations down). ``running_on(host)`` says
which jobs hold which GPUs, so the demo's replayed hosts show them as GPU use and the overview's
bars mark them.

Replayed jobs checkpoint: a run that is cancelled (a preemption) keeps the work it did, and the
job's next launch runs only the rest, as the simulator assumes of a preempted job.

GPU memory, when the replayed world is given one (``host_gpu_memory_bytes``: what each GPU of a
host holds, the hardware; ``job_memory_bytes``: what a job really allocates per GPU, the truth
about the job that neither the queue nor its policy can read): a launch whose job needs more on
one of its GPUs than that GPU has left (its memory less what the other replayed runs on it really
use) runs out of GPU memory, as ``sched.sim`` models it. The run fails ``oom_after_seconds``
(times ``time_scale``) after its start, as a CUDA OOM does at the job's first allocations: a
``FAILED`` event with reason ``"oom"`` and exit code 1, a log that says "CUDA out of memory"
(``dispatch.oom`` reads it as such), and no work kept for the next launch. Without a memory
figure for the host or the job, every run fits (the demo's replay fleet).

Its state (the jobs running and when each ends) is kept in a JSON file written before
``launch`` returns, so after a restart of the server ``reattach`` finds each job again: one
that ended meanwhile is reported ``EXITED`` at its end time (``FAILED`` ``"oom"`` if it ran out
of GPU memory), one that still runs ``STARTED``
and keeps its end time; a job it has no record of is ``LOST``. No job runs twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gpufleet.queue.dispatch.base import (
    DispatchEvent,
    EventChannel,
    EventKind,
    Launch,
)


@dataclass
class ReplayRun:
    job_id: str
    user: str
    hosts: list[tuple[str, list[int]]]
    started_seconds: float
    ends_seconds: float
    exit_code: int
    oom: bool = False  # it ends by running out of GPU memory at ``ends_seconds``
    memory_bytes: int | None = None  # what it really allocates on each of its GPUs (None: unknown)


def planned_run(command: Sequence[str], job_id: str, median_seconds: float) -> tuple[float, int]:
    """(seconds, exit code) the job's command asks for (see the module docstring)."""
    words = " ".join(command).replace(";", " ; ").replace("&&", " && ").split()
    seconds: float | None = None
    code = 0
    if len(words) >= 2 and words[0] == "sleep":
        try:
            seconds = float(words[1])
        except ValueError:
            seconds = None
    if "exit" in words:
        at = words.index("exit")
        if at + 1 < len(words) and words[at + 1].lstrip("-").isdigit():
            code = int(words[at + 1])
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        rng = random.Random(f"replay:{job_id}")
        seconds = median_seconds * math.exp(rng.gauss(0.0, 0.8))
    return seconds, code


class ReplayDispatcher:
    name = "replay"

    def __init__(
        self,
        state_path: Path | None = None,
        *,
        time_scale: float = 1.0,
        median_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        host_gpu_memory_bytes: Mapping[str, int] | None = None,
        job_memory_bytes: Callable[[Launch], int | None] | None = None,
        oom_after_seconds: float = 60.0,
    ) -> None:
        if oom_after_seconds < 0 or not math.isfinite(oom_after_seconds):
            raise ValueError(f"replay: oom_after_seconds must be >= 0, not {oom_after_seconds!r}")
        for host, memory in (host_gpu_memory_bytes or {}).items():
            if memory <= 0:
                raise ValueError(
                    f"replay: host {host!r}: GPU memory must be > 0 bytes, not {memory}"
                )
        self.state_path = state_path
        self.time_scale = time_scale
        self.median_seconds = median_seconds
        self.clock = clock
        self.host_gpu_memory_bytes = dict(host_gpu_memory_bytes or {})
        self.job_memory_bytes = job_memory_bytes
        self.oom_after_seconds = oom_after_seconds
        self.runs: dict[str, ReplayRun] = {}
        self.done_seconds: dict[str, float] = {}  # work kept from cancelled runs (checkpoints)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._channel = EventChannel()
        self.launches = 0

    # -- state file -----------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        data = json.loads(self.state_path.read_text())
        self.done_seconds = dict(data.get("done_seconds", {}))
        for item in data.get("runs", []):
            item["hosts"] = [(h, list(g)) for h, g in item["hosts"]]
            run = ReplayRun(**item)
            self.runs[run.job_id] = run

    def _save(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"runs": [asdict(r) for r in self.runs.values()],
                       "done_seconds": self.done_seconds}, f)  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # -- the interface --------------------------------------------------------------------
    async def start(self) -> None:
        self._load()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _arm(self, run: ReplayRun) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, run.ends_seconds - self.clock())
        self._timers[run.job_id] = loop.call_later(delay, self._finish, run.job_id)

    def _finish(self, job_id: str) -> None:
        run = self.runs.pop(job_id, None)
        self._timers.pop(job_id, None)
        if run is None:
            return
        self.done_seconds.pop(job_id, None)  # done, or lost to an OOM (nothing saved)
        self._save()
        self._channel.emit(
            DispatchEvent(
                job_id,
                EventKind.FAILED if run.oom else EventKind.EXITED,
                run.ends_seconds,
                self.handle(run),
                exit_code=run.exit_code,
                reason="oom" if run.oom else None,
            )
        )

    def overflows(self, hosts: Sequence[tuple[str, Sequence[int]]], need: int | None) -> bool:
        """Would a run that allocates ``need`` bytes on each of these GPUs (host, indices) find
        one of them short, beside what the replayed runs on it really use? False where the
        host's GPU memory or the job's need is not known."""
        if need is None:
            return False
        wanted = {(host, g) for host, gpus in hosts for g in gpus}
        used = dict.fromkeys(wanted, 0)
        for run in self.runs.values():
            if run.oom or not run.memory_bytes:
                continue  # a run that failed its allocations holds nothing
            for host, gpus in run.hosts:
                for g in gpus:
                    if (host, g) in used:
                        used[host, g] += run.memory_bytes
        for (host, _), in_use in used.items():
            memory = self.host_gpu_memory_bytes.get(host)
            if memory is not None and in_use + need > memory:
                return True
        return False

    @staticmethod
    def handle(run: ReplayRun) -> str:
        return f"replay:{run.job_id}@{','.join(h for h, _ in run.hosts)}"

    async def launch(self, launch: Launch) -> str:
        existing = self.runs.get(launch.job_id)
        if existing is not None:  # idempotent: a retry starts nothing
            return self.handle(existing)
        seconds, code = planned_run(launch.command, launch.job_id, self.median_seconds)
        seconds = max(0.0, seconds - self.done_seconds.get(launch.job_id, 0.0))
        hosts = [(h.host, list(h.gpu_indices)) for h in launch.hosts]
        need = self.job_memory_bytes(launch) if self.job_memory_bytes is not None else None
        oom = self.overflows(hosts, need)
        if oom:
            seconds, code = self.oom_after_seconds, 1
        now = self.clock()
        run = ReplayRun(
            launch.job_id, launch.user, hosts, now, now + seconds * self.time_scale, code, oom, need
        )
        self.runs[run.job_id] = run
        self._save()
        self.launches += 1
        self._channel.emit(DispatchEvent(run.job_id, EventKind.STARTED, now, self.handle(run)))
        self._arm(run)
        return self.handle(run)

    async def cancel(self, job_id: str, handle: str | None) -> None:
        run = self.runs.pop(job_id, None)
        timer = self._timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        if run is not None and not run.oom:  # a run bound to fail on its memory did no work
            done = (self.clock() - run.started_seconds) / self.time_scale
            self.done_seconds[job_id] = self.done_seconds.get(job_id, 0.0) + done
            self._save()
        self._channel.emit(
            DispatchEvent(job_id, EventKind.CANCELLED, self.clock(), handle, reason="cancelled")
        )

    async def reattach(self, jobs: Sequence[tuple[str, str | None]]) -> None:
        now = self.clock()
        for job_id, handle in jobs:
            run = self.runs.get(job_id)
            if run is None:
                self._channel.emit(
                    DispatchEvent(
                        job_id,
                        EventKind.LOST,
                        now,
                        handle,
                        reason="the replay fleet has no record of it",
                    )
                )
            elif run.ends_seconds <= now:
                self._finish(job_id)
            else:
                self._channel.emit(
                    DispatchEvent(job_id, EventKind.STARTED, run.started_seconds, self.handle(run))
                )
                if job_id not in self._timers:
                    self._arm(run)

    def events(self) -> AsyncIterator[DispatchEvent]:
        return self._channel.events()

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        run = self.runs.get(job_id)
        if run is None:
            return f"replay: job {job_id} is not running on the replay fleet (no logs kept)\n"
        where = ", ".join(f"{h} GPUs {g}" for h, g in run.hosts)
        text = f"replay: job {job_id} started at {run.started_seconds:.0f} on {where}; "
        if run.oom:
            need = (run.memory_bytes or 0) / 2**30
            text += (
                f"torch.OutOfMemoryError: CUDA out of memory (it allocates {need:.1f} GiB per "
                f"GPU, more than its GPUs have free); ends at {run.ends_seconds:.0f} with exit "
                f"code {run.exit_code}\n"
            )
        else:
            text += f"ends at {run.ends_seconds:.0f} with exit code {run.exit_code}\n"
        return text[-tail_bytes:]

    # -- for the demo's replayed hosts ----------------------------------------------------
    def running(self) -> list[ReplayRun]:
        """The runs now (a copy: the demo's fleet reads it from another thread)."""
        for _ in range(5):
            try:
                return list(self.runs.values())
            except RuntimeError:  # changed while copied
                continue
        return []
