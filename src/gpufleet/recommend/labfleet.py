"""The simulated lab's servers for the recommender's evaluation: stated shapes and lab groups,
drawn from a seed (plain data, no I/O). Kept here, not borrowed from the demo, so the
evaluation depends on nothing above the recommender (CONVENTIONS.md, layering)."""

from __future__ import annotations

import random
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True, slots=True)
class LabShape:
    label: str  # short, for host names
    gpu_name: str  # as NVML reports it
    gpu_count: int
    gpu_memory_bytes: int
    cpu_count: int
    disk_free_bytes: int
    weight: float  # share of the fleet


SHAPES: tuple[LabShape, ...] = (
    LabShape("a100", "NVIDIA A100-SXM4-80GB", 8, 80 * GIB, 256, 15 * 10**12, 0.25),
    LabShape("v100", "Tesla V100-SXM2-32GB", 8, 32 * GIB, 80, 8 * 10**12, 0.30),
    LabShape("rtx3090", "NVIDIA GeForce RTX 3090", 4, 24 * GIB, 64, 4 * 10**12, 0.20),
    LabShape("t4", "Tesla T4", 4, 15 * GIB, 48, 2 * 10**12, 0.15),
    LabShape("a100pcie", "NVIDIA A100-PCIE-40GB", 4, 40 * GIB, 128, 8 * 10**12, 0.10),
)
GROUPS: tuple[tuple[str, float], ...] = (
    ("vision", 0.30), ("nlp", 0.30), ("speech", 0.12), ("rl", 0.10), ("shared", 0.18),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LabHost:
    index: int
    name: str
    group: str
    shape: LabShape

    @property
    def gpu_count(self) -> int:
        return self.shape.gpu_count


def _apportion(n: int, weights: list[float]) -> list[int]:
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True):
        if sum(counts) >= n:
            break
        counts[i] += 1
    return counts


def build_lab(n_hosts: int, seed: int = 0) -> list[LabHost]:
    """``n_hosts`` servers of mixed shapes in lab groups; the same seed gives the same lab."""
    if n_hosts < 2:
        raise ValueError("the lab needs at least two hosts")
    rng = random.Random(f"lab:{seed}")
    shapes = [s for s, c in zip(SHAPES, _apportion(n_hosts, [s.weight for s in SHAPES]),
                                strict=True) for _ in range(c)]  # fmt: skip
    rng.shuffle(shapes)
    groups = [g for (g, _), c in zip(GROUPS, _apportion(n_hosts, [w for _, w in GROUPS]),
                                     strict=True) for _ in range(c)]  # fmt: skip
    numbers: dict[tuple[str, str], int] = {}
    out = []
    for i, (shape, group) in enumerate(zip(shapes, groups, strict=True)):
        key = (group, shape.label)
        numbers[key] = numbers.get(key, 0) + 1
        out.append(LabHost(i, f"{group}-{shape.label}-{numbers[key]:02d}", group, shape))
    return out


def group_names() -> list[str]:
    return [g for g, _ in GROUPS]


def group_weights() -> list[float]:
    return [w for _, w in GROUPS]
