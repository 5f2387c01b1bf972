"""Read a job trace in the Philly format (``timestamp,duration,num_gpus,gpu_time,cluster``) for
the recommender's evaluation. Pure reading: rows in, ``TraceJob`` out, a clear error on bad
input (the file and line)."""

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
    row: int  # line number in the file
    submit: float  # Unix seconds (UTC)
    duration: float  # seconds
    num_gpus: int
    cluster: str  # virtual cluster id


def default_trace_path() -> Path:
    """``$GPUFLEET_TRACE``, else ``../shared/data/philly_jobs.csv`` beside the checkout."""
    env = os.environ.get(TRACE_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for base in (repo, Path.cwd()):
        candidate = base.parent / "shared" / "data" / TRACE_NAME
        if candidate.is_file():
            return candidate
    return repo.parent / "shared" / "data" / TRACE_NAME


def read_trace(path: str | os.PathLike[str] | None = None) -> list[TraceJob]:
    """Every job with a positive duration and GPU count, by submission time."""
    p = Path(path) if path is not None else default_trace_path()
    if not p.is_file():
        raise GpufleetError(
            f"the job trace {p} is not there",
            hint=f"pass --trace PATH (or set ${TRACE_ENV}) to a CSV with columns "
            "timestamp,duration,num_gpus,cluster",
        )
    jobs: list[TraceJob] = []
    try:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"timestamp", "duration", "num_gpus", "cluster"} - set(
                reader.fieldnames or []
            )
            if missing:
                raise GpufleetError(
                    f"{p}: missing column(s) {', '.join(sorted(missing))}",
                    hint="the trace needs timestamp,duration,num_gpus,cluster",
                )
            for line, r in enumerate(reader, start=2):
                try:
                    ts = datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC).timestamp()
                    duration = float(r["duration"])
                    gpus = int(float(r["num_gpus"]))
                except (TypeError, ValueError) as exc:
                    raise GpufleetError(f"{p}:{line}: cannot read this row ({exc})") from None
                if gpus > 0 and duration > 0:
                    jobs.append(TraceJob(line, ts, duration, gpus, r["cluster"]))
    except OSError as exc:
        raise GpufleetError(f"cannot read the job trace {p}: {exc.strerror}") from None
    if not jobs:
        raise GpufleetError(f"the job trace {p} holds no jobs")
    jobs.sort(key=lambda j: (j.submit, j.row))
    return jobs
