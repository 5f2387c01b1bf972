"""Job traces: read the Philly CSV, pick a window and virtual clusters, scale arrivals to a load,
and give each job what the trace lacks (job type, memory, data) from stated, seeded distributions.

Synthetic attributes (labelled ``synthetic=True`` on every job):
- job type: uniform over the Gavel job types measured at the job's GPU count (1, 2, 4, or 8 for
  8 GPUs and more); the trace duration is the V100 time, other GPU models scale it by Gavel's
  measured throughput ratio (the mean ratio of that GPU model where Gavel has no number);
- GPU memory per GPU: the job type's stated profile (``gavel.synthetic_memory_bytes``) times a
  uniform factor in [0.85, 1.05];
- dataset: log-normal size, median 20 GB, sigma 1.0, capped at 2 TB; it lives on a uniformly drawn
  host with probability 0.7, otherwise on remote storage;
- what the scheduler is told (``SimJob``): GPUs, VC, user, data, the job type and the
  predictor's runtime ratios between GPU models; never the runtime or the memory (those are in
  ``JobTruth``, which only the simulator holds).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gpufleet.philly import read_rows
from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.gavel import GavelTable, bench_model_name, synthetic_memory_bytes
from gpufleet.sched.simjob import JobTruth, SimInput, SimJob

GB = 10**9


@dataclass(frozen=True, slots=True)
class TraceJob:
    submit_seconds: float  # Unix time
    duration_seconds: float
    num_gpus: int
    vc: str


def read_philly(
    path: str | Path | None = None,
    vcs: Iterable[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[TraceJob]:
    """Rows of a Philly trace (timestamp,duration,num_gpus,gpu_time,cluster; plain or .gz),
    sorted by time; ``path`` None: the trace shipped with gpufleet (``gpufleet.philly``)."""
    wanted = set(vcs) if vcs else None
    t0 = start.timestamp() if start else None
    t1 = end.timestamp() if end else None
    out: list[TraceJob] = []
    for row in read_rows(path):
        if wanted is not None and row.cluster not in wanted:
            continue
        when = row.submit_seconds
        if (t0 is not None and when < t0) or (t1 is not None and when >= t1) or row.num_gpus <= 0:
            continue
        out.append(TraceJob(when, max(1.0, row.duration_seconds), row.num_gpus, row.cluster))
    out.sort(key=lambda j: j.submit_seconds)
    return out


def gavel_scale(num_gpus: int) -> int:
    return 1 if num_gpus == 1 else 2 if num_gpus == 2 else 4 if num_gpus <= 4 else 8


def mean_speed_ratio(gavel: GavelTable, gpu_model: str) -> float:
    ratios = [gavel.speed_ratio(gpu_model, t, 1) for t in gavel.job_types(1)]
    ratios = [r for r in ratios if r > 0]
    if not ratios:  # a GPU model Gavel did not measure: the model table's figure
        from gpufleet.sched.gpumodels import default_table

        return default_table().speed(gpu_model)
    return sum(ratios) / len(ratios)


def capacity_v100_equivalent(spec: ClusterSpec, gavel: GavelTable) -> float:
    return sum(spec.gpus_of(m) * mean_speed_ratio(gavel, m) for m in spec.gpu_models)


def natural_load(trace: list[TraceJob], spec: ClusterSpec, gavel: GavelTable) -> float:
    """Offered V100 GPU-seconds per second over the cluster's V100-equivalent capacity."""
    if len(trace) < 2:
        return 1.0
    span = max(1.0, trace[-1].submit_seconds - trace[0].submit_seconds)
    work = sum(j.duration_seconds * j.num_gpus for j in trace)
    return work / span / capacity_v100_equivalent(spec, gavel)


RatioFn = Callable[[str, int, str], float | None]  # (job type, scale, gpu model) -> time vs V100


def build_jobs(
    trace: list[TraceJob],
    spec: ClusterSpec,
    gavel: GavelTable,
    *,
    load: float = 1.0,
    seed: int = 0,
    predicted_ratio: RatioFn | None = None,
) -> list[SimInput]:
    """Simulation jobs from trace rows; arrivals are time-scaled so the offered load is ``load``.

    The policy's view of a job gets its GPU count, VC, user, data and the annotated (synthetic)
    job type with its runtime ratios between GPU models (the predictor's, from the benchmark
    table); its GPU memory is unknown (Philly jobs state none). The truth gets the runtimes and
    the memory."""
    if load <= 0:
        raise ValueError("load must be positive")
    rng = random.Random(seed)
    base = trace[0].submit_seconds if trace else 0.0
    stretch = natural_load(trace, spec, gavel) / load
    types_by_scale = {s: gavel.job_types(s) for s in (1, 2, 4, 8)}
    fallback_ratio = {m: mean_speed_ratio(gavel, m) for m in spec.gpu_models}
    jobs: list[SimInput] = []
    for index, row in enumerate(trace):
        scale = gavel_scale(row.num_gpus)
        job_type = rng.choice(types_by_scale[scale])
        true_duration: dict[str, float] = {}
        ratios: dict[str, float] = {}
        for model in spec.gpu_models:
            ratio = gavel.speed_ratio(model, job_type, scale) or fallback_ratio[model]
            true_duration[model] = row.duration_seconds / ratio
            guess = predicted_ratio(job_type, scale, model) if predicted_ratio else 1.0 / ratio
            ratios[model] = guess or 1.0 / fallback_ratio[model]
        profile = synthetic_memory_bytes(job_type)
        memory = int(profile * rng.uniform(0.85, 1.05))
        data_size = int(min(2000 * GB, 20 * GB * math.exp(rng.gauss(0.0, 1.0))))
        data_host = rng.randrange(len(spec.hosts)) if rng.random() < 0.7 else None
        view = SimJob(
            job_id=index,
            arrival_seconds=(row.submit_seconds - base) * stretch,
            num_gpus=row.num_gpus,
            job_type=bench_model_name(job_type, 1),
            runtime_ratio_by_model=ratios,
            gpu_memory_bytes=None,
            data_size_bytes=data_size,
            data_host=data_host,
            user=f"{row.vc}/u{index % 97}",
            vc=row.vc,
        )
        jobs.append(SimInput(view, JobTruth(true_duration, memory)))
    return jobs


def read_tiresias_trace(path: str | Path, gpu_model: str = "v100") -> list[SimInput]:
    """A trace in Tiresias's simulator format
    (``job_id,num_gpu,submit_time,iterations,model_name,duration,interval``): each job runs
    ``duration`` seconds on ``gpu_model``, arrives at ``submit_time``; no memory, no data.
    Raises ValueError naming the file, line and column of a bad value."""
    jobs: list[SimInput] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"job_id", "num_gpu", "submit_time", "duration"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            values = {}
            for column in ("job_id", "num_gpu", "submit_time", "duration"):
                try:
                    values[column] = float(row[column])
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{path}:{line}: {column}: must be a number, got {row[column]!r}"
                    ) from None
            if values["num_gpu"] < 1 or values["duration"] < 0 or values["submit_time"] < 0:
                raise ValueError(f"{path}:{line}: num_gpu >= 1, duration and submit_time >= 0")
            view = SimJob(
                job_id=len(jobs),
                arrival_seconds=values["submit_time"],
                num_gpus=int(values["num_gpu"]),
                job_type=row.get("model_name") or "",
                runtime_ratio_by_model={gpu_model: 1.0},
                vc=Path(path).stem,
                synthetic=False,
            )
            jobs.append(SimInput(view, JobTruth({gpu_model: values["duration"]}, 0)))
    return jobs
