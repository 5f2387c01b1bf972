"""Placement with GPU shares and constraints: the pure core the share simulator and the live queue
use.

A node has CPU (milli-cores), memory (bytes) and GPUs of one model; a GPU is shared in milli-GPU
(1000 = one GPU). A pod asks for CPU and memory, and either nothing on GPUs, a share of one GPU
(``num_gpus == 1``, ``gpu_milli < 1000``), or ``num_gpus`` whole GPUs on one node; it may restrict
the GPU models it accepts (``gpu_spec``) and may state the GPU memory it needs per GPU. Several
pods share a GPU while their shares sum to at most 1000 and their GPU memory fits.

``ShareCluster`` is bookkeeping (numpy arrays of free capacity); a policy only reads it and returns
a ``SharePlacement``; the caller commits it with ``allocate``. A policy sees the request's
resources, never how long a pod will run: ``PodRequest`` has no times.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gpufleet.sched.frag import (
    MILLI,
    Workload,
    accepted_by,
    below_threshold_sum,
    build_workload,
    class_fragmentation,
    class_usable,
    could_ever_use,
)
from gpufleet.sched.gpumodels import default_table, normalise_gpu_name


def canonical_gpu_name(name: str) -> str:
    """The table's name for a GPU label (``"V100M32"`` -> ``"v100"``), else the normalised label
    (the public Alibaba trace anonymises some models as ``G1``..``G3``)."""
    found = default_table().find(name)
    return found.name if found is not None else normalise_gpu_name(name)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    cpu_milli: int
    memory_bytes: int
    num_gpus: int = 0
    gpu_model: str = ""
    gpu_memory_bytes: int = 0  # per GPU; 0 = unknown (a pod stating GPU memory will not fit)


@dataclass(frozen=True, slots=True)
class PodRequest:
    cpu_milli: int
    memory_bytes: int
    num_gpus: int = 0
    gpu_milli: int = 0  # per GPU; < 1000 only with num_gpus == 1 (a sharing pod)
    gpu_spec: tuple[str, ...] = ()  # accepted GPU models; empty = any
    gpu_memory_bytes: int = 0  # per GPU; 0 = not stated

    def __post_init__(self) -> None:
        if min(self.cpu_milli, self.memory_bytes, self.num_gpus, self.gpu_memory_bytes) < 0:
            raise ValueError("pod request: resources must not be negative")
        if self.num_gpus == 0 and self.gpu_milli != 0:
            raise ValueError("pod request: gpu_milli must be 0 when num_gpus is 0")
        if self.num_gpus == 1 and not 0 < self.gpu_milli <= MILLI:
            raise ValueError("pod request: gpu_milli must be in 1..1000 when num_gpus is 1")
        if self.num_gpus > 1 and self.gpu_milli != MILLI:
            raise ValueError("pod request: a multi-GPU pod takes whole GPUs (gpu_milli 1000)")

    @property
    def sharing(self) -> bool:
        return self.num_gpus == 1 and self.gpu_milli < MILLI

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpus * self.gpu_milli

    @property
    def gpu_shape(self) -> tuple[int, int, tuple[str, ...]]:
        return (self.num_gpus, self.gpu_milli, self.gpu_spec)


@dataclass(frozen=True, slots=True)
class SharePlacement:
    node: int
    gpus: tuple[int, ...]  # GPU indices on the node (empty for a CPU-only pod)
    gpu_milli: int  # taken on each of them


class ShareCluster:
    """Free capacity of every node and GPU; pods come and go through ``allocate``/``release``."""

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        self.nodes = tuple(nodes)
        n = len(nodes)
        g = max(1, max(node.num_gpus for node in nodes))
        self.model_names: list[str] = []
        model_ids = []
        for node in nodes:
            if node.num_gpus <= 0:
                model_ids.append(-1)
                continue
            name = canonical_gpu_name(node.gpu_model)
            if name not in self.model_names:
                self.model_names.append(name)
            model_ids.append(self.model_names.index(name))
        self.model_ids = np.array(model_ids, dtype=np.int64)
        self.gpu_exists = np.arange(g)[None, :] < np.array([x.num_gpus for x in nodes])[:, None]
        self.gpu_free_milli = np.where(self.gpu_exists, MILLI, 0).astype(np.int64)
        gpu_memory = np.array([x.gpu_memory_bytes for x in nodes], dtype=np.int64)
        self.gpu_memory_bytes = np.where(self.gpu_exists, gpu_memory[:, None], 0)
        self.gpu_free_memory_bytes = self.gpu_memory_bytes.copy()
        self.cpu_capacity_milli = np.array([x.cpu_milli for x in nodes], dtype=np.int64)
        self.memory_capacity_bytes = np.array([x.memory_bytes for x in nodes], dtype=np.int64)
        self.cpu_free_milli = self.cpu_capacity_milli.copy()
        self.memory_free_bytes = self.memory_capacity_bytes.copy()
        self.gpu_capacity_milli = int(self.gpu_exists.sum()) * MILLI
        # nodes of one kind (GPU model and count, CPU and memory capacity) share an id
        kinds = np.column_stack(
            (
                self.model_ids,
                self.gpu_exists.sum(axis=1),
                self.cpu_capacity_milli,
                self.memory_capacity_bytes,
            )
        )
        self.kind_ids = np.unique(kinds, axis=0, return_inverse=True)[1].ravel()
        self.version = np.zeros(n, dtype=np.int64)  # bumped whenever a node's free capacity moves
        # pods per node per GPU ask (for GPU clustering)
        self.shape_counts: dict[tuple[int, int], np.ndarray] = {}
        self.pods: dict[Hashable, tuple[PodRequest, SharePlacement]] = {}
        self._allowed_cache: dict[tuple[str, ...], np.ndarray] = {}

    # -- what a request may use ------------------------------------------------------------
    def allowed_models(self, gpu_spec: tuple[str, ...]) -> np.ndarray:
        """Boolean over ``model_names``: the models a pod with this ``gpu_spec`` accepts."""
        cached = self._allowed_cache.get(gpu_spec)
        if cached is None:
            if not gpu_spec:
                cached = np.ones(len(self.model_names), dtype=bool)
            else:
                wanted = {canonical_gpu_name(s) for s in gpu_spec}
                cached = np.array([m in wanted for m in self.model_names], dtype=bool)
            self._allowed_cache[gpu_spec] = cached
        return cached

    def gpu_fit(self, request: PodRequest) -> np.ndarray:
        """(N, G) bool: GPUs that can take one of the request's GPUs now."""
        if request.num_gpus == 0:
            return np.zeros_like(self.gpu_exists)
        if request.sharing:
            fit = self.gpu_free_milli >= request.gpu_milli
        else:
            fit = self.gpu_free_milli == MILLI
        if request.gpu_memory_bytes:
            fit &= self.gpu_free_memory_bytes >= request.gpu_memory_bytes
        return fit

    def feasible(self, request: PodRequest, fit: np.ndarray | None = None) -> np.ndarray:
        """(N,) bool: nodes where the whole request fits now."""
        ok = (self.cpu_free_milli >= request.cpu_milli) & (
            self.memory_free_bytes >= request.memory_bytes
        )
        if request.num_gpus == 0:
            return ok
        allowed = self.allowed_models(request.gpu_spec)
        has = self.model_ids >= 0
        model_ok = np.zeros_like(ok)
        model_ok[has] = allowed[self.model_ids[has]]
        fit = self.gpu_fit(request) if fit is None else fit
        return ok & model_ok & (fit.sum(axis=1) >= request.num_gpus)

    # -- bookkeeping -----------------------------------------------------------------------
    def allocate(self, key: Hashable, request: PodRequest, placement: SharePlacement) -> None:
        if key in self.pods:
            raise ValueError(f"pod {key!r} is already placed")
        n = placement.node
        gpus = list(placement.gpus)
        if len(gpus) != request.num_gpus or len(set(gpus)) != len(gpus):
            raise ValueError(f"pod {key!r}: placement has {len(gpus)} GPUs for {request.num_gpus}")
        if not self.feasible(request)[n] or not self.gpu_fit(request)[n, gpus].all():
            raise ValueError(f"pod {key!r} does not fit on node {self.nodes[n].name}")
        self.cpu_free_milli[n] -= request.cpu_milli
        self.memory_free_bytes[n] -= request.memory_bytes
        if gpus:
            self.gpu_free_milli[n, gpus] -= request.gpu_milli
            self.gpu_free_memory_bytes[n, gpus] -= request.gpu_memory_bytes
            counts = self.shape_counts.setdefault(
                (request.num_gpus, request.gpu_milli), np.zeros(len(self.nodes), dtype=np.int64)
            )
            counts[n] += 1
        self.version[n] += 1
        self.pods[key] = (request, placement)

    def release(self, key: Hashable) -> SharePlacement:
        request, placement = self.pods.pop(key)
        n, gpus = placement.node, list(placement.gpus)
        self.cpu_free_milli[n] += request.cpu_milli
        self.memory_free_bytes[n] += request.memory_bytes
        if gpus:
            self.gpu_free_milli[n, gpus] += request.gpu_milli
            self.gpu_free_memory_bytes[n, gpus] += request.gpu_memory_bytes
            self.shape_counts[(request.num_gpus, request.gpu_milli)][n] -= 1
        self.version[n] += 1
        return placement

    @property
    def allocated_gpu_milli(self) -> int:
        return self.gpu_capacity_milli - int(self.gpu_free_milli.sum())

    @property
    def unallocated_gpu_milli(self) -> int:
        return int(self.gpu_free_milli.sum())


