"""GPU fragmentation as FGD measures it (Weng et al., "Beware of Fragmentation", ATC'23), as pure
functions over the cluster's free-capacity arrays.

A *target workload* is a set of request classes with their popularity. For a node ``n`` and a class
``k`` the fragmented GPU capacity ``F[n, k]`` is the free GPU capacity of ``n`` that a pod of
class ``k`` could not use:

- the pod cannot run on ``n`` at all (too little free CPU or memory, a GPU model it does not
  accept, fewer fully free GPUs than it asks for, or no GPU at all for a CPU-only pod): every free
  GPU share of ``n`` is fragmented;
- a sharing pod asking for ``d`` (< 1 GPU): the free share of every GPU with less than ``d`` free;
- a pod asking for whole GPUs: the free share of every partly used GPU.

The node's fragmentation for the workload is ``sum_k p_k F[n, k]``; the cluster's is the sum over
nodes. The *fragmentation rate* divides it by the unallocated GPU capacity. Shares are in milli-GPU
(1000 = one GPU) throughout, as in the Alibaba trace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

MILLI = 1000


@dataclass(frozen=True)
class Workload:
    """Request classes of a target workload, as arrays (K classes that ask for GPUs)."""

    cpu_milli: np.ndarray  # (K,) int64
    memory_bytes: np.ndarray  # (K,) int64
    num_gpus: np.ndarray  # (K,) int64
    gpu_milli: np.ndarray  # (K,) int64, per GPU
    allowed: np.ndarray  # (K, M) bool: class k accepts the cluster's GPU model m
    weight: np.ndarray  # (K,) float, popularity
    cpu_only_weight: float  # popularity of pods asking for no GPU

    @property
    def threshold_milli(self) -> np.ndarray:
        """A GPU with less free than this is of no use to the class (its share, or a whole GPU)."""
        return np.where(self.num_gpus == 1, self.gpu_milli, MILLI)

    @property
    def class_milli(self) -> np.ndarray:
        """GPU milli one pod of the class takes in all."""
        return self.num_gpus * self.gpu_milli

    @property
    def whole_gpus_needed(self) -> np.ndarray:
        """Fully free GPUs the class needs on one node (0 for a sharing class)."""
        return np.where(self.gpu_milli >= MILLI, self.num_gpus, 0)


def build_workload(
    requests: Iterable[tuple[int, int, int, int, tuple[str, ...]]],
    allowed_of: Callable[[tuple[str, ...]], np.ndarray],
    num_models: int,
    max_classes: int = 32,
) -> Workload:
    """Classes from requests ``(cpu_milli, memory_bytes, num_gpus, gpu_milli, gpu_spec)``.

    Requests with the same GPU ask (count, share, allowed models) form one class, with the median
    CPU and memory of its members; the ``max_classes`` most frequent classes are kept and their
    weights renormalised so that all weights (CPU-only included) sum to 1: a class's weight is its
    share of the requests (FGD's popularity).
    """
    groups: dict[tuple[int, int, tuple[str, ...]], list[tuple[int, int]]] = {}
    cpu_only = 0
    total = 0
    for cpu, memory, num_gpus, gpu_milli, spec in requests:
        total += 1
        if num_gpus == 0:
            cpu_only += 1
            continue
        groups.setdefault((num_gpus, gpu_milli, spec), []).append((cpu, memory))
    if total == 0:
        raise ValueError("a workload needs at least one request")
    counts = Counter({key: len(members) for key, members in groups.items()})
    kept = [key for key, _ in counts.most_common(max_classes)]
    gpu_share = 1.0 - cpu_only / total
    kept_total = sum(counts[k] for k in kept) or 1
    cpus = np.array([int(np.median([c for c, _ in groups[k]])) for k in kept], dtype=np.int64)
    mems = np.array([int(np.median([m for _, m in groups[k]])) for k in kept], dtype=np.int64)
    allowed = (
        np.stack([allowed_of(k[2]) for k in kept])
        if kept
        else np.zeros((0, num_models), dtype=bool)
    )
    return Workload(
        cpu_milli=cpus,
        memory_bytes=mems,
        num_gpus=np.array([k[0] for k in kept], dtype=np.int64),
        gpu_milli=np.array([k[1] for k in kept], dtype=np.int64),
        allowed=allowed,
        weight=np.array([counts[k] / kept_total * gpu_share for k in kept], dtype=np.float64),
        cpu_only_weight=cpu_only / total,
    )


def below_threshold_sum(free_milli: np.ndarray, workload: Workload) -> np.ndarray:
    """``S[n, k]``: free share on GPUs of node n with less free than class k can use. (N, K)"""
    free = free_milli.astype(np.int64)
    thr = workload.threshold_milli
    return np.einsum("ng,ngk->nk", free, free[:, :, None] < thr[None, None, :])


def node_fragmentation(
    free_milli: np.ndarray,
    cpu_free_milli: np.ndarray,
    memory_free_bytes: np.ndarray,
    model_ids: np.ndarray,
    workload: Workload,
) -> np.ndarray:
    """Expected fragmented GPU milli per node for the workload, shape (N,).

    ``model_ids`` indexes the columns of ``workload.allowed`` (-1: the node has no GPU).
    """
    total = free_milli.sum(axis=1)
    per_class = class_fragmentation(
        below_threshold_sum(free_milli, workload),
        total,
        (free_milli == MILLI).sum(axis=1),
        cpu_free_milli,
        memory_free_bytes,
        accepted_by(model_ids, workload),
        workload,
    )
    return per_class @ workload.weight + workload.cpu_only_weight * total


def accepted_by(model_ids: np.ndarray, workload: Workload) -> np.ndarray:
    """(N, K) bool: class k accepts node n's GPU model (False for nodes without GPUs)."""
    out = np.zeros((model_ids.shape[0], workload.weight.shape[0]), dtype=bool)
    has_model = model_ids >= 0
    if workload.allowed.shape[1]:
        out[has_model] = workload.allowed[:, model_ids[has_model]].T
    return out


def class_fragmentation(
    below: np.ndarray,
    total_free_milli: np.ndarray,
    full_gpus: np.ndarray,
    cpu_free_milli: np.ndarray,
    memory_free_bytes: np.ndarray,
    accepted: np.ndarray,
    workload: Workload,
    counted: np.ndarray | None = None,
) -> np.ndarray:
    """``F[n, k]`` from per-node aggregates (rows may be hypothetical states). (C, K)

    ``accepted`` is ``accepted_by`` for these rows. ``counted`` (C, K), when given, leaves out
    (0) the pairs it marks False; FGD's definition counts every pair."""
    usable = _fits_now(full_gpus, cpu_free_milli, memory_free_bytes, accepted, workload)
    out = np.where(usable, below, total_free_milli[:, None])
    return out if counted is None else np.where(counted, out, 0)


def class_usable(
    below: np.ndarray,
    total_free_milli: np.ndarray,
    full_gpus: np.ndarray,
    cpu_free_milli: np.ndarray,
    memory_free_bytes: np.ndarray,
    accepted: np.ndarray,
    workload: Workload,
) -> np.ndarray:
    """``U[n, k]``: the free GPU milli of node n that a pod of class k could use now, i.e. the
    free capacity less ``F[n, k]`` (0 where the pod cannot run on n at all). (C, K)"""
    fragmented = class_fragmentation(
        below, total_free_milli, full_gpus, cpu_free_milli, memory_free_bytes, accepted, workload
    )
    return total_free_milli[:, None] - fragmented


def _fits_now(
    full_gpus: np.ndarray,
    cpu_free_milli: np.ndarray,
    memory_free_bytes: np.ndarray,
    accepted: np.ndarray,
    workload: Workload,
) -> np.ndarray:
    """(C, K) bool: a pod of class k can run on the row now (model, CPU, memory, whole GPUs);
    a sharing class's own share is checked through ``below``."""
    return (
        accepted
        & (cpu_free_milli[:, None] >= workload.cpu_milli[None, :])
        & (memory_free_bytes[:, None] >= workload.memory_bytes[None, :])
        & (full_gpus[:, None] >= workload.whole_gpus_needed[None, :])
    )


def could_ever_use(
    accepted: np.ndarray,
    num_gpus: np.ndarray,
    cpu_capacity_milli: np.ndarray,
    memory_capacity_bytes: np.ndarray,
    workload: Workload,
) -> np.ndarray:
    """(N, K) bool: class k fits node n when the node is empty (its model, GPU count, CPU, memory).
    A pair marked False is not fragmentation that any placement causes or can undo."""
    return (
        accepted
        & (num_gpus[:, None] >= workload.num_gpus[None, :])
        & (cpu_capacity_milli[:, None] >= workload.cpu_milli[None, :])
        & (memory_capacity_bytes[:, None] >= workload.memory_bytes[None, :])
    )


def fragmentation_rate(fragmented_milli: float, unallocated_milli: float) -> float:
    """Share of the unallocated GPU capacity that is fragmented (0 when nothing is free)."""
    return fragmented_milli / unallocated_milli if unallocated_milli > 0 else 0.0
