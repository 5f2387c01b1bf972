"""Gavel's measured throughput table (Narayanan et al., OSDI'20, MIT licence) and its conversion
into gpufleet's benchmark table (``gpu_model,model,colocated,step_time_s[,gpu_mem_mib]``).

Keys in the JSON look like ``"('ResNet-50 (batch size 64)', 1)"``: a job type and its GPU count.
``"null"`` is the job alone; any other key is the job sharing one GPU with that other job type and
maps to ``[own steps/s, other steps/s]``. A throughput of 0 means the run was not possible.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.sched.bench_table import BenchRow

GAVEL_GPU_MODELS = ("k80", "p100", "v100")
GAVEL_SCALES = (1, 2, 4, 8)


@dataclass
class GavelTable:
    """Throughputs in steps per second, indexed by GPU model, job type and GPU count (scale)."""

    alone_steps_per_second: dict[tuple[str, str, int], float] = field(default_factory=dict)
    # (gpu_model, own type, other type) -> own steps/s while sharing one GPU (scale 1 only)
    paired_steps_per_second: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def job_types(self, scale: int) -> list[str]:
        """Job types measured at this GPU count on every Gavel GPU model (v100 at least)."""
        return sorted(
            {
                t
                for (g, t, s), tput in self.alone_steps_per_second.items()
                if s == scale and g == "v100" and tput > 0
            }
        )

    def gpu_models(self) -> list[str]:
        return sorted({g for g, _, _ in self.alone_steps_per_second})

    def speed_ratio(self, gpu_model: str, job_type: str, scale: int) -> float:
        """Throughput on ``gpu_model`` divided by throughput on a V100 (0 when it cannot run)."""
        v100 = self.alone_steps_per_second.get(("v100", job_type, scale), 0.0)
        other = self.alone_steps_per_second.get((gpu_model, job_type, scale), 0.0)
        return other / v100 if v100 > 0 else 0.0

    def colocation_factor(self, gpu_model: str, job_type: str, other_type: str) -> float | None:
        """Fraction of its alone speed a 1-GPU job keeps when sharing a GPU (None: not measured)."""
        alone = self.alone_steps_per_second.get((gpu_model, job_type, 1), 0.0)
        paired = self.paired_steps_per_second.get((gpu_model, job_type, other_type), 0.0)
        if alone <= 0 or paired <= 0:
            return None
        return paired / alone


def _parse_key(key: str) -> tuple[str, int]:
    name, scale = ast.literal_eval(key)
    return str(name), int(scale)


# Gavel's measured throughputs (stanford-futuredata/gavel, scheduler/simulation_throughputs.json;
# Narayanan et al., OSDI'20; MIT licence), gzip-compressed, shipped so that ``gpufleet simulate``
# works from a plain clone and with any trace; the same bytes as the project's data folder holds.
PACKAGED_GAVEL = Path(__file__).with_name("gavel_throughputs.json.gz")


def load_gavel(path: str | Path = PACKAGED_GAVEL) -> GavelTable:
    """Read ``gavel_throughputs.json`` (plain or ``.gz``); only the consolidated k80/p100/v100
    tables are used. Default: the copy shipped with gpufleet."""
    data = Path(path).read_bytes()
    raw = json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    table = GavelTable()
    for gpu_model in GAVEL_GPU_MODELS:
        for key, entry in raw.get(gpu_model, {}).items():
            job_type, scale = _parse_key(key)
            table.alone_steps_per_second[(gpu_model, job_type, scale)] = float(entry["null"])
            if scale != 1:
                continue
            for other_key, pair in entry.items():
                if other_key == "null":
                    continue
                other_type, other_scale = _parse_key(other_key)
                if other_scale == 1 and float(pair[0]) > 0:
                    table.paired_steps_per_second[(gpu_model, job_type, other_type)] = float(
                        pair[0]
                    )
    return table


def bench_model_name(job_type: str, scale: int) -> str:
    """The ``model`` column for a Gavel job type: ``"ResNet-50 (batch size 64)"`` or ``"... x4"``."""
    return job_type if scale == 1 else f"{job_type} x{scale}"


_FAMILY_MEMORY_GIB = {
    # family: (fixed GiB, GiB per sample of batch) -- a stated synthetic profile, not measured
    "ResNet-18": (1.5, 0.045),
    "ResNet-50": (2.5, 0.11),
    "Transformer": (2.0, 0.06),
    "LM": (1.5, 0.15),
    "Recommendation": (1.0, 0.0012),
    "A3C": (1.2, 0.0),
    "CycleGAN": (4.5, 0.0),
}

_BATCH_RE = re.compile(r"^(?P<family>[^(]+?)\s*(\(batch size (?P<batch>\d+)\))?$")


def split_job_type(job_type: str) -> tuple[str, int]:
    """``"ResNet-50 (batch size 64)"`` -> ``("ResNet-50", 64)``; no batch size gives 0."""
    match = _BATCH_RE.match(job_type.strip())
    if not match:
        return job_type, 0
    return match["family"].strip(), int(match["batch"] or 0)


def synthetic_memory_bytes(job_type: str) -> int:
    """Per-GPU memory of a job type under gpufleet's stated synthetic profile (Gavel has none)."""
    family, batch = split_job_type(
        job_type.removesuffix(" x2").removesuffix(" x4").removesuffix(" x8")
    )
    fixed, per_sample = _FAMILY_MEMORY_GIB.get(family, (4.0, 0.0))
    return int((fixed + per_sample * batch) * 2**30)


def bench_rows(table: GavelTable, with_synthetic_memory: bool = True) -> list[BenchRow]:
    """``to_bench_rows`` as the predictor's rows (what the simulator and the bench train on)."""
    return [
        BenchRow(
            r["gpu_model"],
            r["model"],
            tuple(filter(None, r["colocated"].split("|"))),
            float(r["step_time_s"]),
            float(r["gpu_mem_mib"]) if r["gpu_mem_mib"] else None,
        )
        for r in to_bench_rows(table, with_synthetic_memory=with_synthetic_memory)
    ]


def to_bench_rows(table: GavelTable, with_synthetic_memory: bool = False) -> list[dict[str, str]]:
    """Rows of the benchmark table; runs with zero throughput (not possible) are left out."""
    rows: list[dict[str, str]] = []
    for (gpu_model, job_type, scale), tput in sorted(table.alone_steps_per_second.items()):
        if tput <= 0:
            continue
        model = bench_model_name(job_type, scale)
        mem = ""
        if with_synthetic_memory:
            mem = str(synthetic_memory_bytes(job_type) // 2**20)
        rows.append(
            {
                "gpu_model": gpu_model,
                "model": model,
                "colocated": "",
                "step_time_s": f"{1.0 / tput:.6g}",
                "gpu_mem_mib": mem,
            }
        )
    for (gpu_model, job_type, other), tput in sorted(table.paired_steps_per_second.items()):
        rows.append(
            {
                "gpu_model": gpu_model,
                "model": job_type,
                "colocated": other,
                "step_time_s": f"{1.0 / tput:.6g}",
                "gpu_mem_mib": "",
            }
        )
    return rows
