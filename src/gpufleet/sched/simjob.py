"""A job as the scheduling core sees it while it waits and runs.

A ``SimJob`` carries two kinds of numbers. ``predicted_*`` fields are what a scheduler may know
(from the predictor and the job spec); the ``true_*`` fields are what the simulator uses to decide
how long the job really runs and whether it really fits in GPU memory. Policies read only the
``predicted_*`` fields -- the oracle SJF baseline is the one documented exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.sched.cluster import Placement

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(slots=True, eq=False)
class SimJob:
    job_id: int
    arrival_seconds: float
    num_gpus: int
    job_type: str
    # truth: alone runtime of the whole job per GPU model (missing model: cannot run there)
    true_duration_seconds: dict[str, float]
    true_gpu_memory_bytes: int
    # what the scheduler knows
    predicted_duration_seconds: dict[str, float]
    predicted_gpu_memory_bytes: int
    data_size_bytes: int = 0
    data_host: int | None = None  # host id holding the data; None: remote storage
    user: str = ""
    synthetic: bool = True
    # state
    status: str = WAITING
    placement: Placement | None = None
    progress_fraction: float = 0.0
    rate_per_second: float = 0.0
    progress_from_seconds: float = 0.0
    run_started_seconds: float = 0.0
    first_start_seconds: float | None = None
    finish_seconds: float | None = None
    run_seconds: float = 0.0
    attained_gpu_seconds: float = 0.0
    last_wait_from_seconds: float = 0.0
    oom_failures: int = 0
    preemptions: int = 0
    restart_pending: bool = False
    exclusive: bool = False  # never share a GPU again (it ran out of memory while sharing)
    excluded_gpu_models: set[str] = field(default_factory=set)
    version: int = 0

    def fresh(self) -> SimJob:
        """A copy in its initial state (what was given, none of what happened)."""
        return SimJob(
            self.job_id,
            self.arrival_seconds,
            self.num_gpus,
            self.job_type,
            dict(self.true_duration_seconds),
            self.true_gpu_memory_bytes,
            dict(self.predicted_duration_seconds),
            self.predicted_gpu_memory_bytes,
            self.data_size_bytes,
            self.data_host,
            self.user,
            self.synthetic,
        )

    def predicted_remaining_seconds(self, gpu_model: str) -> float:
        base = self.predicted_duration_seconds.get(gpu_model, float("inf"))
        return base * (1.0 - self.progress_fraction)

    def best_predicted_seconds(self) -> float:
        values = [
            v
            for m, v in self.predicted_duration_seconds.items()
            if m not in self.excluded_gpu_models
        ]
        return min(values) if values else float("inf")

    def attained_now(self, now_seconds: float) -> float:
        """GPU-seconds of service including the current run."""
        if self.status == RUNNING:
            return (
                self.attained_gpu_seconds + (now_seconds - self.run_started_seconds) * self.num_gpus
            )
        return self.attained_gpu_seconds

    def progress_at(self, now_seconds: float) -> float:
        if self.status != RUNNING:
            return self.progress_fraction
        return (
            self.progress_fraction
            + max(0.0, now_seconds - self.progress_from_seconds) * self.rate_per_second
        )
