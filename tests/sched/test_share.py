from __future__ import annotations

import copy

import numpy as np
import pytest

from gpufleet.sched.alibaba import generate_trace, node_specs
from gpufleet.sched.frag import (
    MILLI,
    Workload,
    accepted_by,
    below_threshold_sum,
    class_usable,
    node_fragmentation,
)
from gpufleet.sched.share import (
    POLICIES,
    FragmentationAware,
    NodeSpec,
    PodRequest,
    ShareCluster,
    SharePlacement,
    make_policy,
)
from gpufleet.sched.sharesim import inflate

GIB = 2**30


def t4_node(name: str = "t4-0", gpus: int = 1, cpu: int = 16000) -> NodeSpec:
    return NodeSpec(name, cpu, 64 * GIB, gpus, "T4", 16 * GIB)


def share(milli: int, cpu: int = 1000, **kw: object) -> PodRequest:
    return PodRequest(cpu, GIB, 1, milli, **kw)  # type: ignore[arg-type]


def test_shares_of_one_gpu_sum_to_at_most_one() -> None:
    cluster = ShareCluster([t4_node()])
    cluster.allocate("a", share(500), SharePlacement(0, (0,), 500))
    cluster.allocate("b", share(300), SharePlacement(0, (0,), 300))
    assert not cluster.feasible(share(300)).any()
    assert cluster.feasible(share(200)).all()
    with pytest.raises(ValueError, match="does not fit"):
        cluster.allocate("c", share(300), SharePlacement(0, (0,), 300))
    cluster.release("a")
    assert cluster.feasible(share(300)).all()
    assert cluster.allocated_gpu_milli == 300


def test_gpu_memory_must_fit_as_well_as_the_share() -> None:
    cluster = ShareCluster([t4_node()])
    pod = share(300, gpu_memory_bytes=10 * GIB)
    cluster.allocate("a", pod, SharePlacement(0, (0,), 300))
    assert not cluster.feasible(pod).any()  # 20 GiB > 16 GiB although 600 milli < 1000
    assert cluster.feasible(share(300, gpu_memory_bytes=6 * GIB)).all()


def test_type_constraints_match_trace_labels_and_vendor_names() -> None:
    nodes = [
        NodeSpec("v", 96000, 512 * GIB, 8, "Tesla V100-SXM2-32GB", 32 * GIB),
        t4_node(),
        NodeSpec("g", 32000, 128 * GIB, 2, "G2", 0),
    ]
    cluster = ShareCluster(nodes)
    assert cluster.feasible(share(500, gpu_spec=("V100M32",))).tolist() == [True, False, False]
    assert cluster.feasible(share(500, gpu_spec=("A100", "T4"))).tolist() == [False, True, False]
    assert cluster.feasible(share(500, gpu_spec=("G2",))).tolist() == [False, False, True]
    assert cluster.feasible(share(500)).tolist() == [True, True, True]
    # a pod that states GPU memory does not go where the GPU memory is unknown
    assert cluster.feasible(share(500, gpu_memory_bytes=GIB)).tolist() == [True, True, False]


def test_node_cpu_and_memory_are_resources() -> None:
    cluster = ShareCluster([t4_node(cpu=4000, gpus=2)])
    cluster.allocate("a", share(200, cpu=3000), SharePlacement(0, (0,), 200))
    assert not cluster.feasible(share(200, cpu=2000)).any()
    assert not cluster.feasible(PodRequest(1000, 100 * GIB)).any()
    assert cluster.feasible(PodRequest(1000, GIB)).all()  # CPU-only pod


def test_whole_gpus_stay_on_one_node() -> None:
    cluster = ShareCluster([t4_node("a", gpus=2), t4_node("b", gpus=2)])
    cluster.allocate("x", share(100), SharePlacement(0, (0,), 100))
    pod = PodRequest(2000, GIB, 2, 1000)
    assert cluster.feasible(pod).tolist() == [False, True]
    with pytest.raises(ValueError):
        PodRequest(1000, GIB, 2, 500)


