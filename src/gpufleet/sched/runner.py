"""Glue between a trace, a cluster, the predictor and the policies: one call per experiment.
Used by ``gpufleet simulate`` and bench/sched_bench.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufleet.sched.baselines import EasyBackfill, Fifo, ShortestJobFirst
from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.gavel import GavelTable
from gpufleet.sched.gavel_policy import GavelMaxMin
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.metrics import summarize
from gpufleet.sched.policy import Policy
from gpufleet.sched.sim import SimConfig, SimResult, Simulator
from gpufleet.sched.simjob import SimJob
from gpufleet.sched.trace import TraceJob, build_jobs

POLICY_NAMES = ("fifo", "sjf", "easy", "tiresias", "gavel", "gpufleet")
ORACLE_POLICIES = ("sjf",)


def truth_colocation(gavel: GavelTable) -> Callable[[str, str, str], float]:
    """True speed kept while sharing a GPU: Gavel's measured pair, 0.5 where it has none."""

    def factor(own: str, other: str, model: str) -> float:
        value = gavel.colocation_factor(model, own, other)
        return value if value is not None else 0.5

    return factor


def make_policy(
    name: str, spec: ClusterSpec, predict_colocation: Callable[[str, str, str], float | None] | None
) -> Policy:
    from gpufleet.sched.tiresias import Tiresias

    factories: dict[str, Callable[[], Policy]] = {
        "fifo": Fifo,
        "sjf": ShortestJobFirst,
        "easy": EasyBackfill,
        "tiresias": Tiresias,
        "gavel": lambda: GavelMaxMin(spec),
        "gpufleet": lambda: GpufleetPolicy(spec, predict_colocation),
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return factories[name]()


@dataclass
class Experiment:
    trace: list[TraceJob]
    spec: ClusterSpec
    gavel: GavelTable
    load: float = 1.0
    seed: int = 0
    runtime_error: float = 0.5
    config: SimConfig = field(default_factory=SimConfig)

    def jobs(self, predictor: Any = None) -> list[SimJob]:
        ratio = predictor.runtime_ratio if predictor is not None else None
        memory = predictor.memory_bytes if predictor is not None else None
        return build_jobs(
            self.trace,
            self.spec,
            self.gavel,
            load=self.load,
            seed=self.seed,
            runtime_error=self.runtime_error,
            predicted_ratio=ratio,
            predicted_memory=memory,
        )

    def run(
        self,
        policy_names: list[str],
        predictor: Any = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, tuple[dict[str, Any], SimResult]]:
        jobs = self.jobs(predictor)
        colocation = truth_colocation(self.gavel)
        predicted_colocation = (
            predictor.colocation_factor
            if predictor is not None
            else lambda a, b, m: self.gavel.colocation_factor(m, a, b)
        )
        out = {}
        for name in policy_names:
            policy = make_policy(name, self.spec, predicted_colocation)
            progress = (
                (lambda done, total, n=name: on_progress(n, done, total)) if on_progress else None
            )
            sim = Simulator(
                self.spec, [j.fresh() for j in jobs], policy, colocation, self.config, progress
            )
            result = sim.run()
            out[name] = (summarize(result), result)
        return out