# -- policies ------------------------------------------------------------------------------
class SharePolicy(Protocol):
    name: str

    def observe(self, request: PodRequest) -> None:
        """A request arrived (called before ``choose`` for it); the policy may learn from it."""

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        """Where the request should go now, or None when it fits nowhere."""


def _gpus_on(
    cluster: ShareCluster, request: PodRequest, fit: np.ndarray, node: int, order: str
) -> SharePlacement:
    """The request's GPUs on ``node``: ``first`` by index, ``tight`` least free first."""
    if request.num_gpus == 0:
        return SharePlacement(node, (), 0)
    slots = np.flatnonzero(fit[node])
    if order == "tight":
        slots = slots[np.argsort(cluster.gpu_free_milli[node, slots], kind="stable")]
    return SharePlacement(node, tuple(int(s) for s in slots[: request.num_gpus]), request.gpu_milli)


class _Base:
    name = "base"

    def observe(self, request: PodRequest) -> None:
        return None


class FirstFit(_Base):
    """The first node (in node order) where the pod fits; its first GPUs that fit."""

    name = "first-fit"

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        return _gpus_on(cluster, request, fit, int(nodes[0]), "first") if nodes.size else None


class RandomFit(_Base):
    """A node drawn uniformly among those where the pod fits; GPUs drawn among those that fit."""

    name = "random-fit"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        if not nodes.size:
            return None
        node = int(nodes[self.rng.randrange(nodes.size)])
        if request.num_gpus == 0:
            return SharePlacement(node, (), 0)
        slots = [int(s) for s in np.flatnonzero(fit[node])]
        return SharePlacement(
            node, tuple(sorted(self.rng.sample(slots, request.num_gpus))), request.gpu_milli
        )


