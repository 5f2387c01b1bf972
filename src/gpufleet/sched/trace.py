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
- what the scheduler is told: runtime = true V100 runtime x exp(N(0, sigma)) (``runtime_error``)
  scaled per GPU model by the predictor, memory = the predictor's estimate.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gpufleet.sched.cluster import ClusterSpec
from gpufleet.sched.gavel import GavelTable, bench_model_name, synthetic_memory_bytes
from gpufleet.sched.simjob import SimJob

GB = 10**9


@dataclass(frozen=True, slots=True)
class TraceJob:
    submit_seconds: float  # Unix time
    duration_seconds: float
    num_gpus: int
    vc: str


def read_philly(
    path: str | Path,
    vcs: Iterable[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[TraceJob]:
    """Rows of ``philly_jobs.csv`` (timestamp,duration,num_gpus,gpu_time,cluster), sorted by time."""
    wanted = set(vcs) if vcs else None
    out: list[TraceJob] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"timestamp", "duration", "num_gpus", "cluster"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if wanted is not None and row["cluster"] not in wanted:
                continue
            try:
                when = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=UTC)
                duration = float(row["duration"])
                gpus = int(float(row["num_gpus"]))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if (start and when < start) or (end and when >= end) or gpus <= 0:
                continue
            out.append(TraceJob(when.timestamp(), max(1.0, duration), gpus, row["cluster"]))
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
MemoryFn = Callable[[str, int], int | None]


def build_jobs(
    trace: list[TraceJob],
    spec: ClusterSpec,
    gavel: GavelTable,
    *,
    load: float = 1.0,
    seed: int = 0,
    runtime_error: float = 0.5,
    predicted_ratio: RatioFn | None = None,
    predicted_memory: MemoryFn | None = None,
) -> list[SimJob]:
    """Simulation jobs from trace rows; arrivals are time-scaled so the offered load is ``load``."""
    if load <= 0:
        raise ValueError("load must be positive")
    rng = random.Random(seed)
    base = trace[0].submit_seconds if trace else 0.0
    stretch = natural_load(trace, spec, gavel) / load
    types_by_scale = {s: gavel.job_types(s) for s in (1, 2, 4, 8)}
    fallback_ratio = {m: mean_speed_ratio(gavel, m) for m in spec.gpu_models}
    jobs: list[SimJob] = []
    for index, row in enumerate(trace):
        scale = gavel_scale(row.num_gpus)
        job_type = rng.choice(types_by_scale[scale])
        true_duration: dict[str, float] = {}
        predicted: dict[str, float] = {}
        noise = math.exp(rng.gauss(0.0, runtime_error)) if runtime_error > 0 else 1.0
        for model in spec.gpu_models:
            ratio = gavel.speed_ratio(model, job_type, scale) or fallback_ratio[model]
            true_duration[model] = row.duration_seconds / ratio
            guess = predicted_ratio(job_type, scale, model) if predicted_ratio else 1.0 / ratio
            predicted[model] = row.duration_seconds * noise * (guess or 1.0 / fallback_ratio[model])
        profile = synthetic_memory_bytes(job_type)
        memory = int(profile * rng.uniform(0.85, 1.05))
        predicted_mem = predicted_memory(job_type, scale) if predicted_memory else None
        data_size = int(min(2000 * GB, 20 * GB * math.exp(rng.gauss(0.0, 1.0))))
        data_host = rng.randrange(len(spec.hosts)) if rng.random() < 0.7 else None
        jobs.append(
            SimJob(
                job_id=index,
                arrival_seconds=(row.submit_seconds - base) * stretch,
                num_gpus=row.num_gpus,
                job_type=bench_model_name(job_type, 1),
                true_duration_seconds=true_duration,
                true_gpu_memory_bytes=memory,
                predicted_duration_seconds=predicted,
                predicted_gpu_memory_bytes=predicted_mem if predicted_mem else profile,
                data_size_bytes=data_size,
                data_host=data_host,
                user=f"{row.vc}/u{index % 97}",
            )
        )
    return jobs
