from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.simjob import JobTruth, SimInput, SimJob
from tests.conftest import need_file

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GAVEL_JSON = DATA / "gavel_throughputs.json"
PHILLY_CSV = DATA / "philly_jobs.csv"

GIB = 2**30
TIRESIAS = DATA / "tiresias"


def make_job(
    job_id: int,
    arrival: float,
    duration: float,
    gpus: int = 1,
    *,
    memory_gib: float = 4.0,
    models: tuple[str, ...] = ("v100",),
    job_type: str = "ResNet-18 (batch size 32)",
    requested_memory_gib: float | None = None,
    user: str = "",
    vc: str = "vc",
) -> SimInput:
    """A job that runs ``duration`` seconds on every GPU model given (ratio 1 between them)."""
    view = SimJob(
        job_id=job_id,
        arrival_seconds=arrival,
        num_gpus=gpus,
        job_type=job_type,
        runtime_ratio_by_model={m: 1.0 for m in models},
        gpu_memory_bytes=int(requested_memory_gib * GIB) if requested_memory_gib else None,
        user=user,
        vc=vc,
    )
    return SimInput(view, JobTruth({m: duration for m in models}, int(memory_gib * GIB)))


def need_data(path: Path) -> Path:
    """A shared data file a test needs; in CI (GPUFLEET_REQUIRE_SERVICES=1) missing fails."""
    return need_file(path, "shared data")


@pytest.fixture
def small_cluster():
    return parse_cluster("v100:4x4")


@pytest.fixture(scope="session")
def gavel_table():
    need_file(GAVEL_JSON, "the shared Gavel throughput table")
    from gpufleet.sched.gavel import load_gavel

    return load_gavel(GAVEL_JSON)
