"""The table of GPU models: memory, peak figures and speed relative to a V100, with sources.

One home for "what is this GPU": the simulator, the predictor, the recommender and the share
placement all ask this table. It lives in two data files beside this module:

- ``gpu_models.csv``: one row per model (``model,aliases,memory_gib,fp16_tensor_tflops,
  memory_bandwidth_gb_per_s,speed_vs_v100,source``). ``speed_vs_v100`` is filled where it is
  measured (K80 and P100 from Gavel's throughputs; V100 is the reference); where it is empty the
  speed is *estimated* from the datasheet figures of the row (see ``estimated_speed``).
- ``gpu_family_speeds.csv``: measured speed per model family (``model,family,speed_vs_v100,
  source``), from Gavel, for the GPU models Gavel measured.

Names are matched after normalisation (case, spaces and punctuation ignored, a leading
``NVIDIA``/``Tesla``/``GeForce`` dropped), so NVML names such as ``"Tesla V100-SXM2-32GB"`` or
``"NVIDIA GeForce RTX 3090"`` resolve. An unknown model raises ``UnknownGpuModelError`` naming the
file to add it to; callers that let the user choose a fallback pass ``fallback=``.
"""

from __future__ import annotations

import csv
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
MODELS_CSV = Path(__file__).with_name("gpu_models.csv")
FAMILY_CSV = Path(__file__).with_name("gpu_family_speeds.csv")
REFERENCE_MODEL = "v100"
_PREFIXES = ("nvidia", "tesla", "geforce")


class UnknownGpuModelError(ValueError):
    """A GPU model the table does not know; the message names the file to add it to."""


class GpuTableError(ValueError):
    """The table file itself is malformed (names the file, line and column)."""


def normalise_gpu_name(name: str) -> str:
    """``"Tesla V100-SXM2-32GB"`` -> ``"v100sxm232gb"``; ``"RTX 3090"`` -> ``"rtx3090"``."""
    key = name.strip().lower()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :].lstrip(" -_")
                changed = True
    return re.sub(r"[^a-z0-9]", "", key)


@dataclass(frozen=True, slots=True)
class GpuModel:
    name: str
    aliases: tuple[str, ...]
    memory_bytes: int
    fp16_tensor_flops_per_second: float
    memory_bandwidth_bytes_per_second: float
    speed_vs_v100: float
    speed_basis: str  # "measured", "reference" or "estimated"
    source: str
    family_speed_vs_v100: dict[str, float] = field(default_factory=dict, hash=False)

    def speed(self, family: str | None = None) -> float:
        """Throughput relative to a V100: the measured figure for the family when there is one."""
        if family is not None and family in self.family_speed_vs_v100:
            return self.family_speed_vs_v100[family]
        return self.speed_vs_v100


def estimated_speed(
    fp16_tensor_flops_per_second: float,
    memory_bandwidth_bytes_per_second: float,
    reference: tuple[float, float],
) -> float:
    """Speed vs the reference GPU from datasheet peaks: the geometric mean of the ratio of dense
    FP16 tensor throughput and the ratio of memory bandwidth (training is partly compute-bound,
    partly memory-bound). A stated estimate, not a measurement; replace it with a measured
    ``speed_vs_v100`` in ``gpu_models.csv`` when you have one."""
    flops_ref, bandwidth_ref = reference
    return math.sqrt(
        (fp16_tensor_flops_per_second / flops_ref)
        * (memory_bandwidth_bytes_per_second / bandwidth_ref)
    )