def _state(policy_name: str, pod: PodRequest, nodes: list[NodeSpec], setup) -> SharePlacement:
    cluster = ShareCluster(nodes)
    for key, (request, placement) in enumerate(setup):
        cluster.allocate(key, request, placement)
    policy = make_policy(policy_name)
    policy.observe(pod)
    placement = policy.choose(cluster, pod)
    assert placement is not None
    return placement


def test_first_fit_best_fit_and_packing_choose_as_documented() -> None:
    nodes = [t4_node(f"n{i}", gpus=2) for i in range(3)]
    setup = [
        (share(500), SharePlacement(1, (1,), 500)),
        (share(300), SharePlacement(2, (0,), 300)),
        (share(400), SharePlacement(2, (1,), 400)),
    ]
    pod = share(400)
    assert _state("first-fit", pod, nodes, setup) == SharePlacement(0, (0,), 400)
    # best fit: node 2 is left with the least; on it the GPU with the least free that fits
    assert _state("best-fit", pod, nodes, setup) == SharePlacement(2, (1,), 400)
    # packing: a GPU already in use first (node 1's GPU 1 is the first such node)
    assert _state("gpu-packing", pod, nodes, setup) == SharePlacement(1, (1,), 400)
    # clustering: the node already running a pod with the same ask (400)
    assert _state("gpu-clustering", pod, nodes, setup) == SharePlacement(2, (1,), 400)


def test_random_fit_is_seeded_and_only_picks_where_it_fits() -> None:
    nodes = [t4_node(f"n{i}", gpus=2) for i in range(20)]
    cluster = ShareCluster(nodes)
    for i in range(0, 20, 2):
        cluster.allocate(i, PodRequest(1000, GIB, 2, 1000), SharePlacement(i, (0, 1), 1000))
    picks = [make_policy("random-fit", seed=7).choose(cluster, share(500)) for _ in range(2)]
    assert picks[0] == picks[1]
    many = make_policy("random-fit", seed=1)
    nodes_hit = {many.choose(cluster, share(500)).node for _ in range(200)}  # type: ignore[union-attr]
    assert nodes_hit == set(range(1, 20, 2))


def test_fgd_fills_the_hole_a_whole_gpu_workload_cannot_use() -> None:
    nodes = [t4_node("a", gpus=2), t4_node("b", gpus=2)]
    setup = [(share(500), SharePlacement(1, (1,), 500))]
    cluster = ShareCluster(nodes)
    for key, (request, placement) in enumerate(setup):
        cluster.allocate(key, request, placement)
    policy = FragmentationAware()
    for _ in range(10):
        policy.observe(PodRequest(1000, GIB, 1, 1000))
    pod = share(500)
    policy.observe(pod)
    assert policy.choose(cluster, pod) == SharePlacement(1, (1,), 500)


def test_fgd_takes_the_steepest_descent_of_its_measure() -> None:
    """Every choice equals the brute-force minimum of the fragmentation growth."""
    nodes, pods = generate_trace(num_nodes=24, num_pods=300, seed=3)
    specs = node_specs(nodes)
    cluster = ShareCluster(specs)
    requests = inflate([p.request for p in pods], cluster.gpu_capacity_milli, 0.9, seed=2)
    policy = FragmentationAware(refresh=10**9)
    for r in requests[:30]:
        policy.observe(r)
    checked = 0
    for i, r in enumerate(requests[30:]):
        placement = policy.choose(cluster, r)
        if placement is None:
            continue
        workload = policy._current(cluster)[0]

        def frag(c: ShareCluster, workload: Workload = workload) -> float:
            return float(
                node_fragmentation(
                    c.gpu_free_milli, c.cpu_free_milli, c.memory_free_bytes, c.model_ids, workload
                ).sum()
            )

        base = frag(cluster)
        fit = cluster.gpu_fit(r)
        best = np.inf
        for n in np.flatnonzero(cluster.feasible(r, fit)):
            slots = [int(g) for g in np.flatnonzero(fit[n])]
            options = [(g,) for g in slots] if r.sharing else [tuple(slots[: r.num_gpus])]
            for gpus in options:
                trial = copy.deepcopy(cluster)
                trial.allocate("x", r, SharePlacement(int(n), gpus, r.gpu_milli))
                best = min(best, frag(trial) - base)
        trial = copy.deepcopy(cluster)
        trial.allocate("x", r, placement)
        assert frag(trial) - base == pytest.approx(best, abs=1e-6)
        cluster.allocate(i, r, placement)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_places_only_what_fits(name: str) -> None:
    nodes, pods = generate_trace(num_nodes=40, num_pods=400, seed=5)
    cluster = ShareCluster(node_specs(nodes))
    policy = make_policy(name, seed=3)
    asked = placed = 0
    for i, pod in enumerate(pods):
        policy.observe(pod.request)
        placement = policy.choose(cluster, pod.request)
        if placement is None:
            assert not cluster.feasible(pod.request).any()
            continue
        cluster.allocate(i, pod.request, placement)  # raises when it does not fit
        placed += pod.request.total_gpu_milli
        asked += 1
    assert cluster.allocated_gpu_milli == placed
    assert (cluster.gpu_free_milli >= 0).all() and (cluster.cpu_free_milli >= 0).all()
    assert asked > 100


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="first-fit"):
        make_policy("worst-fit")


