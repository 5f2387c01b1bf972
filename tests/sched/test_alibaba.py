from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.sched.alibaba import (
    NODE_COLUMNS,
    POD_COLUMNS,
    TraceFormatError,
    generate_trace,
    node_specs,
    read_nodes,
    read_pods,
    write_nodes,
    write_pods,
)
from gpufleet.sched.gpumodels import UnknownGpuModelError
from gpufleet.sched.share import ShareCluster

MIB = 2**20

NODES = """sn,cpu_milli,memory_mib,gpu,model
node-a,96000,393216,8,V100M32
node-b,64000,262144,2,T4
node-c,32000,131072,0,
"""

PODS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
pod-1,4000,16384,1,500,,LS,Running,10,,12
pod-2,8000,32768,2,1000,V100M16|V100M32,BE,Succeeded,20,900,25
pod-3,2000,4096,0,0,,BE,Succeeded,30,40,30
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_the_published_columns(tmp_path: Path) -> None:
    nodes = read_nodes(write(tmp_path, "nodes.csv", NODES))
    assert [(n.sn, n.num_gpus, n.gpu_model) for n in nodes] == [
        ("node-a", 8, "V100M32"),
        ("node-b", 2, "T4"),
        ("node-c", 0, ""),
    ]
    assert nodes[0].memory_bytes == 393216 * MIB
    pods = read_pods(write(tmp_path, "pods.csv", PODS))
    assert pods[0].request.sharing and pods[0].request.gpu_milli == 500
    assert pods[0].deletion_seconds is None and pods[0].scheduled_seconds == 12
    assert pods[1].request.gpu_spec == ("V100M16", "V100M32")
    assert pods[1].request.total_gpu_milli == 2000
    assert pods[2].request.num_gpus == 0 and pods[2].qos == "BE"


@pytest.mark.parametrize(
    ("old", "new", "row", "column"),
    [
        ("pod-1,4000,", "pod-1,4k,", 1, "cpu_milli"),
        ("1,500,,LS", "1,1500,,LS", 1, "gpu_milli"),
        ("0,0,,BE", "0,300,,BE", 3, "gpu_milli"),
        ("2,1000,V100M16", "2,500,V100M16", 2, "gpu_milli"),
        ("V100M16|V100M32", "V100M16|", 2, "gpu_spec"),
        ("20,900,25", "20,19,25", 2, "deletion_time"),
        ("pod-3,2000", "pod-1,2000", 3, "name"),
        ("10,,12", "10,,-3", 1, "scheduled_time"),
        ("4096,0,0", "4096,-1,0", 3, "num_gpu"),
    ],
)
def test_pod_errors_name_row_and_column(
    tmp_path: Path, old: str, new: str, row: int, column: str
) -> None:
    assert old in PODS
    path = write(tmp_path, "pods.csv", PODS.replace(old, new, 1))
    with pytest.raises(TraceFormatError) as err:
        read_pods(path)
    assert f"row {row} (line {row + 1}), column {column!r}" in str(err.value)
    assert str(path) in str(err.value)


def test_node_errors_name_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"row 2 \(line 3\), column 'model'"):
        read_nodes(write(tmp_path, "n.csv", NODES.replace("2,T4", "2,")))
    with pytest.raises(TraceFormatError, match=r"row 1 \(line 2\), column 'gpu'"):
        read_nodes(write(tmp_path, "n.csv", NODES.replace("8,V100M32", "8.5,V100M32")))
    with pytest.raises(TraceFormatError, match=r"missing column.*memory_mib"):
        read_nodes(write(tmp_path, "n.csv", NODES.replace("memory_mib", "mem")))
    with pytest.raises(TraceFormatError, match=r"row 3 \(line 4\): expected 5 fields"):
        read_nodes(write(tmp_path, "n.csv", NODES.replace("node-c,32000,131072,0,", "node-c,1")))


def test_node_models_go_through_the_model_table(tmp_path: Path) -> None:
    nodes = read_nodes(write(tmp_path, "n.csv", NODES.replace("2,T4", "2,G2")))
    with pytest.raises(UnknownGpuModelError, match="G2"):
        node_specs(nodes)
    specs = node_specs(nodes, fallback="t4")
    assert specs[1].gpu_memory_bytes == 16 * 2**30
    assert specs[0].gpu_memory_bytes == 32 * 2**30  # V100M32


def test_generated_trace_round_trips_in_exactly_the_format(tmp_path: Path) -> None:
    nodes, pods = generate_trace(num_nodes=60, num_pods=500, seed=4)
    write_nodes(nodes, tmp_path / "nodes.csv")
    write_pods(pods, tmp_path / "pods.csv")
    assert (tmp_path / "nodes.csv").read_text().splitlines()[0] == ",".join(NODE_COLUMNS)
    assert (tmp_path / "pods.csv").read_text().splitlines()[0] == ",".join(POD_COLUMNS)
    assert read_nodes(tmp_path / "nodes.csv") == nodes
    assert read_pods(tmp_path / "pods.csv") == pods


def test_generated_trace_has_the_stated_mix() -> None:
    nodes, pods = generate_trace(num_nodes=400, num_pods=6000, seed=1)
    assert len({n.gpu_model for n in nodes if n.num_gpus}) >= 6
    assert any(n.num_gpus == 0 for n in nodes)
    requests = [p.request for p in pods]
    gpu_pods = [r for r in requests if r.num_gpus]
    sharing = sum(r.sharing for r in requests) / len(requests)
    constrained = sum(bool(r.gpu_spec) for r in gpu_pods) / len(gpu_pods)
    assert 0.35 < sharing < 0.45
    assert 0.28 < constrained < 0.39
    assert any(r.num_gpus == 0 for r in requests)
    assert {2, 4, 8} <= {r.num_gpus for r in requests}
    # every pod fits the empty cluster, and creation times are in order
    empty = ShareCluster(node_specs(nodes))
    assert all(empty.feasible(r).any() for r in set(requests))
    times = [p.creation_seconds for p in pods]
    assert times == sorted(times)
    assert generate_trace(num_nodes=400, num_pods=6000, seed=1)[1] == pods
    assert generate_trace(num_nodes=400, num_pods=6000, seed=2)[1] != pods
