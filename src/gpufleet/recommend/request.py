"""The request: what a researcher asks for, validated (alone, and against the fleet).

Validation against the fleet uses pydantic's validation context::

    RecommendRequest.model_validate(body, context={"fleet": snapshot})

so an unknown GPU model or a size no GPU has fails with the field's path
(``gpu_models[1]: ...``), the same shape as every other 422 of the API.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gpufleet.recommend.fleet import GIB, FleetSnap
from gpufleet.recommend.speeds import gpu_class, known_models, model_family

MAX_HOURS = 24 * 90
RENAMED = {  # the earlier names, refused with a message that says what to send instead
    "gpu_mem_gb": "renamed to gpu_mem_gib (the same number: it was GiB already)",
    "data_gb": "renamed to data_gib, in GiB (2^30 bytes; data_gb was 10^9 bytes)",
}


class RecommendRequest(BaseModel):
    """Sizes are in GiB (2^30 bytes), the unit GPU makers mean by "GB" for memory: an "80GB"
    A100 has ``gpu_mem_gib`` 80. ``data_gib`` is in GiB too, one unit for the whole request.
    The earlier names (``gpu_mem_gb``, ``data_gb``) are refused with a message that names
    the new field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: Annotated[int, Field(ge=1, le=512, description="how many GPUs")]
    gpu_mem_gib: Annotated[
        float, Field(gt=0, le=4096, description="GPU memory per GPU, GiB (2^30 bytes)")
    ]
    hours: Annotated[float, Field(gt=0, le=MAX_HOURS, description="expected run time")]
    gpu_models: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]],
        Field(max_length=32, description="acceptable GPU models (any of; e.g. A100, V100)"),
    ] = []
    model: Annotated[
        str | None, Field(max_length=64, description="model type, e.g. resnet50, bert, lstm")
    ] = None
    data_gib: Annotated[
        float, Field(ge=0, le=1e7, description="data set size, GiB (2^30 bytes)")
    ] = 0.0
    data_host: Annotated[
        str | None, Field(max_length=253, description="host the data is on now")
    ] = None
    multi_host: Annotated[
        bool, Field(strict=True, description="may the GPUs span several hosts")
    ] = False
    limit: Annotated[int, Field(ge=1, le=50, description="how many answers")] = 5

    @field_validator("gpus", "gpu_mem_gib", "hours", "data_gib", "limit", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # JSON true is not 1
            raise ValueError(f"expected a number, not {str(v).lower()}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        if model_family(v) is None:
            raise ValueError(f"unknown model type {v!r}; known: {', '.join(known_models())}")
        return v

    @field_validator("data_host")
    @classmethod
    def _blank_host(cls, v: str | None) -> str | None:
        return v or None

    @property
    def family(self) -> str | None:
        return model_family(self.model) if self.model else None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, why in RENAMED.items():
                if old in data:
                    raise ValueError(f"{old}: {why}")
        return data

    @property
    def gpu_mem_bytes(self) -> int:
        return int(self.gpu_mem_gib * GIB)

    @property
    def data_bytes(self) -> int:
        return int(self.data_gib * GIB)

    @model_validator(mode="after")
    def _against_fleet(self, info: ValidationInfo) -> RecommendRequest:
        fleet = (info.context or {}).get("fleet") if info is not None else None
        if isinstance(fleet, FleetSnap):
            check_against_fleet(self, fleet)
        return self


def upgrade_stored(body: dict[str, Any]) -> dict[str, Any]:
    """A request saved under the earlier names (``recommend.sqlite3``) in today's names: ``gpu_mem_gb`` was
    already GiB; ``data_gb`` was 10^9 bytes."""
    out = dict(body)
    if "gpu_mem_gb" in out:
        out.setdefault("gpu_mem_gib", out.pop("gpu_mem_gb"))
    if "data_gb" in out:
        old = out.pop("data_gb")
        if isinstance(old, int | float) and not isinstance(old, bool):
            out.setdefault("data_gib", old * 10**9 / GIB)
    return out


@lru_cache(maxsize=4096)
def gpu_model_matches(pattern: str, gpu_name: str) -> bool:
    """``A100`` matches ``NVIDIA A100-SXM4-80GB``; case and punctuation do not matter."""
    p = re.sub(r"[^a-z0-9]", "", pattern.lower())
    n = re.sub(r"[^a-z0-9]", "", gpu_name.lower())
    if p and p in n:
        return True
    cls = gpu_class(pattern)
    return cls is not None and cls == gpu_class(gpu_name)


def check_against_fleet(req: RecommendRequest, fleet: FleetSnap) -> None:
    """Raise ``ValueError("field: message")`` when the request names what the fleet lacks."""
    if not fleet.hosts:
        raise ValueError("gpus: the fleet has no hosts yet; start agents first")
    names = sorted(fleet.gpu_names())
    for i, pattern in enumerate(req.gpu_models):
        if not any(gpu_model_matches(pattern, n) for n in names):
            raise ValueError(
                f"gpu_models[{i}]: no GPU in the fleet is a {pattern!r};"
                f" the fleet has: {', '.join(names) or 'none'}"
            )
    shapes = fleet.shapes
    largest = max(
        (mem or 0 for kinds in shapes.values() for (name, mem) in kinds if _model_ok(req, name)),
        default=0,
    )
    if req.gpu_mem_bytes > largest:
        raise ValueError(
            f"gpu_mem_gib: {req.gpu_mem_gib:g} GiB is more than the largest"
            f"{' matching' if req.gpu_models else ''} GPU in the fleet ({largest / GIB:.0f} GiB)"
        )
    usable = max(
        (mem - fleet.floor_used.get((name, mem), 0)
         for kinds in shapes.values() for (name, mem) in kinds
         if mem and _model_ok(req, name)),
        default=0,
    )  # fmt: skip
    if req.gpu_mem_bytes > usable:
        raise ValueError(
            f"gpu_mem_gib: {req.gpu_mem_gib:g} GiB can never fit: the most any"
            f"{' matching' if req.gpu_models else ''} GPU in the fleet has unused is"
            f" {usable / GIB:.1f} GiB (the driver and context always hold some of the card)"
        )
    if req.data_host is not None and req.data_host not in shapes:
        raise ValueError(f"data_host: no host named {req.data_host!r} in the fleet")
    big_enough = [
        sum(
            c
            for (name, mem), c in kinds.items()
            if _model_ok(req, name) and _fits(req, mem, fleet.floor_used.get((name, mem), 0))
        )
        for kinds in shapes.values()
    ]
    room = sum(big_enough) if req.multi_host else max(big_enough, default=0)
    if req.gpus > room:
        where = "in the whole fleet" if req.multi_host else "on any one host"
        hint = "" if req.multi_host else " (set multi_host to allow several hosts)"
        raise ValueError(
            f"gpus: {req.gpus} GPUs of {req.gpu_mem_gib:g} GiB can never fit: at most {room}"
            f" such GPUs {where}{hint}"
        )


def model_matches(req: RecommendRequest, gpu_name: str) -> bool:
    """The GPU model is one the request accepts (any, when it names none)."""
    return _model_ok(req, gpu_name)


def _model_ok(req: RecommendRequest, gpu_name: str) -> bool:
    return not req.gpu_models or any(gpu_model_matches(p, gpu_name) for p in req.gpu_models)


def _fits(req: RecommendRequest, total: int | None, floor: int = 0) -> bool:
    return total is not None and total - floor >= req.gpu_mem_bytes


def request_from_any(body: Any, fleet: FleetSnap | None) -> RecommendRequest:
    return RecommendRequest.model_validate(body, context={"fleet": fleet})
