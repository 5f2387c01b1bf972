"""The one small interface every dispatcher implements, and the plain data that crosses it.

The queue decides *what* runs *where* (a :class:`Launch`: the job's command or image and the
GPUs on each host); a dispatcher makes it happen and reports back through events, never by
being scanned. The rules every dispatcher keeps:

- **Idempotent by job id.** ``launch`` of a job id that the dispatcher already runs (a retry
  after a crash between "dispatching" and "running" was stored) returns the existing handle and
  starts nothing: no job runs twice.
- **Re-attach, do not re-run.** After a restart the queue calls ``reattach`` with every job it
  believes is dispatching or running (job id, handle or ``None``). The dispatcher finds each one
  again (the SSH supervisor's state directory, Slurm's job name, the Kubernetes Job's label) and
  emits what happened while nobody was watching: ``STARTED`` for one that runs, ``EXITED`` for one
  that ended (with its exit code), ``LOST`` for one it cannot find.
- **Completion is an event** (process exit seen by the supervisor, a Slurm state change, a
  Kubernetes watch event), delivered on :meth:`Dispatcher.events`, in order per job.
- **Failures say what happened**: ``reason`` is ``"oom"`` when the job ran out of GPU memory
  (the queue then retries it on a larger GPU model), ``HOST_OOM`` when the host's memory limit
  killed it (Slurm's OUT_OF_MEMORY, Kubernetes' OOMKilled: a larger GPU would not help),
  ``"cancelled"``, ``"host down"``, ``"time limit"``, ``"launch failed: ..."``, etc., never a bare
  non-zero code where more is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

HOST_OOM = "out of host memory"  # a failure's reason: killed at the host (cgroup) memory limit


@dataclass(frozen=True)
class HostGpus:
    """The GPUs of one host given to a job: ``gpu_indices`` become ``CUDA_VISIBLE_DEVICES``."""

    host: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Launch:
    """What to run and where. A multi-host job has one :class:`HostGpus` per host; the
    dispatcher starts the command on each and sets ``GPUFLEET_JOB_ID``, ``GPUFLEET_HOSTS``
    (comma-separated, in this order), ``GPUFLEET_RANK`` (the host's position) and
    ``CUDA_VISIBLE_DEVICES``."""

    job_id: str
    name: str
    user: str
    hosts: tuple[HostGpus, ...]
    command: tuple[str, ...] = ()  # argv; run through the user's shell when it is one string
    image: str | None = None  # container image (Kubernetes; Slurm/SSH run `command`)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    gpu_memory_bytes: int | None = None  # per GPU, as placed (a limit where the runtime has one)
    time_limit_seconds: float | None = None
    # the job's own metadata, kept where the backend has a place for it (a Kubernetes Job's
    # metadata.annotations: model_name, data_size, epoch, ...); added for the Kubernetes
    # dispatcher, ignored by the others
    annotations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job_id:
            raise ValueError("launch: job_id is empty")
        if not self.hosts:
            raise ValueError(f"launch {self.job_id}: no host")
        if not self.command and not self.image:
            raise ValueError(f"launch {self.job_id}: neither command nor image")

    @property
    def num_gpus(self) -> int:
        return sum(len(h.gpu_indices) for h in self.hosts)


class EventKind(StrEnum):
    STARTED = "started"  # the job's processes run (handle known)
    EXITED = "exited"  # it ended by itself; exit_code 0 is success
    FAILED = "failed"  # it could not start, or ended for a known reason (oom, host down, ...)
    CANCELLED = "cancelled"  # it ended because cancel() was asked
    LOST = "lost"  # the dispatcher cannot find it any more (after reattach, or its host vanished)


@dataclass(frozen=True)
class DispatchEvent:
    job_id: str
    kind: EventKind
    at_seconds: float  # Unix time the dispatcher observed it (the job's own time where known)
    handle: str | None = None  # pid@host / Slurm job id / Kubernetes Job name
    exit_code: int | None = None
    reason: str | None = None  # "oom", HOST_OOM, "host down", "time limit", "launch failed: ..."


class DispatchError(RuntimeError):
    """A launch or cancel that could not be done; the message says why and where."""


@runtime_checkable
class Dispatcher(Protocol):
    name: str  # "ssh", "slurm", "kubernetes", "replay"

    async def start(self) -> None:
        """Connect and begin watching (called once, before any other call)."""
        ...

    async def close(self) -> None:
        """Stop watching and release connections; running jobs keep running."""
        ...

    async def launch(self, launch: Launch) -> str:
        """Start the job; return its handle (stored by the queue). Idempotent per job id."""
        ...

    async def cancel(self, job_id: str, handle: str | None) -> None:
        """Stop the job; a ``CANCELLED`` event follows once it has stopped."""
        ...

    async def reattach(self, jobs: Sequence[tuple[str, str | None]]) -> None:
        """Find again the jobs the queue believes are dispatching or running (after a restart)
        and emit an event for each: STARTED, EXITED/FAILED if it ended meanwhile, or LOST."""
        ...

    def events(self) -> AsyncIterator[DispatchEvent]:
        """Every event, in order per job; one consumer (the queue)."""
        ...

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        """The last ``tail_bytes`` of the job's combined stdout/stderr."""
        ...


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a dispatcher's background task and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class EventChannel:
    """The event plumbing most dispatchers share: ``emit`` from any task, one consumer reads
    ``events()``. Unbounded, so a slow consumer never makes a dispatcher drop an exit."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[DispatchEvent] = asyncio.Queue()

    def emit(self, event: DispatchEvent) -> None:
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[DispatchEvent]:
        while True:
            yield await self._queue.get()
