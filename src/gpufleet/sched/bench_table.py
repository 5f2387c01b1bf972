"""The benchmark table the predictor learns from:
``gpu_model,model,colocated,step_time_s[,gpu_mem_mib]`` -- one measured run per row; ``colocated``
is a ``|``-separated list of the models sharing the GPU (empty: the GPU to itself)."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

REQUIRED_COLUMNS = ("gpu_model", "model", "colocated", "step_time_s")
COLUMNS = (*REQUIRED_COLUMNS, "gpu_mem_mib")


@dataclass(frozen=True, slots=True)
class BenchRow:
    gpu_model: str
    model: str
    colocated: tuple[str, ...]
    step_time_s: float
    gpu_mem_mib: float | None = None


class BenchTableError(ValueError):
    pass


def parse_bench_csv(text: str, source: str = "<bench>") -> list[BenchRow]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BenchTableError(
            f"{source}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
        )
    rows: list[BenchRow] = []
    for line, raw in enumerate(reader, start=2):
        gpu_model = (raw["gpu_model"] or "").strip().lower()
        model = (raw["model"] or "").strip()
        if not gpu_model:
            raise BenchTableError(f"{source}:{line}: gpu_model: must not be empty")
        if not model:
            raise BenchTableError(f"{source}:{line}: model: must not be empty")
        try:
            step = float(raw["step_time_s"])
        except (TypeError, ValueError):
            raise BenchTableError(
                f"{source}:{line}: step_time_s: must be a positive number, "
                f"got {raw['step_time_s']!r}"
            ) from None
        if not (step > 0 and math.isfinite(step)):
            raise BenchTableError(
                f"{source}:{line}: step_time_s: must be a positive number, "
                f"got {raw['step_time_s']!r}"
            )
        mem_text = (raw.get("gpu_mem_mib") or "").strip()
        mem = None
        if mem_text:
            try:
                mem = float(mem_text)
            except ValueError:
                raise BenchTableError(
                    f"{source}:{line}: gpu_mem_mib: must be a number, got {mem_text!r}"
                ) from None
        colocated = tuple(p.strip() for p in (raw["colocated"] or "").split("|") if p.strip())
        rows.append(BenchRow(gpu_model, model, colocated, step, mem))
    return rows


def read_bench(path: str | Path) -> list[BenchRow]:
    return parse_bench_csv(Path(path).read_text(), str(path))


def write_bench(rows: list[dict[str, str]], fh: io.TextIOBase | io.StringIO) -> None:
    writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)


_NAME_RE = re.compile(r"^(?P<family>.+?)\s*(\(batch size (?P<batch>\d+)\))?(\s+x(?P<scale>\d+))?$")


def model_features(model: str) -> tuple[str, int, int]:
    """``"ResNet-50 (batch size 64) x4"`` -> ``("ResNet-50", 64, 4)``; unknown parts: 0 / 1."""
    match = _NAME_RE.match(model.strip())
    if not match:
        return model, 0, 1
    return match["family"].strip(), int(match["batch"] or 0), int(match["scale"] or 1)
