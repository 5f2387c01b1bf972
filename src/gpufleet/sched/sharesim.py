"""Replays of pod requests through a share policy, and what they measure.

- ``run_inflation``: FGD's workload-inflation experiment. Pods drawn (seeded, with replacement)
  from a trace's pods arrive one by one and never leave, until the GPU they asked for reaches
  ``target_ratio`` of the cluster's GPU capacity; a pod that fits nowhere is dropped. Measured: the
  allocated GPU share against the arrived workload, the unallocated GPU share when the first pod
  that would fit the empty cluster fails, and at 100% arrived the unallocated share and the
  fragmentation (FGD's measure, for the trace's own request distribution).
- ``run_replay``: pods arrive at ``creation_time`` and leave at ``deletion_time``; measured: the
  GPU allocation rate over time and the pods that could not be placed.

The policy sees each request (``PodRequest``: resources only) when it arrives, never the pods still
to come nor when a pod will leave.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpufleet.sched.frag import build_workload, fragmentation_rate, node_fragmentation
from gpufleet.sched.share import NodeSpec, PodRequest, ShareCluster, SharePolicy

if TYPE_CHECKING:  # annotations only: matplotlib is imported when a plot is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class InflationResult:
    policy: str
    capacity_gpus: float
    arrived_pods: int = 0
    failed_pods: int = 0
    first_failure_arrived_ratio: float | None = None
    unallocated_share_at_first_failure: float | None = None
    unallocated_share_at_full: float | None = None  # arrived workload = 100% of GPU capacity
    fragmented_share_at_full: float | None = None  # fragmented GPU / capacity, same moment
    fragmentation_rate_at_full: float | None = None  # fragmented / unallocated, same moment
    curve: list[tuple[float, float]] = field(default_factory=list)  # (arrived, allocated) shares
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "curve"} | {
            "curve": [list(p) for p in self.curve]
        }


def inflate(
    pool: Sequence[PodRequest], capacity_gpu_milli: int, target_ratio: float, seed: int
) -> list[PodRequest]:
    """Requests drawn with replacement from ``pool`` until their GPU asks reach the target."""
    if not any(r.num_gpus for r in pool):
        raise ValueError("inflate: the trace has no pod that asks for a GPU")
    rng = random.Random(seed)
    out: list[PodRequest] = []
    asked = 0
    while asked < target_ratio * capacity_gpu_milli:
        request = pool[rng.randrange(len(pool))]
        out.append(request)
        asked += request.total_gpu_milli
    return out


def measure_fragmentation(cluster: ShareCluster, requests: Sequence[PodRequest]) -> float:
    """FGD's fragmented GPU capacity (milli) of the cluster for these requests' distribution."""
    workload = build_workload(
        ((r.cpu_milli, r.memory_bytes, r.num_gpus, r.gpu_milli, r.gpu_spec) for r in requests),
        cluster.allowed_models,
        len(cluster.model_names),
        max_classes=64,
    )
    return float(
        node_fragmentation(
            cluster.gpu_free_milli,
            cluster.cpu_free_milli,
            cluster.memory_free_bytes,
            cluster.model_ids,
            workload,
        ).sum()
    )


def run_inflation(
    nodes: Sequence[NodeSpec],
    requests: Sequence[PodRequest],
    policy: SharePolicy,
    *,
    curve_points: int = 200,
    on_progress: Callable[[int, int], None] | None = None,
) -> InflationResult:
    cluster = ShareCluster(nodes)
    empty = ShareCluster(nodes)
    fits_empty: dict[PodRequest, bool] = {}
    capacity = cluster.gpu_capacity_milli
    result = InflationResult(policy.name, capacity / 1000)
    asked = 0
    next_point = 0.0
    step = (sum(r.total_gpu_milli for r in requests) / capacity) / max(1, curve_points)
    started = time.perf_counter()
    for index, request in enumerate(requests):
        policy.observe(request)
        placement = policy.choose(cluster, request)
        if placement is not None:
            cluster.allocate(index, request, placement)
        else:
            result.failed_pods += 1
            if request not in fits_empty:
                fits_empty[request] = bool(empty.feasible(request).any())
            if result.first_failure_arrived_ratio is None and fits_empty[request]:
                result.first_failure_arrived_ratio = asked / capacity
                result.unallocated_share_at_first_failure = cluster.unallocated_gpu_milli / capacity
        before = asked
        asked += request.total_gpu_milli
        if before < capacity <= asked:
            result.unallocated_share_at_full = cluster.unallocated_gpu_milli / capacity
            fragmented = measure_fragmentation(cluster, requests)
            result.fragmented_share_at_full = fragmented / capacity
            result.fragmentation_rate_at_full = fragmentation_rate(
                fragmented, cluster.unallocated_gpu_milli
            )
        if asked / capacity >= next_point:
            result.curve.append((asked / capacity, cluster.allocated_gpu_milli / capacity))
            next_point += step
        if on_progress is not None and index % 500 == 0:
            on_progress(index, len(requests))
    result.arrived_pods = len(requests)
    result.wall_seconds = time.perf_counter() - started
    return result


@dataclass
class ReplayResult:
    policy: str
    placed_pods: int = 0
    failed_pods: int = 0
    allocation: list[tuple[float, float]] = field(default_factory=list)  # (seconds, share)
    # time-weighted mean of the allocated GPU share from the first to the last arrival
    mean_allocation_rate: float = 0.0
    wall_seconds: float = 0.0


def run_replay(
    nodes: Sequence[NodeSpec],
    pods: Sequence[tuple[int, int | None, PodRequest]],
    policy: SharePolicy,
) -> ReplayResult:
    """Pods ``(creation_seconds, deletion_seconds or None, request)`` arrive and leave in time
    order; a pod that fits nowhere when it arrives is counted as failed (not retried)."""
    cluster = ShareCluster(nodes)
    capacity = cluster.gpu_capacity_milli
    result = ReplayResult(policy.name)
    departures: list[tuple[int, int]] = []
    order = sorted(range(len(pods)), key=lambda i: pods[i][0])
    started = time.perf_counter()
    for i in order:
        created, deleted, request = pods[i]
        while departures and departures[0][0] <= created:
            t, key = heapq.heappop(departures)
            cluster.release(key)
            result.allocation.append((t, cluster.allocated_gpu_milli / capacity))
        policy.observe(request)
        placement = policy.choose(cluster, request)
        if placement is None:
            result.failed_pods += 1
            continue
        cluster.allocate(i, request, placement)
        result.placed_pods += 1
        if deleted is not None:
            heapq.heappush(departures, (deleted, i))
        result.allocation.append((created, cluster.allocated_gpu_milli / capacity))
    while departures:
        t, key = heapq.heappop(departures)
        cluster.release(key)
        result.allocation.append((t, cluster.allocated_gpu_milli / capacity))
    # the allocated share is a step function between the recorded events; its mean is taken
    # from the first to the last arrival (the drain after the last arrival is left out)
    end = pods[order[-1]][0] if order else 0
    points = [p for p in result.allocation if p[0] <= end]
    span = end - points[0][0] if points else 0
    if span > 0:
        steps = itertools.pairwise([*points, (end, 0.0)])
        result.mean_allocation_rate = sum(s * (t1 - t0) for (t0, s), (t1, _) in steps) / span
    result.wall_seconds = time.perf_counter() - started
    return result


def _figure() -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    return fig, fig.add_subplot()


def plot_allocation_over_time(results: Sequence[ReplayResult], path: str | Path) -> str:
    """PNG: allocated GPU share over time in a replay, one line per policy."""
    fig, ax = _figure()
    for r in results:
        if r.allocation:
            ts, ys = np.array(r.allocation).T
            ax.step((ts - ts[0]) / 3600, ys * 100, where="post", label=r.policy, linewidth=1)
    ax.set_xlabel("hours since the first arrival")
    ax.set_ylabel("allocated GPUs (% of capacity)")
    ax.set_title("GPU allocation over time (replay)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return str(path)


def plot_allocation(results: Sequence[InflationResult], path: str | Path) -> str:
    """PNG: allocated GPU share against arrived workload, one line per policy (left: all of it;
    right: the part past 70% arrived, where the policies part ways)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, zoom in zip(axes, (False, True), strict=True):
        for r in results:
            if r.curve:
                xs, ys = np.array(r.curve).T
                ax.plot(xs * 100, ys * 100, label=r.policy, linewidth=1.3)
        ax.plot([0, 100], [0, 100], color="#999", linestyle=":", linewidth=1, label="ideal")
        ax.set_xlabel("arrived workload (% of cluster GPU capacity)")
        ax.set_ylabel("allocated GPUs (% of capacity)")
        ax.grid(alpha=0.3)
        if zoom:
            ax.set_xlim(70, max((r.curve[-1][0] * 100 for r in results if r.curve), default=130))
            ax.set_ylim(70, 100.5)
            ax.set_title("past 70% arrived")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.set_title("GPU allocation as the workload grows")
    fig.tight_layout()
    fig.savefig(str(path))
    return str(path)