class BestFit(_Base):
    """The node left with the least free resources after placement: the sum of the free shares of
    CPU, memory and GPU (each over the node's capacity); on the node, the GPUs with the least free
    that fit."""

    name = "best-fit"

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        if not nodes.size:
            return None
        cpu_left = (cluster.cpu_free_milli[nodes] - request.cpu_milli) / np.maximum(
            cluster.cpu_capacity_milli[nodes], 1
        )
        mem_left = (cluster.memory_free_bytes[nodes] - request.memory_bytes) / np.maximum(
            cluster.memory_capacity_bytes[nodes], 1
        )
        gpu_cap = cluster.gpu_exists[nodes].sum(axis=1) * MILLI
        gpu_left = (
            cluster.gpu_free_milli[nodes].sum(axis=1) - request.total_gpu_milli
        ) / np.maximum(gpu_cap, 1)
        best = int(nodes[np.argmin(cpu_left + mem_left + gpu_left)])
        return _gpus_on(cluster, request, fit, best, "tight")


class GpuPacking(_Base):
    """Pack GPUs: a sharing pod goes first to a GPU already in use (least free first), then to a
    free GPU on a node with GPUs in use, then to an idle node; whole-GPU pods go to nodes with GPUs
    in use before idle nodes. Ties: node order."""

    name = "gpu-packing"

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        if not nodes.size:
            return None
        used = (cluster.gpu_free_milli[nodes] < MILLI) & cluster.gpu_exists[nodes]
        node_used = used.any(axis=1)
        tier = np.where(node_used, 1, 2)
        if request.sharing:
            tier = np.where((used & fit[nodes]).any(axis=1), 0, tier)
        best = int(nodes[np.argmin(tier)])
        return _gpus_on(cluster, request, fit, best, "tight")