def test_fgd_pool_keeps_a_scarce_pool_for_the_pods_that_can_only_run_there() -> None:
    nodes = [t4_node("t4", gpus=2), NodeSpec("v", 96000, 512 * GIB, 8, "V100M32", 32 * GIB)]
    seen = [PodRequest(4000, GIB, 1, 1000, ("T4",))] * 3 + [
        PodRequest(4000, GIB, 1, 1000, ("V100M32",))
    ] * 7
    pod = PodRequest(4000, GIB, 1, 1000)
    chosen = {}
    for name in ("fgd", "fgd-pool"):
        policy = make_policy(name)
        for r in seen:
            policy.observe(r)
        placement = policy.choose(ShareCluster(nodes), pod)
        assert placement is not None
        chosen[name] = placement.node
    # FGD's measure calls the T4 node's GPUs fragmented for the V100-only class (70% of pods), so
    # filling it lowers the measure most; fgd-pool prices the small T4 pool (2 GPUs) for the
    # T4-only demand (30%) higher than the V100 pool (8 GPUs) for the V100-only demand
    assert chosen == {"fgd": 0, "fgd-pool": 1}


def v100_node(name: str) -> NodeSpec:
    return NodeSpec(name, 96000, 512 * GIB, 8, "V100M32", 32 * GIB)


def test_fgd_breaks_the_last_free_8_gpu_node_and_fgd_barrier_does_not() -> None:
    """One V100 node with 8 free GPUs (the only place an 8-GPU pod fits) and two free 2-GPU T4
    nodes; the window: 2-GPU pods 60%, 1-GPU pods 38%, 8-GPU pods 2%. A 1-GPU pod arrives."""
    nodes = [v100_node("v"), t4_node("t4-a", gpus=2), t4_node("t4-b", gpus=2)]
    seen = (
        [PodRequest(4000, GIB, 2, 1000)] * 30
        + [PodRequest(4000, GIB, 1, 1000)] * 19
        + [PodRequest(4000, GIB, 8, 1000)]
    )
    pod = PodRequest(4000, GIB, 1, 1000)
    eight = PodRequest(4000, GIB, 8, 1000)
    chosen = {}
    for name in ("fgd", "fgd-usable", "fgd-pool", "fgd-barrier"):
        cluster = ShareCluster(nodes)
        policy = make_policy(name)
        for r in seen:
            policy.observe(r)
        placement = policy.choose(cluster, pod)
        assert placement is not None
        cluster.allocate("p", pod, placement)
        chosen[name] = (nodes[placement.node].name, bool(cluster.feasible(eight).any()))
    # FGD weighs the 8-GPU class by its share of pods (2%): taking one of the V100's GPUs costs
    # it 2% x 7 GPUs, less than turning a T4 node useless for the 2-GPU class (60% x 1 GPU)
    assert chosen["fgd"] == chosen["fgd-usable"] == chosen["fgd-pool"] == ("v", False)
    # the barrier prices what each class has left: the V100 node is all the 8-GPU class has
    assert chosen["fgd-barrier"] == ("t4-a", True)


