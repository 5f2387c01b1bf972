"""A job as the scheduling core sees it while it waits and runs, and the truth kept apart from it.

The information boundary is enforced by the types, not by convention:

- ``SimJob`` is the policy's view. It holds what a real scheduler knows: the spec at submission
  (GPUs, the annotated model name, GPU memory where the user gave it, user/VC, data size and
  where the data is), the job's estimated runtime *ratio* between GPU models (from the benchmark
  table, known once the model is annotated), and what happened to it so far (its placement,
  attained service, time held, OOMs, preemptions, memory measured while it ran). It has no
  field for the true duration, the true memory or the true progress (``__slots__``: such an
  attribute cannot even be set on it).
- ``JobTruth`` holds the true runtime per GPU model, the true GPU memory and the true progress.
  Only the simulator holds it (``Simulator`` keeps it in a private mapping); the context a policy
  is given (``SchedulerContext``) has no path to it. Oracle policies (``sjf``, the noisy-oracle
  study) are handed the true runtimes explicitly by the runner and are labelled as oracles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.sched.cluster import Placement

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(slots=True, eq=False)
class JobTruth:
    """What only the simulator knows: the job's real runtime alone per GPU model (a missing
    model: it cannot run there), its real GPU memory per GPU and its real progress."""

    duration_seconds: dict[str, float]
    gpu_memory_bytes: int
    progress_fraction: float = 0.0
    rate_per_second: float = 0.0
    progress_from_seconds: float = 0.0

    def progress_at(self, now_seconds: float) -> float:
        if self.rate_per_second <= 0:
            return self.progress_fraction
        return (
            self.progress_fraction
            + max(0.0, now_seconds - self.progress_from_seconds) * self.rate_per_second
        )

    def fresh(self) -> JobTruth:
        return JobTruth(dict(self.duration_seconds), self.gpu_memory_bytes)


@dataclass(slots=True, eq=False)
class SimJob:
    """The policy's view of one job (see the module docstring for what it may hold)."""

    job_id: int
    arrival_seconds: float
    num_gpus: int
    job_type: str  # the annotated model name ("" when the job says nothing)
    # runtime on each GPU model relative to the reference GPU model, from the benchmark table;
    # the GPU models listed are those the job may run on
    runtime_ratio_by_model: dict[str, float]
    gpu_memory_bytes: int | None = None  # per GPU, as the user requested / the model measured
    data_size_bytes: int = 0
    data_host: int | None = None  # host id holding the data; None: remote storage
    user: str = ""
    vc: str = ""
    synthetic: bool = True
    reports_progress: bool = False  # the job reports its progress (steps done / steps)
    # False: the spec says never preempt it (nor move it: a move is a stop and a restart); the
    # context's ``preempt`` raises on it, and every policy counts it as holding its GPUs to the end
    preemptible: bool = True
    # state, all of it observable
    status: str = WAITING
    placement: Placement | None = None
    reported_progress: float | None = None  # set only where the job reports its progress
    computing_since_seconds: float = 0.0  # end of the start-up (transfer, restart) of this run
    run_started_seconds: float = 0.0
    first_start_seconds: float | None = None
    finish_seconds: float | None = None
    run_seconds: float = 0.0  # seconds held GPUs, start-up included
    # seconds computed (start-up excluded), each divided by the job's runtime ratio on the GPU
    # model it ran on: the job's observed work in reference-GPU seconds
    work_seconds: float = 0.0
    attained_gpu_seconds: float = 0.0
    last_wait_from_seconds: float = 0.0
    measured_gpu_memory_bytes: int | None = None  # seen while it ran (nvidia-smi would show it)
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
            dict(self.runtime_ratio_by_model),
            self.gpu_memory_bytes,
            self.data_size_bytes,
            self.data_host,
            self.user,
            self.vc,
            self.synthetic,
            self.reports_progress,
            self.preemptible,
        )

    def known_gpu_memory_bytes(self) -> int | None:
        """The best memory figure a scheduler has: measured while it ran, else requested."""
        return self.measured_gpu_memory_bytes or self.gpu_memory_bytes

    def attained_now(self, now_seconds: float) -> float:
        """GPU-seconds of service including the current run."""
        if self.status == RUNNING:
            return (
                self.attained_gpu_seconds + (now_seconds - self.run_started_seconds) * self.num_gpus
            )
        return self.attained_gpu_seconds

    def held_now(self, now_seconds: float) -> float:
        """Seconds this job has held GPUs, the current run included."""
        if self.status == RUNNING:
            return self.run_seconds + (now_seconds - self.run_started_seconds)
        return self.run_seconds


@dataclass(slots=True, eq=False)
class SimInput:
    """One job handed to the simulator: the view a policy gets, and the truth it does not."""

    job: SimJob
    truth: JobTruth

    def fresh(self) -> SimInput:
        return SimInput(self.job.fresh(), self.truth.fresh())