class GpuClustering(_Base):
    """Keep pods with the same GPU ask together: a node already running pods that ask for the same
    number and share of GPUs first, then a node with no GPU in use, then any; on the node, the
    GPUs with the least free that fit."""

    name = "gpu-clustering"

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        if not nodes.size:
            return None
        same = cluster.shape_counts.get((request.num_gpus, request.gpu_milli))
        idle = ~((cluster.gpu_free_milli[nodes] < MILLI) & cluster.gpu_exists[nodes]).any(axis=1)
        tier = np.where(idle, 1, 2)
        if same is not None and request.num_gpus:
            tier = np.where(same[nodes] > 0, 0, tier)
        best = int(nodes[np.argmin(tier)])
        return _gpus_on(cluster, request, fit, best, "tight")


class FragmentationAware(_Base):
    """In the spirit of FGD: place where the cluster's expected fragmentation grows least.

    The target workload is what the policy has seen: the last ``window`` requests that arrived
    (their classes rebuilt every ``refresh`` arrivals). For each node (and, for a sharing pod,
    each distinct free share of a GPU on it) where the pod fits, the change of the node's
    fragmentation for that workload is computed from cached per-node sums; the smallest wins
    (ties: node order, then GPU order).

    ``barrier_pods > 0`` swaps FGD's measure (``sum_k p_k F_k``, linear in the fragmented GPU)
    for a log barrier on what each class ``k`` can still use over the whole cluster, ``U_k``
    (``frag.class_usable``): the policy minimises ``-sum_k w_k log(U_k + barrier_pods x one pod
    of k)``, ``w_k`` proportional to ``p_k ** class_exponent``. A class's loss is priced against
    what it has left, so taking the last node an 8-GPU class (or a pod that accepts only one
    scarce model) could use is expensive however rare the class, where FGD's measure charges it
    ``p_k`` (2% of pods) times the GPUs it loses. ``prefer_used``: among candidates whose growth
    is within ``tie_tolerance`` (relative) of the least, a node with GPUs in use before an idle
    one.
    """

    name = "fgd"

    def __init__(
        self,
        window: int = 2000,
        refresh: int = 200,
        max_classes: int = 32,
        usable_only: bool = False,
        pool_weight: float = 0.0,
        name: str = "fgd",
        barrier_pods: float = 0.0,
        class_exponent: float = 1.0,
        prefer_used: bool = False,
        tie_tolerance: float = 0.0,
    ) -> None:
        for key, value in (
            ("window", window),
            ("refresh", refresh),
            ("max_classes", max_classes),
        ):
            if value < 1:
                raise ValueError(f"{name}: {key} must be at least 1, not {value}")
        for key, number in (
            ("pool_weight", pool_weight),
            ("barrier_pods", barrier_pods),
            ("class_exponent", class_exponent),
            ("tie_tolerance", tie_tolerance),
        ):
            if not number >= 0:  # NaN too
                raise ValueError(f"{name}: {key} must be a number >= 0, not {number}")
        self.usable_only = usable_only
        self.pool_weight = pool_weight
        self.barrier_pods = barrier_pods
        self.class_exponent = class_exponent
        self.prefer_used = prefer_used
        self.tie_tolerance = tie_tolerance
        self._usable = np.zeros((0, 0), dtype=np.int64)
        self._weight = np.zeros(0)
        self.name = name
        self._counted: np.ndarray | None = None
        self.recent: deque[PodRequest] = deque(maxlen=window)
        self.refresh = refresh
        self.max_classes = max_classes
        self._since_refresh = 0
        self._workload: Workload | None = None
        self._workload_cluster: int | None = None
        self._below: np.ndarray | None = None
        self._frag: np.ndarray | None = None
        self._spec_allowed: np.ndarray | None = None
        self._spec_weight: np.ndarray | None = None
        self._accepted = np.zeros((0, 0), dtype=bool)
        self._below_version: np.ndarray | None = None

    def observe(self, request: PodRequest) -> None:
        self.recent.append(request)
        self._since_refresh += 1

    def _current(self, cluster: ShareCluster) -> tuple[Workload, np.ndarray]:
        """The workload and, per node, ``below_threshold_sum`` and the fragmentation per class
        (cached; rows recomputed for the nodes whose free capacity moved)."""
        stale = (
            self._workload is None
            or self._workload_cluster != id(cluster)
            or self._since_refresh >= self.refresh
        )
        if stale:
            history = self.recent or deque([PodRequest(0, 0)])
            workload = build_workload(
                (
                    (r.cpu_milli, r.memory_bytes, r.num_gpus, r.gpu_milli, r.gpu_spec)
                    for r in history
                ),
                cluster.allowed_models,
                len(cluster.model_names),
                self.max_classes,
            )
            self._workload = workload
            self._workload_cluster = id(cluster)
            self._spec_allowed = self._spec_weight = None
            self._since_refresh = 0
            self._accepted = accepted_by(cluster.model_ids, workload)
            if self.usable_only:
                self._counted = could_ever_use(
                    self._accepted,
                    cluster.gpu_exists.sum(axis=1),
                    cluster.cpu_capacity_milli,
                    cluster.memory_capacity_bytes,
                    workload,
                )
            n = len(cluster.nodes)
            self._below = np.zeros((n, workload.weight.shape[0]), dtype=np.int64)
            self._frag = np.zeros((n, workload.weight.shape[0]), dtype=np.int64)
            self._usable = np.zeros((n, workload.weight.shape[0]), dtype=np.int64)
            self._weight = workload.weight
            if self.class_exponent != 1.0:
                w = self._weight**self.class_exponent
                self._weight = w / max(float(w.sum()), 1e-12)
            self._below_version = cluster.version - 1  # every row is out of date
        assert self._workload is not None and self._below is not None
        assert self._below_version is not None and self._frag is not None
        moved = np.flatnonzero(cluster.version != self._below_version)
        if moved.size:
            free = cluster.gpu_free_milli[moved]
            self._below[moved] = below_threshold_sum(free, self._workload)
            state = (
                self._below[moved],
                free.sum(axis=1),
                (free == MILLI).sum(axis=1),
                cluster.cpu_free_milli[moved],
                cluster.memory_free_bytes[moved],
                self._accepted[moved],
                self._workload,
            )
            if self.barrier_pods > 0:
                self._usable[moved] = class_usable(*state)
            else:
                self._frag[moved] = class_fragmentation(
                    *state, None if self._counted is None else self._counted[moved]
                )
            self._below_version[moved] = cluster.version[moved]
        return self._workload, self._below

    def choose(self, cluster: ShareCluster, request: PodRequest) -> SharePlacement | None:
        fit = cluster.gpu_fit(request)
        nodes = np.flatnonzero(cluster.feasible(request, fit))
        if not nodes.size:
            return None
        workload, below = self._current(cluster)
        free = cluster.gpu_free_milli
        if request.sharing:
            cand_node, cand_gpu = np.nonzero(fit[nodes])
            cand_node = nodes[cand_node]
            f = free[cand_node, cand_gpu]
            # GPUs of one node with the same free share give the same result: keep the first
            _, first = np.unique(cand_node * (MILLI + 1) + f, return_index=True)
            cand_node, cand_gpu, f = cand_node[first], cand_gpu[first], f[first]
        else:
            cand_node, cand_gpu = nodes, np.full(nodes.shape, -1)
            f = np.zeros(nodes.shape, dtype=np.int64)
        # nodes in the same state (kind, free CPU, memory and GPU shares; the share taken) give
        # the same growth: it is computed once per state
        key = np.column_stack(
            (
                cluster.kind_ids[cand_node],
                cluster.cpu_free_milli[cand_node],
                cluster.memory_free_bytes[cand_node],
                np.sort(free[cand_node], axis=1),
                f,
            )
        )
        _, first, inverse = np.unique(
            np.ascontiguousarray(key).view(np.dtype((np.void, key.dtype.itemsize * key.shape[1]))),
            return_index=True,
            return_inverse=True,
        )
        growth = self._growth(cluster, request, workload, below, cand_node[first], f[first])
        growth = growth[inverse.ravel()]
        if self.prefer_used:
            low = float(growth.min())
            near = growth <= low + self.tie_tolerance * max(abs(low), 1e-12)
            idle = (free[cand_node] == cluster.gpu_exists[cand_node] * MILLI).all(axis=1)
            best = int(np.argmin(np.where(near, np.where(idle, 1, 0), 2)))
        else:
            best = int(np.argmin(growth))
        node = int(cand_node[best])
        if request.sharing:
            return SharePlacement(node, (int(cand_gpu[best]),), request.gpu_milli)
        return _gpus_on(cluster, request, fit, node, "first")

    def _growth(
        self,
        cluster: ShareCluster,
        request: PodRequest,
        workload: Workload,
        below: np.ndarray,
        cand_node: np.ndarray,
        f: np.ndarray,
    ) -> np.ndarray:
        """(C,) how much the measure grows when the request goes to each candidate (a node and,
        for a sharing pod, a GPU with ``f`` free on it)."""
        if request.sharing:
            f_after = f - request.gpu_milli
            thr = workload.threshold_milli[None, :]
            below_after = (
                below[cand_node]
                - f[:, None] * (f[:, None] < thr)
                + f_after[:, None] * (f_after[:, None] < thr)
            )
            full_drop = (f == MILLI).astype(np.int64)
        else:
            below_after = below[cand_node]
            full_drop = np.full(cand_node.shape, request.num_gpus)
        gpu_drop = request.total_gpu_milli
        cand_free = cluster.gpu_free_milli[cand_node]
        state_after = (
            below_after,
            cand_free.sum(axis=1) - gpu_drop,
            (cand_free == MILLI).sum(axis=1) - full_drop,
            cluster.cpu_free_milli[cand_node] - request.cpu_milli,
            cluster.memory_free_bytes[cand_node] - request.memory_bytes,
            self._accepted[cand_node],
            workload,
        )
        if self.barrier_pods > 0:
            lost = self._usable[cand_node] - class_usable(*state_after)
            left = self._usable.sum(axis=0) + self.barrier_pods * workload.class_milli
            return np.asarray(-np.log1p(-lost / left[None, :]) @ self._weight)
        assert self._frag is not None
        after = class_fragmentation(
            *state_after, None if self._counted is None else self._counted[cand_node]
        )
        growth = (after - self._frag[cand_node]) @ self._weight
        growth = growth - workload.cpu_only_weight * gpu_drop
        if self.pool_weight and request.num_gpus:
            models = cluster.model_ids[cand_node]
            growth = growth + self.pool_weight * gpu_drop * self._pool_cost(cluster)[models]
        return np.asarray(growth)

    def _pool_cost(self, cluster: ShareCluster) -> np.ndarray:
        """(M,) what one milli-GPU of each model costs the observed demand: over the accepted-model
        sets ``s`` seen in the window (any model included), the share ``w_s`` of the GPU asked
        for with that set, times the cluster's free GPU over the free GPU the set accepts (1 for
        "any model"; large when a set's few GPUs are nearly gone), summed over the sets that
        accept the model."""
        if self._spec_allowed is None or self._spec_weight is None:
            demand: dict[tuple[str, ...], float] = {}
            for r in self.recent:
                if r.num_gpus:
                    demand[r.gpu_spec] = demand.get(r.gpu_spec, 0.0) + r.total_gpu_milli
            total = sum(demand.values()) or 1.0
            specs = list(demand) or [()]
            self._spec_allowed = np.stack([cluster.allowed_models(s) for s in specs])
            self._spec_weight = np.array([demand.get(s, 1.0) / total for s in specs])
        has = cluster.model_ids >= 0
        free_by_model = np.bincount(
            cluster.model_ids[has],
            weights=cluster.gpu_free_milli[has].sum(axis=1),
            minlength=len(cluster.model_names),
        )
        usable = self._spec_allowed @ free_by_model
        scarcity = free_by_model.sum() / np.maximum(usable, 1.0)
        return np.asarray((self._spec_weight * scarcity) @ self._spec_allowed)


