"""The Alibaba GPU-sharing trace format (published with Weng et al., ATC'23, "Beware of
Fragmentation"): a strict reader, a writer, and a generator of synthetic traces in that format.

Node list ``sn,cpu_milli,memory_mib,gpu,model``; pod list ``name,cpu_milli,memory_mib,num_gpu,
gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time``. ``gpu_milli`` is the
share of one GPU (1000 = whole) a pod takes on each of its GPUs; a sharing pod has ``num_gpu`` 1 and
``gpu_milli`` below 1000; ``gpu_spec`` is empty or a ``|``-separated list of accepted GPU models;
CPU-only pods have ``num_gpu`` 0. Times are seconds; ``deletion_time`` and ``scheduled_time`` may be
empty (still running, never scheduled). Extra columns are ignored; a missing column, a value that is
not a whole number, a negative or inconsistent value, or a duplicate name is an error naming the
file, the row and the column. Memory is converted to bytes here, at the edge.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpufleet.sched.frag import MILLI
from gpufleet.sched.gpumodels import GpuModelTable, default_table
from gpufleet.sched.share import NodeSpec, PodRequest

MIB = 2**20
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = (
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)


class TraceFormatError(ValueError):
    """A trace file that does not follow the format; the message names file, row and column."""


@dataclass(frozen=True, slots=True)
class TraceNode:
    sn: str
    cpu_milli: int
    memory_bytes: int
    num_gpus: int
    gpu_model: str  # the trace's label ("V100M32", "T4", "G2", ...); empty for CPU-only nodes


@dataclass(frozen=True, slots=True)
class TracePod:
    name: str
    request: PodRequest
    qos: str
    pod_phase: str
    creation_seconds: int
    deletion_seconds: int | None
    scheduled_seconds: int | None


class _Rows:
    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = columns

    def read(self) -> list[tuple[int, dict[str, str]]]:
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in self.columns if c not in header]
            if missing:
                raise TraceFormatError(
                    f"{self.path}: missing column(s) {', '.join(missing)}; "
                    f"expected {','.join(self.columns)}"
                )
            out = []
            for row_number, row in enumerate(reader, start=1):
                if None in row or any(row[c] is None for c in self.columns):
                    raise TraceFormatError(
                        f"{self.path}: row {row_number} (line {row_number + 1}): "
                        f"expected {len(header)} fields"
                    )
                out.append((row_number, row))
            return out

    def fail(self, row: int, column: str, why: str, value: str) -> TraceFormatError:
        return TraceFormatError(
            f"{self.path}: row {row} (line {row + 1}), column {column!r}: {why}: {value!r}"
        )

    def whole(
        self, row: int, values: dict[str, str], column: str, optional: bool = False
    ) -> int | None:
        text = values[column].strip()
        if optional and text == "":
            return None
        try:
            value = int(text)
        except ValueError:
            raise self.fail(row, column, "not a whole number", text) from None
        if value < 0:
            raise self.fail(row, column, "must not be negative", text)
        return value

    def count(self, row: int, values: dict[str, str], column: str) -> int:
        """A required whole number >= 0."""
        value = self.whole(row, values, column)
        assert value is not None  # not optional
        return value

    def name(self, row: int, values: dict[str, str], column: str, seen: set[str], what: str) -> str:
        """A required name, unique in the file (``what``: "node", "pod")."""
        name = values[column].strip()
        if not name:
            raise self.fail(row, column, f"empty {what} name", values[column])
        if name in seen:
            raise self.fail(row, column, f"duplicate {what} name", name)
        seen.add(name)
        return name


def read_nodes(path: str | Path) -> list[TraceNode]:
    rows = _Rows(path, NODE_COLUMNS)
    seen: set[str] = set()
    out = []
    for r, row in rows.read():
        sn = rows.name(r, row, "sn", seen, "node")
        cpu = rows.count(r, row, "cpu_milli")
        memory = rows.count(r, row, "memory_mib")
        gpus = rows.count(r, row, "gpu")
        model = row["model"].strip()
        if gpus > 0 and not model:
            raise rows.fail(r, "model", "a node with GPUs needs its GPU model", row["model"])
        out.append(TraceNode(sn, cpu, memory * MIB, gpus, model if gpus > 0 else ""))
    return out


def read_pods(path: str | Path) -> list[TracePod]:
    rows = _Rows(path, POD_COLUMNS)
    seen: set[str] = set()
    out = []
    for r, row in rows.read():
        name = rows.name(r, row, "name", seen, "pod")
        cpu = rows.count(r, row, "cpu_milli")
        memory = rows.count(r, row, "memory_mib")
        gpus = rows.count(r, row, "num_gpu")
        milli = rows.count(r, row, "gpu_milli")
        created = rows.count(r, row, "creation_time")
        deleted = rows.whole(r, row, "deletion_time", optional=True)
        scheduled = rows.whole(r, row, "scheduled_time", optional=True)
        if gpus == 0 and milli != 0:
            raise rows.fail(r, "gpu_milli", "must be 0 for a pod with num_gpu 0", row["gpu_milli"])
        if gpus == 1 and not 0 < milli <= MILLI:
            raise rows.fail(r, "gpu_milli", "must be 1..1000 when num_gpu is 1", row["gpu_milli"])
        if gpus > 1 and milli != MILLI:
            raise rows.fail(
                r, "gpu_milli", "a multi-GPU pod takes whole GPUs (1000)", row["gpu_milli"]
            )
        spec_text = row["gpu_spec"].strip()
        spec = tuple(s.strip() for s in spec_text.split("|")) if spec_text else ()
        if any(not s for s in spec):
            raise rows.fail(r, "gpu_spec", "empty model in the list", spec_text)
        if deleted is not None and deleted < created:
            raise rows.fail(r, "deletion_time", "before creation_time", row["deletion_time"])
        if scheduled is not None and scheduled < created:
            raise rows.fail(r, "scheduled_time", "before creation_time", row["scheduled_time"])
        out.append(
            TracePod(
                name,
                PodRequest(cpu, memory * MIB, gpus, milli, spec if gpus else ()),
                row["qos"].strip(),
                row["pod_phase"].strip(),
                created,
                deleted,
                scheduled,
            )
        )
    return out


def node_specs(
    nodes: Sequence[TraceNode], table: GpuModelTable | None = None, fallback: str | None = None
) -> list[NodeSpec]:
    """Nodes for the placement core; GPU memory comes from the model table (``fallback`` names
    the table's model to use for labels it does not know, e.g. the trace's anonymised ``G2``)."""
    table = table or default_table()
    return [
        NodeSpec(
            n.sn,
            n.cpu_milli,
            n.memory_bytes,
            n.num_gpus,
            n.gpu_model,
            table.memory_bytes(n.gpu_model, fallback) if n.num_gpus else 0,
        )
        for n in nodes
    ]


def write_nodes(nodes: Sequence[TraceNode], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(NODE_COLUMNS)
        for n in nodes:
            w.writerow([n.sn, n.cpu_milli, n.memory_bytes // MIB, n.num_gpus, n.gpu_model])


def write_pods(pods: Sequence[TracePod], path: str | Path) -> None:
    def opt(value: int | None) -> str:
        return "" if value is None else str(value)

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(POD_COLUMNS)
        for p in pods:
            q = p.request
            w.writerow(
                [
                    p.name,
                    q.cpu_milli,
                    q.memory_bytes // MIB,
                    q.num_gpus,
                    q.gpu_milli,
                    "|".join(q.gpu_spec),
                    p.qos,
                    p.pod_phase,
                    p.creation_seconds,
                    opt(p.deletion_seconds),
                    opt(p.scheduled_seconds),
                ]
            )


# -- synthetic traces ------------------------------------------------------------------------
# Node kinds: (share of nodes, GPU label, GPUs per node, CPU milli-cores, memory GiB). Stated
# synthetic mix of a heterogeneous fleet, not measured.
NODE_KINDS: tuple[tuple[float, str, int, int, int], ...] = (
    (0.12, "", 0, 96_000, 384),
    (0.16, "V100M32", 8, 96_000, 512),
    (0.10, "V100M16", 8, 96_000, 384),
    (0.06, "P100", 2, 64_000, 256),
    (0.18, "T4", 2, 64_000, 256),
    (0.12, "A10", 1, 32_000, 128),
    (0.14, "A100", 8, 128_000, 1024),
    (0.06, "H100", 8, 192_000, 2048),
    (0.06, "RTX4090", 4, 64_000, 256),
)
# Shares a sharing pod asks for (milli) and their weights.
SHARE_MILLI = (100, 200, 250, 300, 400, 500, 600, 700, 750, 800, 900)
SHARE_WEIGHTS = (8, 8, 10, 6, 6, 20, 5, 5, 8, 4, 3)
# Kinds of pod: (weight, num_gpu); 0 = CPU-only, -1 = sharing.
POD_KINDS = ((0.12, 0), (0.40, -1), (0.33, 1), (0.08, 2), (0.05, 4), (0.02, 8))
CONSTRAINED_SHARE = 1 / 3  # of the pods that ask for GPUs
SPEC_CHOICES = (
    ("V100M16", "V100M32"),
    ("A100", "H100"),
    ("T4",),
    ("A10", "T4"),
    ("V100M32", "A100"),
    ("P100", "T4"),
    ("RTX4090",),
)


def generate_trace(
    num_nodes: int = 1000,
    num_pods: int = 8000,
    seed: int = 0,
    load: float = 0.9,
    constrained_share: float = CONSTRAINED_SHARE,
) -> tuple[list[TraceNode], list[TracePod]]:
    """A synthetic trace in the Alibaba format from the stated mixes above (seeded).

    Pods arrive as a Poisson process whose rate makes the GPU they ask for, times how long they
    run (log-normal, median 1 h, sigma 1.5, at most 30 days), ``load`` of the cluster's GPU
    capacity on average. ``constrained_share`` of the pods that ask for GPUs accept only some
    GPU models.

    Every pod fits on at least one node of the empty cluster: a constraint or a GPU count that
    no node kind can meet is redrawn.
    """
    if num_nodes <= 0 or num_pods < 0:
        raise ValueError("generate_trace: num_nodes must be positive and num_pods not negative")
    rng = random.Random(seed)
    nodes: list[TraceNode] = []
    weights = [k[0] for k in NODE_KINDS]
    for i in range(num_nodes):
        kind = NODE_KINDS[i % len(NODE_KINDS)] if i < len(NODE_KINDS) else None
        if kind is None:
            kind = rng.choices(NODE_KINDS, weights)[0]
        _, model, gpus, cpu, mem_gib = kind
        nodes.append(TraceNode(f"openb-node-{i:04d}", cpu, mem_gib * 2**30, gpus, model))
    max_gpus: dict[str, int] = {}
    gpus_of: dict[str, int] = {}
    for n in nodes:
        if n.num_gpus:
            max_gpus[n.gpu_model] = max(max_gpus.get(n.gpu_model, 0), n.num_gpus)
            gpus_of[n.gpu_model] = gpus_of.get(n.gpu_model, 0) + n.num_gpus
    biggest = max(max_gpus.values(), default=0)
    kinds = {(n.cpu_milli, n.memory_bytes, n.num_gpus, n.gpu_model) for n in nodes}
    requests = []
    for _ in range(num_pods):
        request = _draw_request(rng, biggest, max_gpus, gpus_of, constrained_share)
        while not _fits_empty(request, kinds):
            request = _draw_request(rng, biggest, max_gpus, gpus_of, constrained_share)
        requests.append(request)
    durations = [int(min(30 * 86400, 3600 * rng.lognormvariate(0.0, 1.5))) + 60 for _ in requests]
    gpu_seconds = sum(
        r.total_gpu_milli / MILLI * d for r, d in zip(requests, durations, strict=True)
    )
    capacity = sum(n.num_gpus for n in nodes) or 1
    mean_gap = gpu_seconds / max(1, num_pods) / (load * capacity)
    pods: list[TracePod] = []
    clock = 0
    for i, (request, duration) in enumerate(zip(requests, durations, strict=True)):
        clock += int(rng.expovariate(1 / max(mean_gap, 1e-9)))
        scheduled = clock + rng.randrange(0, 20)
        pods.append(
            TracePod(
                f"openb-pod-{i:05d}",
                request,
                "BE" if rng.random() < 0.3 else "LS",
                rng.choice(("Running", "Succeeded", "Succeeded", "Failed")),
                clock,
                scheduled + duration,
                scheduled,
            )
        )
    return nodes, pods


def _draw_request(
    rng: random.Random,
    biggest: int,
    max_gpus: dict[str, int],
    gpus_of: dict[str, int],
    constrained_share: float,
) -> PodRequest:
    num_gpus = rng.choices([k[1] for k in POD_KINDS], [k[0] for k in POD_KINDS])[0]
    if num_gpus > biggest:
        num_gpus = 0
    spec: tuple[str, ...] = ()
    if num_gpus == 0:
        milli, gpus = 0, 0
        cpu = rng.choice((1000, 2000, 4000, 8000, 16000))
    elif num_gpus == -1:
        milli, gpus = rng.choices(SHARE_MILLI, SHARE_WEIGHTS)[0], 1
        cpu = rng.choice((1000, 2000, 4000, 6000))
    else:
        milli, gpus = MILLI, num_gpus
        cpu = gpus * rng.choice((4000, 6000, 8000, 10000))
    if gpus and rng.random() < constrained_share:
        # a constraint is drawn in proportion to the GPUs it accepts (no pool is asked for more
        # than its share of the fleet)
        options = [s for s in SPEC_CHOICES if any(max_gpus.get(m, 0) >= gpus for m in s)]
        weights = [sum(gpus_of.get(m, 0) for m in s) for s in options]
        spec = rng.choices(options, weights)[0] if options else ()
    memory_mib = cpu // 1000 * rng.choice((2, 4, 8)) * 1024
    return PodRequest(cpu, memory_mib * MIB, gpus, milli, spec)


def _fits_empty(request: PodRequest, kinds: set[tuple[int, int, int, str]]) -> bool:
    return any(
        cpu >= request.cpu_milli
        and memory >= request.memory_bytes
        and gpus >= request.num_gpus
        and (request.num_gpus == 0 or not request.gpu_spec or model in request.gpu_spec)
        for cpu, memory, gpus, model in kinds
    )
