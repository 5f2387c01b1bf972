"""Read the Philly job trace (``timestamp,duration,num_gpus,gpu_time,cluster``)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gpufleet.errors import GpufleetError

TRACE_ENV = "GPUFLEET_TRACE"
TRACE_NAME = "philly_jobs.csv"


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One row of the trace. ``row`` is its line number in the file (a stable job id)."""

    row: int
    submit: float  # Unix seconds (UTC)
    duration: float  # seconds
    num_gpus: int
    cluster: str  # the trace's virtual cluster id

    @property
    def gpu_time(self) -> float:
        return self.duration * self.num_gpus


def default_trace_path() -> Path:
    """``$GPUFLEET_TRACE``, else ``../shared/data/philly_jobs.csv`` next to the checkout (or
    next to the current directory)."""
    env = os.environ.get(TRACE_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        candidate = base.parent / "shared" / "data" / TRACE_NAME
        if candidate.is_file():
            return candidate
    return repo.parent / "shared" / "data" / TRACE_NAME


def load_trace(path: str | os.PathLike[str] | None = None) -> list[TraceJob]:
    """Every job of the trace, sorted by submission time; a clear error when it is missing."""
    path = Path(path) if path is not None else default_trace_path()
    if not path.is_file():
        raise GpufleetError(
            f"the job trace {path} is not there",
            hint=f"pass --trace PATH (or set ${TRACE_ENV}) to a {TRACE_NAME} with columns "
            "timestamp,duration,num_gpus,gpu_time,cluster",
        )
    jobs: list[TraceJob] = []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"timestamp", "duration", "num_gpus", "cluster"} - set(
                reader.fieldnames or []
            )
            if missing:
                raise GpufleetError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}",
                    hint="the trace needs timestamp,duration,num_gpus,cluster",
                )
            for line, r in enumerate(reader, start=2):
                try:
                    submit = datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC)
                    duration = float(r["duration"])
                    gpus = int(float(r["num_gpus"]))
                except (TypeError, ValueError) as exc:
                    raise GpufleetError(f"{path}:{line}: cannot read this row ({exc})") from None
                if gpus <= 0 or duration <= 0:
                    continue
                jobs.append(TraceJob(line, submit.timestamp(), duration, gpus, r["cluster"]))
    except OSError as exc:
        raise GpufleetError(f"cannot read the job trace {path}: {exc.strerror}") from None
    if not jobs:
        raise GpufleetError(f"the job trace {path} holds no jobs")
    jobs.sort(key=lambda j: (j.submit, j.row))
    return jobs
