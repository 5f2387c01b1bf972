"""Tiresias's incremental passes decide exactly like the full passes they replaced
(``tiresias_before``): every job starts, is preempted and finishes at the same instants."""

from __future__ import annotations

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.policy import Policy
from gpufleet.sched.sim import SimConfig, Simulator
from gpufleet.sched.tiresias import Tiresias
from tests.sched import tiresias_before
from tests.sched.test_policies import heavy_mix

REALISTIC = SimConfig()
REFERENCE = SimConfig(cost_model="reference")


def _history(policy: Policy, config: SimConfig, seed: int) -> tuple[list[tuple], int]:
    spec = parse_cluster("v100:8x4,k80:8x4")
    sim = Simulator(spec, heavy_mix(seed), policy, lambda a, b, m: 0.8, config)
    result = sim.run()
    jobs = [
        (j.job_id, j.first_start_seconds, j.finish_seconds, j.run_seconds, j.preemptions)
        for j in sim.jobs.values()
    ]
    return jobs, result.preemptions


@pytest.mark.parametrize("config", [REALISTIC, REFERENCE], ids=["realistic", "reference"])
@pytest.mark.parametrize(
    "options",
    [{"gpu_time": True}, {"gpu_time": False}, {"gpu_time": True, "promote_factor": 2.0}],
    ids=["2d-las", "dlas", "promotion"],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_tiresias_decides_like_full_passes(config, options, seed) -> None:
    now = _history(Tiresias(**options), config, seed)
    before = _history(tiresias_before.Tiresias(**options), config, seed)
    assert now[1] > 0, "the mix preempts (the demotions and the queue order have work to do)"
    assert all(j[2] is not None for j in now[0]), "every job finishes"
    assert now == before


def test_tiresias_queues_keep_the_reference_order() -> None:
    """After a pass each queue holds its running jobs first, then its pending ones."""
    policy = Tiresias()
    spec = parse_cluster("v100:8x4,k80:8x4")
    seen = []

    class Watch(Simulator):
        def _record_queue(self) -> None:
            super()._record_queue()
            for queue in policy.queues:
                flags = [j.placement is not None for j in queue]
                seen.append(flags == sorted(flags, reverse=True))

    Watch(spec, heavy_mix(3), policy, lambda a, b, m: 0.8, REALISTIC).run()
    assert seen and all(seen)
