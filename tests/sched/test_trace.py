from __future__ import annotations

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.metrics import summarize
from gpufleet.sched.runner import Experiment
from gpufleet.sched.trace import TraceJob, build_jobs, natural_load, read_philly
from tests.conftest import need_file
from tests.sched.conftest import PHILLY_CSV


def _trace() -> list[TraceJob]:
    return [
        TraceJob(1000.0 + 300 * i, 600.0 + 50 * (i % 7), [1, 1, 2, 4, 8][i % 5], "x")
        for i in range(40)
    ]


def test_same_seed_same_jobs_and_result(gavel_table) -> None:
    spec = parse_cluster("v100:8,p100:8,k80:8")
    a = build_jobs(_trace(), spec, gavel_table, seed=3)
    b = build_jobs(_trace(), spec, gavel_table, seed=3)
    c = build_jobs(_trace(), spec, gavel_table, seed=4)
    assert [(j.job.job_type, j.truth.gpu_memory_bytes) for j in a] == [
        (j.job.job_type, j.truth.gpu_memory_bytes) for j in b
    ]
    assert [j.job.job_type for j in a] != [j.job.job_type for j in c]
    runs = []
    for _ in range(2):
        out = Experiment(_trace(), spec, gavel_table, seed=3).run(["gpufleet", "tiresias"])
        runs.append(
            {
                n: {
                    k: v
                    for k, v in summarize(r).items()
                    if "wall" not in k and "per_second" not in k
                }
                for n, (_, r) in out.items()
            }
        )
    assert runs[0] == runs[1]


def test_load_scaling(gavel_table) -> None:
    spec = parse_cluster("v100:8,p100:8,k80:8")
    natural = natural_load(_trace(), spec, gavel_table)
    jobs = build_jobs(_trace(), spec, gavel_table, load=2 * natural)
    assert jobs[-1].job.arrival_seconds == pytest.approx(300 * 39 / 2)


def test_read_philly_filters() -> None:
    need_file(PHILLY_CSV, "the Philly trace")
    rows = read_philly(PHILLY_CSV, ["2869ce"])
    assert len(rows) == 422 and all(r.vc == "2869ce" for r in rows)
    assert rows == sorted(rows, key=lambda r: r.submit_seconds)
