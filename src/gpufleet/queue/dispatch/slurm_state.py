"""What a Slurm job record means for the queue: pure functions over ``squeue --json`` records
and ``sacct --parsable2`` lines, no I/O (the dispatcher in :mod:`slurm` runs the commands).

``squeue --json`` changed shape between releases: Slurm 22.05 (Debian bookworm) gives
``job_state`` as a string and ``exit_code`` as the raw wait status; 23.02 and later give a list
of states and ``{"return_code": {"number": N}, "signal": {"id": {"number": S}}}``. Both read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.queue.dispatch.base import HOST_OOM, EventKind

RUNNING = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"})
TERMINAL = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
     "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
# states a job can end in without ever running; Slurm still stamps a start time on them, so an
# ended job in one of these counts as started only if the dispatcher saw it running
MAY_NOT_RUN = frozenset({"CANCELLED", "DEADLINE", "BOOT_FAIL", "REVOKED"})


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job as the controller (or the accounting database) reports it."""

    slurm_id: str
    name: str
    state: str  # upper case, e.g. "RUNNING", "COMPLETED"
    exit_code: int | None = None  # the shell's convention: 128 + signal when killed
    start_seconds: float | None = None
    end_seconds: float | None = None

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL


def _number(value: Any) -> float | None:
    """An integer field of either shape: ``5`` or ``{"set": true, "number": 5}``."""
    if isinstance(value, Mapping):
        if value.get("set") is False or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _exit_code(value: Any) -> int | None:
    if isinstance(value, Mapping):  # 23.02+
        signal = _number(((value.get("signal") or {}).get("id")) or None)
        if signal:
            return 128 + int(signal)
        code = _number(value.get("return_code"))
        return None if code is None else int(code)
    raw = _number(value)
    if raw is None:
        return None
    status = int(raw)  # 22.05: the wait status of the batch script
    if status & 0x7F:
        return 128 + (status & 0x7F)
    return (status >> 8) & 0xFF


def _time(value: Any) -> float | None:
    seconds = _number(value)
    return seconds if seconds else None  # Slurm says 0 for "not yet"


def from_squeue_record(record: Mapping[str, Any]) -> SlurmJob:
    """One element of ``squeue --json``'s ``jobs`` list."""
    state = record.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else "UNKNOWN"
    return SlurmJob(
        slurm_id=str(record.get("job_id")),
        name=str(record.get("name", "")),
        state=str(state or "UNKNOWN").upper(),
        exit_code=_exit_code(record.get("exit_code")),
        start_seconds=_time(record.get("start_time")),
        end_seconds=_time(record.get("end_time")),
    )


def from_sacct_line(line: str) -> SlurmJob | None:
    """One line of ``sacct --noheader --parsable2 --allocations
    --format=JobID,JobName,State,ExitCode`` (``ExitCode`` is ``code:signal``)."""
    parts = line.strip().split("|")
    if len(parts) < 4 or not parts[0]:
        return None
    slurm_id, name, state, exit_field = parts[:4]
    code_text, _, signal_text = exit_field.partition(":")
    exit_code: int | None = None
    if signal_text.isdigit() and int(signal_text):
        exit_code = 128 + int(signal_text)
    elif code_text.isdigit():
        exit_code = int(code_text)
    # "CANCELLED by 0" carries who cancelled it
    return SlurmJob(slurm_id, name, state.split()[0].upper() if state else "UNKNOWN", exit_code)


@dataclass(frozen=True)
class Outcome:
    """The event an ended Slurm job becomes (before the log is read for a CUDA OOM)."""

    kind: EventKind
    exit_code: int | None
    reason: str | None


def outcome(job: SlurmJob) -> Outcome:
    """COMPLETED -> EXITED 0, FAILED -> EXITED code, CANCELLED -> CANCELLED, TIMEOUT -> FAILED
    "time limit", OUT_OF_MEMORY -> FAILED "out of host memory", NODE_FAIL -> FAILED "host down"."""
    state = job.state
    if state == "COMPLETED":
        return Outcome(EventKind.EXITED, 0, None)
    if state == "FAILED":
        return Outcome(EventKind.EXITED, job.exit_code if job.exit_code else 1, None)
    if state == "CANCELLED":
        return Outcome(EventKind.CANCELLED, job.exit_code, "cancelled")
    reasons = {
        "TIMEOUT": "time limit",
        "OUT_OF_MEMORY": HOST_OOM,  # the cgroup's limit on host memory, not the GPU's
        "NODE_FAIL": "host down",
        "BOOT_FAIL": "host down",
        "DEADLINE": "deadline",
        "PREEMPTED": "preempted",
    }
    return Outcome(EventKind.FAILED, job.exit_code, reasons.get(state, f"slurm state {state}"))