POLICIES = (
    "first-fit",
    "best-fit",
    "gpu-packing",
    "gpu-clustering",
    "random-fit",
    "fgd",
    "fgd-usable",
    "fgd-pool",
    "fgd-barrier",
)


# The FGD-style policies' settings. fgd, fgd-usable, fgd-pool: the first values written down.
# fgd-barrier: chosen on synthetic training seeds 11-15 (docs/gpu-sharing.md, "Figures").
FGD_SETTINGS: dict[str, dict[str, Any]] = {
    "fgd": {},
    "fgd-usable": {"usable_only": True},
    "fgd-pool": {"usable_only": True, "pool_weight": 1.0},
    "fgd-barrier": {
        "window": 8000,
        "max_classes": 128,
        "barrier_pods": 1.0,
        "class_exponent": 0.5,
        "prefer_used": True,
        "tie_tolerance": 0.0,
    },
}


def make_policy(name: str, seed: int = 0) -> SharePolicy:
    """A fresh policy by name (one of ``POLICIES``)."""
    if name == "first-fit":
        return FirstFit()
    if name == "best-fit":
        return BestFit()
    if name == "gpu-packing":
        return GpuPacking()
    if name == "gpu-clustering":
        return GpuClustering()
    if name == "random-fit":
        return RandomFit(seed)
    if name in FGD_SETTINGS:
        return FragmentationAware(name=name, **FGD_SETTINGS[name])
    raise ValueError(f"unknown share policy {name!r}; choose from {', '.join(POLICIES)}")
