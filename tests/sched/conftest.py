from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.simjob import SimJob
from tests.conftest import need_file

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GAVEL_JSON = DATA / "gavel_throughputs.json"
PHILLY_CSV = DATA / "philly_jobs.csv"

GIB = 2**30


def make_job(
    job_id: int,
    arrival: float,
    duration: float,
    gpus: int = 1,
    *,
    memory_gib: float = 4.0,
    predicted: float | None = None,
    models: tuple[str, ...] = ("v100",),
    job_type: str = "ResNet-18 (batch size 32)",
    predicted_memory_gib: float | None = None,
) -> SimJob:
    guess = duration if predicted is None else predicted
    return SimJob(
        job_id=job_id,
        arrival_seconds=arrival,
        num_gpus=gpus,
        job_type=job_type,
        true_duration_seconds={m: duration for m in models},
        true_gpu_memory_bytes=int(memory_gib * GIB),
        predicted_duration_seconds={m: guess for m in models},
        predicted_gpu_memory_bytes=int((predicted_memory_gib or memory_gib) * GIB),
    )


@pytest.fixture
def small_cluster():
    return parse_cluster("v100:4x4")


@pytest.fixture(scope="session")
def gavel_table():
    need_file(GAVEL_JSON, "the shared Gavel throughput table")
    from gpufleet.sched.gavel import load_gavel

    return load_gavel(GAVEL_JSON)