def _barrier_objective(policy: FragmentationAware, cluster: ShareCluster) -> float:
    """``-sum_k w_k log(U_k + barrier x one pod of k)`` from the cluster's state, ``U_k`` the free
    GPU the class could use over all nodes (brute force over ``class_usable``)."""
    workload = policy._current(cluster)[0]
    free = cluster.gpu_free_milli
    usable = class_usable(
        below_threshold_sum(free, workload),
        free.sum(axis=1),
        (free == MILLI).sum(axis=1),
        cluster.cpu_free_milli,
        cluster.memory_free_bytes,
        accepted_by(cluster.model_ids, workload),
        workload,
    ).sum(axis=0)
    weight = workload.weight**policy.class_exponent
    weight = weight / weight.sum()
    return float(-(np.log(usable + policy.barrier_pods * workload.class_milli) @ weight))


def test_fgd_barrier_takes_the_steepest_descent_of_its_objective() -> None:
    """Every choice is within the tie tolerance of the brute-force least growth of the barrier
    objective."""
    nodes, pods = generate_trace(num_nodes=24, num_pods=300, seed=4)
    cluster = ShareCluster(node_specs(nodes))
    requests = inflate([p.request for p in pods], cluster.gpu_capacity_milli, 0.95, seed=5)
    policy = make_policy("fgd-barrier")
    assert isinstance(policy, FragmentationAware)
    for r in requests[:40]:
        policy.observe(r)
    policy.refresh = 10**9
    checked = 0
    for i, r in enumerate(requests[40:]):
        placement = policy.choose(cluster, r)
        if placement is None:
            assert not cluster.feasible(r).any()
            continue
        base = _barrier_objective(policy, cluster)
        fit = cluster.gpu_fit(r)
        options = []
        for n in np.flatnonzero(cluster.feasible(r, fit)):
            slots = [int(g) for g in np.flatnonzero(fit[n])]
            for gpus in [(g,) for g in slots] if r.sharing else [tuple(slots[: r.num_gpus])]:
                trial = copy.deepcopy(cluster)
                trial.allocate("x", r, SharePlacement(int(n), gpus, r.gpu_milli))
                options.append(_barrier_objective(policy, trial) - base)
        trial = copy.deepcopy(cluster)
        trial.allocate("x", r, placement)
        mine = _barrier_objective(policy, trial) - base
        low = min(options)
        assert mine <= low + policy.tie_tolerance * abs(low) + 1e-9
        cluster.allocate(i, r, placement)
        checked += 1
    assert checked > 40


def test_fgd_barrier_packs_onto_a_node_in_use_when_the_growth_ties() -> None:
    """Two V100 nodes, the second with two GPUs in use; 1- and 2-GPU pods seen. A 1-GPU pod
    costs every class the same on either node: fgd takes the first node, fgd-barrier the one in
    use, which keeps the idle node whole."""
    nodes = [v100_node("idle"), v100_node("busy")]
    seen = [PodRequest(4000, GIB, 1, 1000)] * 6 + [PodRequest(4000, GIB, 2, 1000)] * 4
    pod = PodRequest(4000, GIB, 1, 1000)
    chosen = {}
    for name in ("fgd", "fgd-barrier"):
        cluster = ShareCluster(nodes)
        cluster.allocate("b", PodRequest(8000, GIB, 2, 1000), SharePlacement(1, (0, 1), 1000))
        policy = make_policy(name)
        for r in seen:
            policy.observe(r)
        placement = policy.choose(cluster, pod)
        assert placement is not None
        chosen[name] = nodes[placement.node].name
    assert chosen == {"fgd": "idle", "fgd-barrier": "busy"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"barrier_pods": -1.0}, "fgd-x: barrier_pods must be a number >= 0, not -1.0"),
        ({"class_exponent": float("nan")}, "class_exponent must be a number >= 0"),
        ({"window": 0}, "fgd-x: window must be at least 1, not 0"),
    ],
)
def test_fgd_settings_are_checked(setting: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        FragmentationAware(name="fgd-x", **setting)  # type: ignore[arg-type]
