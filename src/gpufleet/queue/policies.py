"""The policies the live queue can drive: the simulator's own classes, built the way
``sched.runner.make_policy`` builds them for ``gpufleet simulate`` (realistic cost model), with
the driver's online runtime predictor (so what the live queue learns is what the policy uses).

The default is ``gpufleet`` (the online Gittins index over attained service): in the simulator
it beats FIFO by about 2x and 2D-LAS on the 0e4a51 reference trace (docs/scheduler.md). EASY is
not offered live yet: its reservation reads every GPU holder's predicted end, and the live
cluster also holds GPUs busy with work from outside the queue.
"""

from __future__ import annotations

from collections.abc import Callable

from gpufleet.sched.baselines import Fifo
from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.policy import Policy
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.tiresias import Tiresias

DEFAULT_POLICY = "gpufleet"
LIVE_POLICIES = ("gpufleet", "fifo", "tiresias", "dlas")

PolicyFactory = Callable[[ClusterSpec, OnlineRuntimePredictor], Policy]


def policy_factory(name: str) -> PolicyFactory:
    def gpufleet(spec: ClusterSpec, predictor: OnlineRuntimePredictor) -> Policy:
        return GpufleetPolicy(spec, predictor, realistic=True)

    def dlas(spec: ClusterSpec, predictor: OnlineRuntimePredictor) -> Policy:
        policy = Tiresias(gpu_time=False)
        policy.name = "dlas"
        return policy

    factories: dict[str, PolicyFactory] = {
        "gpufleet": gpufleet,
        "fifo": lambda spec, predictor: Fifo(),
        "tiresias": lambda spec, predictor: Tiresias(gpu_time=True),
        "dlas": dlas,
    }
    if name not in factories:
        raise ValueError(
            f"queue.policy: {name!r} is not a live policy; choose from {', '.join(LIVE_POLICIES)}"
        )
    return factories[name]
