"""Glue between a trace, a cluster, the predictors and the policies: one call per experiment.
Used by ``gpufleet simulate`` and bench/sched_bench.py.

Every policy of one ``run`` gets the same jobs, the same cluster and the same cost model. The
non-oracle policies that use runtimes (EASY, gpufleet, gavel-lp-jct, gavel-lp-makespan) each get their own fresh online runtime
predictor, which learns only from the jobs that finish in their own run. The oracle studies
(``sjf``, ``sjf-noisy``) are handed the true runtimes here, explicitly, and are flagged
``oracle``: they are never the "best baseline".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpufleet.sched.baselines import EasyBackfill, Fifo, ShortestJobFirst
from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.gavel import GavelTable
from gpufleet.sched.gavel_lp import GavelLP
from gpufleet.sched.gavel_policy import GavelMaxMin
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.metrics import summarize
from gpufleet.sched.policy import Policy
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.sim import SimConfig, SimResult, Simulator
from gpufleet.sched.simjob import SimInput
from gpufleet.sched.tiresias import Tiresias
from gpufleet.sched.trace import TraceJob, build_jobs

POLICY_NAMES = (
    "fifo",
    "easy",
    "tiresias",
    "dlas",
    "gavel",
    "gavel-lp",
    "gavel-lp-jct",
    "gavel-lp-makespan",
    "gpufleet",
    "sjf",
    "sjf-noisy",
)
ORACLE_POLICIES = ("sjf", "sjf-noisy")
# ``gavel`` is the Gavel-style heuristic (no LP); the ``gavel-lp*`` ones solve the paper's LPs
NON_ORACLE_BASELINES = tuple(
    n for n in POLICY_NAMES if n not in ORACLE_POLICIES and n != "gpufleet"
)


def truth_colocation(gavel: GavelTable) -> Callable[[str, str, str], float]:
    """True speed kept while sharing a GPU: Gavel's measured pair, 0.5 where it has none."""

    def factor(own: str, other: str, model: str) -> float:
        value = gavel.colocation_factor(model, own, other)
        return value if value is not None else 0.5

    return factor


def oracle_seconds(
    jobs: list[SimInput], noise_sigma: float = 0.0, seed: int = 0
) -> dict[int, float]:
    """The true best runtime of each job (times exp(N(0, sigma)) for the noisy-oracle study)."""
    rng = random.Random(seed)
    out = {}
    for item in jobs:
        best = min(item.truth.duration_seconds.values())
        out[item.job.job_id] = best * (math.exp(rng.gauss(0.0, noise_sigma)) if noise_sigma else 1)
    return out


def make_policy(
    name: str,
    spec: ClusterSpec,
    config: SimConfig,
    jobs: list[SimInput] | None = None,
    *,
    runtime_error: float = 0.5,
    seed: int = 0,
) -> Policy:
    """A fresh policy. ``jobs`` (with their truth) is read only for the oracle studies."""
    if name in ORACLE_POLICIES:
        if jobs is None:
            raise ValueError(f"{name} is an oracle study: it needs the jobs' true runtimes")
        sigma = runtime_error if name == "sjf-noisy" else 0.0
        return ShortestJobFirst(oracle_seconds(jobs, sigma, seed), name=name)
    factories: dict[str, Callable[[], Policy]] = {
        "fifo": Fifo,
        "easy": lambda: EasyBackfill(OnlineRuntimePredictor()),
        "tiresias": lambda: Tiresias(gpu_time=True),
        "dlas": lambda: _named(Tiresias(gpu_time=False), "dlas"),
        "gavel": lambda: GavelMaxMin(spec),
        "gavel-lp": lambda: GavelLP(spec, "max_min"),
        "gavel-lp-jct": lambda: GavelLP(spec, "min_jct", OnlineRuntimePredictor()),
        "gavel-lp-makespan": lambda: GavelLP(spec, "makespan", OnlineRuntimePredictor()),
        "gpufleet": lambda: GpufleetPolicy(
            spec, OnlineRuntimePredictor(), realistic=not config.reference
        ),
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return factories[name]()


def _named(policy: Policy, name: str) -> Policy:
    policy.name = name
    return policy


def run_policies(
    spec: ClusterSpec,
    jobs: list[SimInput],
    policy_names: list[str],
    config: SimConfig,
    colocation: Callable[[str, str, str], float] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    *,
    runtime_error: float = 0.5,
    seed: int = 0,
) -> dict[str, tuple[dict[str, Any], SimResult]]:
    out = {}
    for name in policy_names:
        policy = make_policy(name, spec, config, jobs, runtime_error=runtime_error, seed=seed)
        progress = (
            (lambda done, total, n=name: on_progress(n, done, total)) if on_progress else None
        )
        sim = Simulator(spec, [j.fresh() for j in jobs], policy, colocation, config, progress)
        result = sim.run()
        summary = summarize(result)
        summary["oracle"] = policy.oracle
        stats = getattr(policy, "stats", None)  # a policy's own counters (the Gavel LPs' solves)
        if stats is not None and hasattr(stats, "as_dict"):
            summary.update(stats.as_dict())
        out[name] = (summary, result)
    return out


@dataclass
class Experiment:
    trace: list[TraceJob]
    spec: ClusterSpec
    gavel: GavelTable
    load: float = 1.0
    seed: int = 0
    runtime_error: float = 0.5  # noise of the noisy-oracle study only
    config: SimConfig = field(default_factory=SimConfig)

    def jobs(self, predictor: Any = None) -> list[SimInput]:
        ratio = predictor.runtime_ratio if predictor is not None else None
        return build_jobs(
            self.trace, self.spec, self.gavel, load=self.load, seed=self.seed, predicted_ratio=ratio
        )

    def run(
        self,
        policy_names: list[str],
        predictor: Any = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, tuple[dict[str, Any], SimResult]]:
        return run_policies(
            self.spec,
            self.jobs(predictor),
            policy_names,
            self.config,
            truth_colocation(self.gavel),
            on_progress,
            runtime_error=self.runtime_error,
            seed=self.seed,
        )
