"""The incremental, vectorised Gavel-style policy decides exactly as the straightforward one
(tests/sched/gavel_reference.py: Python keys, a full sort at every re-plan)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.gavel import load_gavel
from gpufleet.sched.gavel_policy import GavelMaxMin
from gpufleet.sched.queue import BlockList
from gpufleet.sched.runner import Experiment
from gpufleet.sched.sim import Simulator
from gpufleet.sched.trace import read_philly
from tests.conftest import need_file
from tests.sched.conftest import GAVEL_JSON, PHILLY_CSV, make_job
from tests.sched.gavel_reference import GavelReference


def _history(policy, spec, jobs):
    sim = Simulator(spec, jobs, policy, lambda a, b, m: 0.8)
    result = sim.run()
    return (
        [
            (j.job_id, j.first_start_seconds, j.finish_seconds, j.run_seconds, j.preemptions)
            for j in sorted(sim.jobs.values(), key=lambda j: j.job_id)
        ],
        result.preemptions,
        result.oom_failures,
    )


job_strategy = st.tuples(
    st.floats(0, 3000),
    st.floats(60, 5000),
    st.sampled_from([1, 1, 2, 4, 8, 16]),
    st.floats(1, 20),
    st.sampled_from([0.5, 1.0, 1.0, 2.0]),
    st.sampled_from([1.0, 0.25, 0.7]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(job_strategy, min_size=1, max_size=40))
def test_same_decisions_as_the_reference(rows) -> None:
    # two GPU models with different speed ratios per job, small hosts (fragmentation), jobs too
    # big for the K80s' memory (OOM, then excluded) and equal speeds (ties between models)
    spec = parse_cluster("v100:8x4,k80:8x2")

    def jobs():
        out = []
        for i, (arrival, duration, gpus, memory, error, k80) in enumerate(rows):
            item = make_job(i, arrival, duration, gpus, memory_gib=memory, models=("v100", "k80"))
            item.truth.duration_seconds["k80"] = duration / k80
            item.job.runtime_ratio_by_model["k80"] = (1.0 / k80) * (error if error != 1.0 else 1)
            out.append(item)
        return out

    assert _history(GavelMaxMin(spec), spec, jobs()) == _history(GavelReference(), spec, jobs())


@pytest.mark.slow
def test_same_decisions_on_a_philly_virtual_cluster() -> None:
    need_file(PHILLY_CSV, "the shared Philly trace")
    need_file(GAVEL_JSON, "the shared Gavel throughput table")
    spec = parse_cluster("v100:16,p100:16,k80:16")
    experiment = Experiment(
        read_philly(PHILLY_CSV, ["ed69ec"]), spec, load_gavel(GAVEL_JSON), load=1.5, seed=1
    )
    jobs = experiment.jobs()
    assert _history(GavelMaxMin(spec), spec, [j.fresh() for j in jobs]) == _history(
        GavelReference(), spec, [j.fresh() for j in jobs]
    )


def test_block_list_keeps_sorted_order() -> None:
    import random

    rng = random.Random(3)
    items: list[tuple[float, int]] = []
    blocks = BlockList(block=4)
    for step in range(3000):
        if items and rng.random() < 0.45:
            item = rng.choice(items)
            items.remove(item)
            blocks.remove(item)
        else:
            item = (rng.choice([0.0, 1.0, 2.5, rng.random() * 100]), step)
            items.append(item)
            blocks.add(item)
        if step % 97 == 0:
            items.sort()
            assert list(blocks) == items and len(blocks) == len(items)
            assert blocks.head(7) == items[:7]
            if items:
                k = rng.randrange(len(items))
                assert blocks.at(k) == items[k]
                assert blocks.first() == items[0]
                probe = items[k]
                assert blocks.count_upto(probe) == k + 1
    with pytest.raises(ValueError):
        blocks.remove((-1.0, -1))


@settings(max_examples=50, deadline=None)
@given(
    held=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=24),
    need=st.integers(1, 24),
)
def test_can_place_agrees_with_find_whole(held, need) -> None:
    from gpufleet.sched.cluster import ClusterState, Placement

    spec = parse_cluster("v100:24x4")
    cluster = ClusterState(spec)
    for i, gpu in enumerate(set(held)):
        cluster.allocate(i, Placement((gpu,), "v100"))
    assert cluster.can_place(need, "v100") == (cluster.find_whole(need, "v100") is not None)
