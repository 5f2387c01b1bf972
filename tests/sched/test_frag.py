from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpufleet.sched.alibaba import generate_trace, node_specs
from gpufleet.sched.frag import build_workload, fragmentation_rate, node_fragmentation
from gpufleet.sched.share import (
    NodeSpec,
    PodRequest,
    ShareCluster,
    SharePlacement,
    make_policy,
)
from gpufleet.sched.sharesim import (
    inflate,
    measure_fragmentation,
    plot_allocation,
    run_inflation,
    run_replay,
)

GIB = 2**30


def worked_example() -> tuple[ShareCluster, list[PodRequest]]:
    """docs/scheduler.md's example: one T4 node, 4 GPUs, 400 and 800 milli in use on two."""
    cluster = ShareCluster([NodeSpec("t4", 64000, 256 * GIB, 4, "T4", 16 * GIB)])
    cluster.allocate("x", PodRequest(1000, GIB, 1, 400), SharePlacement(0, (2,), 400))
    cluster.allocate("y", PodRequest(1000, GIB, 1, 800), SharePlacement(0, (3,), 800))
    workload = (
        [PodRequest(2000, GIB, 1, 500)] * 5  # half the pods ask for half a GPU
        + [PodRequest(4000, GIB, 1, 1000)] * 3  # 30%: one whole GPU
        + [PodRequest(16000, GIB, 4, 1000)]  # 10%: four whole GPUs
        + [PodRequest(1000, GIB)]  # 10%: no GPU
    )
    return cluster, workload


def test_fragmentation_worked_example() -> None:
    cluster, workload = worked_example()
    # 0.5 x 200 (only the GPU with 200 free is too small for a 500 share)
    # + 0.3 x 800 (600 + 200 on partly used GPUs cannot take a whole GPU)
    # + 0.1 x 2800 (two whole free GPUs are too few for four) + 0.1 x 2800 (no GPU asked)
    assert measure_fragmentation(cluster, workload) == pytest.approx(900)
    assert fragmentation_rate(900, cluster.unallocated_gpu_milli) == pytest.approx(900 / 2800)


def test_a_model_the_class_does_not_accept_is_all_fragmented() -> None:
    cluster, _ = worked_example()
    wanted = [PodRequest(2000, GIB, 1, 500, ("A100",))]
    assert measure_fragmentation(cluster, wanted) == pytest.approx(2800)
    workload = build_workload(
        [(2000, GIB, 1, 500, ("A100",))], cluster.allowed_models, len(cluster.model_names)
    )
    frag = node_fragmentation(
        cluster.gpu_free_milli,
        cluster.cpu_free_milli,
        cluster.memory_free_bytes,
        cluster.model_ids,
        workload,
    )
    assert frag.tolist() == [2800]


def test_a_node_short_of_cpu_is_all_fragmented() -> None:
    cluster, _ = worked_example()
    cluster.allocate("cpu", PodRequest(61000, GIB), SharePlacement(0, (), 0))
    assert measure_fragmentation(cluster, [PodRequest(2000, GIB, 1, 500)]) == pytest.approx(2800)


def test_inflation_first_failure_is_measured_where_it_happens() -> None:
    nodes = [NodeSpec("t4", 64000, 256 * GIB, 1, "T4", 16 * GIB)]
    requests = [PodRequest(1000, GIB, 1, 600)] * 2
    result = run_inflation(nodes, requests, make_policy("first-fit"))
    assert result.failed_pods == 1
    assert result.first_failure_arrived_ratio == pytest.approx(0.6)
    assert result.unallocated_share_at_first_failure == pytest.approx(0.4)
    assert result.unallocated_share_at_full == pytest.approx(0.4)
    # the 400 left cannot take a 600 share: all of it is fragmented
    assert result.fragmentation_rate_at_full == pytest.approx(1.0)


def test_a_pod_no_empty_node_could_take_is_not_the_first_failure() -> None:
    nodes = [NodeSpec("t4", 64000, 256 * GIB, 1, "T4", 16 * GIB)]
    requests = [PodRequest(1000, GIB, 1, 500, ("A100",)), PodRequest(1000, GIB, 1, 500)]
    result = run_inflation(nodes, requests, make_policy("first-fit"))
    assert result.failed_pods == 1 and result.first_failure_arrived_ratio is None


def test_inflation_curve_and_plot(tmp_path: Path) -> None:
    nodes, pods = generate_trace(num_nodes=50, num_pods=600, seed=2)
    specs = node_specs(nodes)
    capacity = ShareCluster(specs).gpu_capacity_milli
    requests = inflate([p.request for p in pods], capacity, 1.2, seed=0)
    assert sum(r.total_gpu_milli for r in requests) >= 1.2 * capacity
    results = [run_inflation(specs, requests, make_policy(n)) for n in ("first-fit", "fgd")]
    for r in results:
        arrived, allocated = np.array(r.curve).T
        assert (np.diff(arrived) >= 0).all() and (np.diff(allocated) >= 0).all()
        assert arrived[-1] >= 1.15 and (allocated <= arrived + 1e-9).all()
        assert r.unallocated_share_at_full is not None
        assert 0 <= r.unallocated_share_at_full <= 1
    png = plot_allocation(results, tmp_path / "alloc.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_follows_creation_and_deletion_times() -> None:
    nodes = [NodeSpec("t4", 64000, 256 * GIB, 1, "T4", 16 * GIB)]
    half = PodRequest(1000, GIB, 1, 500)
    pods = [(0, 100, half), (10, 50, half), (20, None, half), (60, None, half), (80, None, half)]
    result = run_replay(nodes, pods, make_policy("best-fit"))
    # 0 and 10 fill the GPU; 20 fails; 10 leaves at 50 so 60 fits; 80 fails (0 leaves at 100)
    assert (result.placed_pods, result.failed_pods) == (3, 2)
    assert [share for _, share in result.allocation] == [0.5, 1.0, 0.5, 1.0, 0.5]
    # from the first to the last arrival: 0-10: 0.5, 10-50: 1.0, 50-60: 0.5, 60-80: 1.0
    assert result.mean_allocation_rate == pytest.approx((5 + 40 + 5 + 20) / 80)
