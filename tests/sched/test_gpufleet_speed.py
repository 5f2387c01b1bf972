"""gpufleet's policy reads the starving jobs of its scan from a sorted set kept as they start to
starve; it must find exactly what visiting every starving job finds (the way it did before)."""

from __future__ import annotations

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.sim import SimConfig, Simulator
from tests.sched.test_policies import heavy_mix


class CheckedScan(GpufleetPolicy):
    """Compares each scan with the full visit of the starving jobs."""

    scans = 0
    with_extra = 0  # scans that found a starving job among the longest waiting only

    def _starving_in_scan(self, now: float):  # type: ignore[no-untyped-def]
        found = super()._starving_in_scan(now)
        ranked, by_wait = self.ranked, self.by_wait
        rank_limit = ranked.entry_at(self.scan_limit - 1) if len(ranked) > self.scan_limit else None
        wait_limit = (
            by_wait.entry_at(self.starve_scan - 1) if len(by_wait) > self.starve_scan else None
        )
        out = []
        extra = False
        for jid in self._starving_jobs:
            rank_entry = ranked.entry(jid)
            by_rank = rank_limit is None or rank_entry <= rank_limit
            if by_rank or wait_limit is None or by_wait.entry(jid) <= wait_limit:
                out.append(rank_entry)
                extra = extra or not by_rank
        out.sort()
        expected = [
            ((0.0, neg, 1.0, tie, arrival, jid), self._starving_jobs[jid])
            for (neg, tie, arrival), jid in out
        ]
        assert found == expected
        type(self).scans += 1
        type(self).with_extra += extra
        return found


@pytest.mark.parametrize("seed", [1, 2])
def test_starving_scan_finds_what_a_full_visit_finds(seed: int) -> None:
    CheckedScan.scans = CheckedScan.with_extra = 0
    spec = parse_cluster("v100:1x8,k80:1x8")  # small and overloaded: many jobs starve
    policy = CheckedScan(spec, None, starve_after_seconds=600.0, starve_factor=0.0, scan_limit=8)
    policy.starve_scan = 4
    sim = Simulator(spec, heavy_mix(seed), policy, lambda a, b, m: 0.8, SimConfig())
    sim.run()
    assert CheckedScan.scans > 100
    assert CheckedScan.with_extra > 0, "some scans take a starving job by its wait alone"
