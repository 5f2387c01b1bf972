"""The one interface every scheduling policy implements, and the context that drives it.

A policy never does I/O and never reads a clock: the driver (the simulator, or the live scheduler)
tells it what happened (``on_arrival``, ``on_finish``, ``on_failure``) and then calls
``schedule(ctx)``; the policy starts and preempts jobs through ``ctx``. ``next_wakeup_seconds``
asks the driver to call ``schedule`` again at a given time even if nothing happens.

What a policy may see is what ``SchedulerContext`` and ``SimJob`` hold (see ``simjob``): the
simulator hands the policy a ``PolicyContext`` (the clock, the cluster's occupancy, the running
jobs' views, ``start``/``preempt``), never itself, so the truth it keeps is out of reach.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from gpufleet.sched.cluster import ClusterState, Placement
from gpufleet.sched.simjob import SimJob


class SchedulerContext(Protocol):
    now_seconds: float
    cluster: ClusterState

    @property
    def running(self) -> Mapping[int, SimJob]: ...

    def start(self, job: SimJob, placement: Placement, claimed_memory_bytes: int = 0) -> None: ...

    def preempt(self, job: SimJob) -> None: ...


class PolicyContext:
    """The only object a policy is given at ``schedule``: the clock, the cluster's occupancy, the
    running jobs (their views) and the two actions. No attribute of it, or of a view, holds the
    simulator's truth (kept in a private, name-mangled mapping of the simulator), so no public
    attribute path reaches it; only deliberate introspection of private members could."""

    __slots__ = ("_preempt", "_running", "_start", "cluster", "now_seconds")

    def __init__(
        self,
        cluster: ClusterState,
        running: Mapping[int, SimJob],
        start: Callable[[SimJob, Placement, int], None],
        preempt: Callable[[SimJob], None],
    ) -> None:
        self.now_seconds = 0.0
        self.cluster = cluster
        self._running = running
        self._start = start
        self._preempt = preempt

    @property
    def running(self) -> Mapping[int, SimJob]:
        return self._running

    def start(self, job: SimJob, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        self._start(job, placement, claimed_memory_bytes)

    def preempt(self, job: SimJob) -> None:
        self._preempt(job)


class RuntimeEstimator(Protocol):
    """What a policy may know of a job's length: a prediction from what is known at submission,
    updated from jobs that have finished (``observe``)."""

    def predict_seconds(self, job: SimJob) -> float:
        """Predicted runtime on the reference GPU model (multiply by the job's runtime ratio)."""
        ...

    def observe(self, job: SimJob, seconds: float) -> None:
        """A job finished; ``seconds`` is its observed runtime on the reference GPU model."""
        ...


class Policy(ABC):
    name: str = "policy"
    uses_memory: bool = False  # places memory-safely (checks known memory)
    oracle: bool = False  # reads true runtimes (a study, never a baseline a claim is made against)

    @abstractmethod
    def on_arrival(self, job: SimJob, now_seconds: float) -> None: ...

    def on_finish(self, job: SimJob, now_seconds: float) -> None:  # noqa: B027 (optional hook)
        """A running job completed (its GPUs are already released)."""

    @abstractmethod
    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        """A job failed (``"oom"``) or was preempted and is waiting again."""

    @abstractmethod
    def schedule(self, ctx: SchedulerContext) -> None: ...

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return None

    def on_withdraw(self, job: SimJob, now_seconds: float) -> None:
        """A waiting job leaves before it runs again (a live queue: cancelled or held). The
        simulator never calls it; a policy that cannot forget a job says so."""
        raise NotImplementedError(f"policy {self.name} cannot withdraw a waiting job")


def allowed_models(job: SimJob, gpu_models: Iterable[str]) -> list[str]:
    """GPU models a job may be placed on: listed for it and not excluded after an OOM."""
    return [
        m
        for m in gpu_models
        if m not in job.excluded_gpu_models and m in job.runtime_ratio_by_model
    ]


def first_fit_placement(
    job: SimJob, cluster: ClusterState, gpu_models: Iterable[str]
) -> Placement | None:
    """Memory-unaware placement of the literature baselines: first GPU model (in cluster order)
    with enough free GPUs."""
    for model in allowed_models(job, gpu_models):
        placement = cluster.find_whole(job.num_gpus, model)
        if placement is not None:
            return placement
    return None


def fits_anywhere(job: SimJob, cluster: ClusterState) -> bool:
    return any(
        cluster.spec.gpus_of(m) >= job.num_gpus
        for m in allowed_models(job, cluster.spec.gpu_models)
    )
