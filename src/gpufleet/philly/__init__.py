"""The Philly job trace: one reader for everyone who replays it (the demo, the simulator, the
recommender's evaluation), and the trace itself, shipped with the package.

``philly_jobs.csv.gz`` (465 KB) is the whole of ``philly_jobs.csv`` as the project's data
folder holds it (62,637 jobs of 11 of the 15 virtual clusters of Microsoft's Philly cluster,
Sep-Dec 2017; Jeon et al., ATC'19, as prepared for the Pollux artifact), gzip-compressed, so
that ``gpufleet demo`` works from a plain clone. Columns: ``timestamp`` (submission, UTC),
``duration`` (s), ``num_gpus``, ``gpu_time``, ``cluster`` (virtual cluster id).

Any other trace with those columns (plain or ``.gz``) is read the same way: ``--trace PATH``
or ``$GPUFLEET_TRACE``.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from gpufleet.errors import GpufleetError

TRACE_ENV = "GPUFLEET_TRACE"
TRACE_NAME = "philly_jobs.csv"
PACKAGED_TRACE = Path(__file__).with_name("philly_jobs.csv.gz")
COLUMNS = ("timestamp", "duration", "num_gpus", "cluster")


class TraceRow(NamedTuple):
    """One row as written in the file (``line``: its line number, a stable job id)."""

    line: int
    submit_seconds: float  # Unix seconds (UTC)
    duration_seconds: float
    num_gpus: int
    cluster: str


@dataclass(frozen=True, slots=True)
class TraceJob:
    """A job the demo and the recommender's evaluation replay (rows with GPUs and a duration).
    ``row`` is its line number in the file (a stable job id)."""

    row: int
    submit: float  # Unix seconds (UTC)
    duration: float  # seconds
    num_gpus: int
    cluster: str  # the trace's virtual cluster id

    @property
    def gpu_time(self) -> float:
        return self.duration * self.num_gpus


def default_trace_path() -> Path:
    """``$GPUFLEET_TRACE`` when set, else the trace shipped with the package."""
    env = os.environ.get(TRACE_ENV)
    return Path(env) if env else PACKAGED_TRACE


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, newline="", encoding="utf-8")  # closed by the caller


def read_rows(path: str | os.PathLike[str] | None = None) -> Iterator[TraceRow]:
    """Every row of a trace file (plain CSV or gzip), in file order; clear errors naming the
    file (and the line) when it is missing or unreadable."""
    path = Path(path) if path is not None else default_trace_path()
    if not path.is_file():
        raise GpufleetError(
            f"the job trace {path} is not there",
            hint=f"pass --trace PATH (or set ${TRACE_ENV}) to a {TRACE_NAME} (or .csv.gz) with "
            "columns timestamp,duration,num_gpus,gpu_time,cluster; without either, the trace "
            "shipped with gpufleet is used",
        )
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            missing = set(COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise GpufleetError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}",
                    hint="the trace needs the columns timestamp,duration,num_gpus,cluster",
                )
            for line, r in enumerate(reader, start=2):
                try:
                    submit = datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC)
                    duration = float(r["duration"])
                    gpus_read = float(r["num_gpus"])
                except (TypeError, ValueError) as exc:
                    raise GpufleetError(f"{path}:{line}: cannot read this row ({exc})") from None
                if not math.isfinite(duration) or duration < 0:
                    raise GpufleetError(
                        f"{path}:{line}: duration: {r['duration']!r} is not a number of "
                        "seconds >= 0"
                    )
                if not math.isfinite(gpus_read) or gpus_read < 0 or gpus_read != int(gpus_read):
                    raise GpufleetError(
                        f"{path}:{line}: num_gpus: {r['num_gpus']!r} is not a whole number >= 0"
                    )
                gpus = int(gpus_read)
                yield TraceRow(line, submit.timestamp(), duration, gpus, r["cluster"])
    except OSError as exc:
        raise GpufleetError(f"cannot read the job trace {path}: {exc}") from None


def load_trace(path: str | os.PathLike[str] | None = None) -> list[TraceJob]:
    """Every job of the trace with GPUs and a duration, sorted by submission time."""
    jobs = [
        TraceJob(r.line, r.submit_seconds, r.duration_seconds, r.num_gpus, r.cluster)
        for r in read_rows(path)
        if r.num_gpus > 0 and r.duration_seconds > 0
    ]
    if not jobs:
        raise GpufleetError(f"the job trace {path or default_trace_path()} holds no jobs")
    jobs.sort(key=lambda j: (j.submit, j.row))
    return jobs
