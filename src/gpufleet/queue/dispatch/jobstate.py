"""What the supervised dispatchers know about a job, and the events that follow from it: plain
data and pure functions (no I/O), used by :mod:`gpufleet.queue.dispatch.supervised`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gpufleet.queue.dispatch.base import DispatchError, DispatchEvent, EventKind, Launch

Json = dict[str, Any]

FAILED_REASONS = ("oom", "time limit")


@dataclass
class Rank:
    host: str
    pid: int | None = None
    started_at: float | None = None
    known: bool = False  # the agent told us about it since we (re)attached
    record: Json | None = None  # the exit record once it ended
    early: list[Json] = field(default_factory=list)  # exit records seen before its pid
    lost: str | None = None  # why it cannot be found


@dataclass
class Job:
    job_id: str
    ranks: list[Rank]
    phase: str  # launching, reattaching, running, done
    cancel_requested: bool = False
    stopping: bool = False
    final: DispatchEvent | None = None

    @property
    def handle(self) -> str:
        return ",".join(f"{r.pid if r.pid is not None else '-'}@{r.host}" for r in self.ranks)


def parse_handle(handle: str | None) -> list[tuple[str, int | None]] | None:
    """The ``(host, pid)`` of each rank of a handle, in rank order (``None``: no handle)."""
    if not handle:
        return None
    ranks: list[tuple[str, int | None]] = []
    for part in handle.split(","):
        pid, _, host = part.rpartition("@")
        ranks.append((host, int(pid) if pid.isdigit() else None))
    return ranks


def launch_spec(launch: Launch, rank: int, kill_grace_seconds: float) -> Json:
    """What the supervisor is told to run for one rank of ``launch``."""
    if not launch.command:
        raise DispatchError(
            f"launch {launch.job_id}: this dispatcher runs commands, and the job names only"
            f" the image {launch.image!r}"
        )
    env = dict(launch.env)
    env.update(
        GPUFLEET_JOB_ID=launch.job_id,
        GPUFLEET_HOSTS=",".join(h.host for h in launch.hosts),
        GPUFLEET_RANK=str(rank),
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in launch.hosts[rank].gpu_indices),
    )
    spec: Json = {
        "job_id": launch.job_id,
        "rank": rank,
        "host": launch.hosts[rank].host,
        "name": launch.name,
        "user": launch.user,
        "env": env,
        "workdir": launch.workdir,
        "time_limit_seconds": launch.time_limit_seconds,
        "kill_grace_seconds": kill_grace_seconds,
    }
    if len(launch.command) == 1:
        spec["shell_command"] = launch.command[0]
    else:
        spec["argv"] = list(launch.command)
    return spec


def terminal_event(job: Job) -> DispatchEvent:
    """The one event for a job whose ranks have all ended."""
    records = [r.record for r in job.ranks if r.record is not None]
    ended = max(float(rec.get("ended_at") or 0) for rec in records) or time.time()
    cancelled = [rec for rec in records if rec.get("reason") == "cancelled"]
    failures = [rec for rec in job_failures(job) if rec.get("reason") != "cancelled"]
    if job.cancel_requested and cancelled:
        rec = cancelled[0]
    else:  # the first rank that failed by itself decides; a rank we stopped does not
        rec = (failures or cancelled or records)[0]
    reason = rec.get("reason")
    if reason in FAILED_REASONS or str(reason or "").startswith("launch failed"):
        kind = EventKind.FAILED
    elif reason == "cancelled":
        kind = EventKind.CANCELLED
    else:
        kind = EventKind.EXITED
    return DispatchEvent(job.job_id, kind, ended, job.handle, rec.get("exit_code"), reason)


def job_failures(job: Job) -> list[Json]:
    """Exit records of ranks that failed, in the order the ranks are listed."""
    return [
        r.record
        for r in job.ranks
        if r.record is not None and (r.record.get("exit_code") != 0 or r.record.get("reason"))
    ]