class GpuModelTable:
    def __init__(self, models: list[GpuModel], path: Path = MODELS_CSV) -> None:
        self.path = path
        self.models = {m.name: m for m in models}
        self._by_key: dict[str, str] = {}
        for m in models:
            for alias in (m.name, *m.aliases):
                key = normalise_gpu_name(alias)
                other = self._by_key.get(key)
                if other is not None and other != m.name:
                    raise GpuTableError(f"{path}: name {alias!r} is used by {other} and {m.name}")
                self._by_key[key] = m.name

    def names(self) -> list[str]:
        return list(self.models)

    def find(self, name: str) -> GpuModel | None:
        key = self._by_key.get(normalise_gpu_name(name))
        return self.models[key] if key else None

    def lookup(self, name: str, fallback: str | None = None) -> GpuModel:
        """The model called ``name``; an unknown one is ``fallback`` (a model of the table) when
        given, else an ``UnknownGpuModelError`` that says which file to add it to."""
        found = self.find(name)
        if found is not None:
            return found
        if fallback is not None:
            chosen = self.find(fallback)
            if chosen is None:
                raise UnknownGpuModelError(
                    f"fallback GPU model {fallback!r} is not in the table either "
                    f"(known: {', '.join(self.names())})"
                )
            return chosen
        raise UnknownGpuModelError(
            f"unknown GPU model {name!r}: add a row for it to {self.path} "
            f"(memory_gib, fp16_tensor_tflops, memory_bandwidth_gb_per_s and a source), "
            f"or choose a fallback model; known: {', '.join(self.names())}"
        )

    def memory_bytes(self, name: str, fallback: str | None = None) -> int:
        return self.lookup(name, fallback).memory_bytes

    def speed(self, name: str, family: str | None = None, fallback: str | None = None) -> float:
        return self.lookup(name, fallback).speed(family)


def _number(path: Path, line: int, column: str, text: str, *, allow_empty: bool = False) -> float:
    if allow_empty and not text.strip():
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise GpuTableError(f"{path}:{line}: column {column!r}: not a number: {text!r}") from None
    if not value > 0:
        raise GpuTableError(f"{path}:{line}: column {column!r}: must be positive, got {text!r}")
    return value


MODEL_COLUMNS = (
    "model",
    "aliases",
    "memory_gib",
    "fp16_tensor_tflops",
    "memory_bandwidth_gb_per_s",
    "speed_vs_v100",
    "source",
)


def load_table(path: Path = MODELS_CSV, family_path: Path | None = FAMILY_CSV) -> GpuModelTable:
    """Read the model table (and the per-family speeds); errors name the file, line and column."""
    rows: list[tuple[int, dict[str, str]]] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MODEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise GpuTableError(f"{path}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            if not (row["model"] or "").strip():
                raise GpuTableError(f"{path}:{line}: column 'model' is empty")
            if not (row["source"] or "").strip():
                raise GpuTableError(
                    f"{path}:{line}: column 'source': say where the numbers come from"
                )
            rows.append((line, row))
    families: dict[str, dict[str, float]] = {}
    if family_path is not None:
        with open(family_path, newline="") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                speed = _number(family_path, line, "speed_vs_v100", row["speed_vs_v100"])
                families.setdefault(normalise_gpu_name(row["model"]), {})[row["family"]] = speed
    parsed = []
    for line, row in rows:
        parsed.append(
            (
                line,
                row,
                _number(path, line, "memory_gib", row["memory_gib"]),
                _number(path, line, "fp16_tensor_tflops", row["fp16_tensor_tflops"]) * 1e12,
                _number(path, line, "memory_bandwidth_gb_per_s", row["memory_bandwidth_gb_per_s"])
                * 1e9,
                _number(path, line, "speed_vs_v100", row["speed_vs_v100"], allow_empty=True),
            )
        )
    reference = [p for p in parsed if normalise_gpu_name(p[1]["model"]) == REFERENCE_MODEL]
    if not reference:
        raise GpuTableError(f"{path}: the reference model {REFERENCE_MODEL!r} must have a row")
    ref_flops, ref_bandwidth = reference[0][3], reference[0][4]
    models = []
    for _line, row, memory_gib, flops, bandwidth, speed in parsed:
        name = row["model"].strip().lower()
        if math.isnan(speed):
            speed, basis = (
                estimated_speed(flops, bandwidth, (ref_flops, ref_bandwidth)),
                "estimated",
            )
        else:
            basis = "reference" if row["source"].startswith("reference") else "measured"
        models.append(
            GpuModel(
                name=name,
                aliases=tuple(a.strip() for a in row["aliases"].split("|") if a.strip()),
                memory_bytes=int(memory_gib * GIB),
                fp16_tensor_flops_per_second=flops,
                memory_bandwidth_bytes_per_second=bandwidth,
                speed_vs_v100=round(speed, 3),
                speed_basis=basis,
                source=row["source"].strip(),
                family_speed_vs_v100=families.get(normalise_gpu_name(name), {}),
            )
        )
    return GpuModelTable(models, path)


@functools.cache
def default_table() -> GpuModelTable:
    """The packaged table (read once per process)."""
    return load_table()
