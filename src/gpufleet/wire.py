"""The one wire schema shared by the agent, the SSH poller, the replay fleet and the server.

Every quantity carries its base unit in its name (bytes, watts, celsius, hertz, seconds,
percent). A metric a GPU or host cannot report is ``None`` ("not available"), never an
invented zero. Timestamps are Unix seconds (float, UTC).

A *batch* is what one agent sends in one request: an id that makes re-sends idempotent, who
sent it, and one or more *samples* (one collection round each).
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

WIRE_VERSION: Literal[1] = 1

# Bounds that keep one request small and a typo from poisoning the store.
MAX_SAMPLES_PER_BATCH = 720  # one hour at 5 s
MAX_GPUS_PER_HOST = 64
MAX_PROCESSES_PER_HOST = 4096
MAX_DISKS_PER_HOST = 256
MAX_BATCH_BYTES = 8 * 1024 * 1024

HOST_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
BATCH_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$"

NonNegInt = Annotated[int, Strict(), Field(ge=0, le=2**63 - 1)]
Bytes = Annotated[int, Strict(), Field(ge=0, le=2**62)]
Percent = Annotated[float, Strict(), Field(ge=0, le=100)]
Seconds = Annotated[float, Strict(), Field(ge=0, le=1e10)]
Timestamp = Annotated[
    float, Strict(), Field(ge=946684800, le=4102444800)
]  # 2000-01-01 .. 2100-01-01
ShortText = Annotated[str, Field(max_length=256)]
CommandText = Annotated[str, Field(max_length=1024)]


class _Model(BaseModel):
    # NaN and infinities are not numbers a sensor reports: reject them at the door. Numbers
    # are strict (Strict() on every numeric type above): no `false` or `22.0` for an
    # integer, no `true` for a number; an integer is a fine number.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Disk(_Model):
    mount: ShortText
    device: ShortText = ""
    fstype: ShortText = ""
    total_bytes: Bytes
    used_bytes: Bytes


class HostMetrics(_Model):
    cpu_percent: Percent | None = None
    cpu_count: Annotated[int, Strict(), Field(ge=1, le=65536)] | None = None
    load1: Annotated[float, Strict(), Field(ge=0, le=1e6)] | None = None
    load5: Annotated[float, Strict(), Field(ge=0, le=1e6)] | None = None
    load15: Annotated[float, Strict(), Field(ge=0, le=1e6)] | None = None
    memory_total_bytes: Bytes | None = None
    memory_used_bytes: Bytes | None = None
    memory_available_bytes: Bytes | None = None
    swap_total_bytes: Bytes | None = None
    swap_used_bytes: Bytes | None = None
    disks: Annotated[list[Disk], Field(max_length=MAX_DISKS_PER_HOST)] = []
    net_rx_bytes_per_second: Annotated[float, Strict(), Field(ge=0, le=1e13)] | None = None
    net_tx_bytes_per_second: Annotated[float, Strict(), Field(ge=0, le=1e13)] | None = None
    uptime_seconds: Seconds | None = None
    users: Annotated[list[ShortText], Field(max_length=1024)] = []


class XidEvent(_Model):
    xid: Annotated[int, Strict(), Field(ge=0, le=1_000_000)]
    ts: Timestamp


class Gpu(_Model):
    index: Annotated[int, Strict(), Field(ge=0, lt=MAX_GPUS_PER_HOST)]
    uuid: ShortText = ""
    name: ShortText = ""
    utilization_gpu_percent: Percent | None = None
    utilization_memory_percent: Percent | None = None
    memory_used_bytes: Bytes | None = None
    memory_total_bytes: Bytes | None = None
    temperature_celsius: Annotated[float, Strict(), Field(ge=-50, le=200)] | None = None
    power_watts: Annotated[float, Strict(), Field(ge=0, le=10_000)] | None = None
    power_limit_watts: Annotated[float, Strict(), Field(ge=0, le=10_000)] | None = None
    fan_percent: Percent | None = None
    sm_clock_hertz: Annotated[float, Strict(), Field(ge=0, le=1e11)] | None = None
    pstate: Annotated[int, Strict(), Field(ge=0, le=32)] | None = None
    ecc_uncorrected_volatile: NonNegInt | None = None
    xid_events: Annotated[list[XidEvent], Field(max_length=1024)] = []
    # Set when NVML failed for this GPU: the GPU is reported as erroring, not dropped.
    error: Annotated[str, Field(max_length=1024)] | None = None


class GpuProcess(_Model):
    pid: Annotated[int, Strict(), Field(ge=0, le=2**31)]
    gpu_index: Annotated[int, Strict(), Field(ge=0, lt=MAX_GPUS_PER_HOST)]
    gpu_uuid: ShortText = ""
    user: ShortText | None = None
    uid: Annotated[int, Strict(), Field(ge=0, le=2**32)] | None = None
    command: CommandText = ""
    started_at: Timestamp | None = None
    gpu_memory_bytes: Bytes | None = None
    container_id: ShortText | None = None
    container_name: ShortText | None = None
    container_runtime: (
        Literal["docker", "containerd", "podman", "cri-o", "kubepods", "lxc"] | None
    ) = None


class HostFacts(_Model):
    """Slow-changing facts about a host, sent with every sample (they are small)."""

    hostname: ShortText = ""
    os: ShortText = ""
    kernel: ShortText = ""
    cpu_model: ShortText = ""
    cpu_count: Annotated[int, Strict(), Field(ge=0, le=65536)] | None = None
    memory_total_bytes: Bytes | None = None
    driver_version: ShortText | None = None
    cuda_version: ShortText | None = None
    nvml_version: ShortText | None = None
    agent_version: ShortText = ""
    boot_time: Timestamp | None = None


class Sample(_Model):
    """One collection round of one host."""

    host: Annotated[str, Field(pattern=HOST_NAME_RE)]
    ts: Timestamp
    interval_seconds: Annotated[float, Strict(), Field(gt=0, le=86400)] = 5.0
    host_metrics: HostMetrics = HostMetrics()
    gpus: Annotated[list[Gpu], Field(max_length=MAX_GPUS_PER_HOST)] = []
    processes: Annotated[list[GpuProcess], Field(max_length=MAX_PROCESSES_PER_HOST)] = []
    facts: HostFacts = HostFacts()
    # Host-level collection problems ("NVML: driver not loaded", "nvidia-smi timed out").
    errors: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] = []

    @field_validator("gpus")
    @classmethod
    def _unique_gpu_index(cls, gpus: list[Gpu]) -> list[Gpu]:
        seen: set[int] = set()
        for gpu in gpus:
            if gpu.index in seen:
                raise ValueError(f"GPU index {gpu.index} appears twice")
            seen.add(gpu.index)
        return gpus

    @model_validator(mode="after")
    def _processes_on_known_gpus(self) -> Sample:
        indices = {g.index for g in self.gpus}
        for i, proc in enumerate(self.processes):
            if proc.gpu_index not in indices:
                raise ValueError(
                    f"processes[{i}].gpu_index: GPU {proc.gpu_index} is not in this sample's gpus"
                )
        return self


Source = Literal["agent", "ssh", "replay"]


class Batch(_Model):
    """What one agent sends in one request. ``batch_id`` makes re-sends idempotent."""

    wire_version: Literal[1] = WIRE_VERSION
    batch_id: Annotated[str, Field(pattern=BATCH_ID_RE)]
    source: Source = "agent"
    agent_version: ShortText = ""
    sent_at: Timestamp
    samples: Annotated[list[Sample], Field(min_length=1, max_length=MAX_SAMPLES_PER_BATCH)]

    @model_validator(mode="after")
    def _samples_not_after_send(self) -> Batch:
        for i, sample in enumerate(self.samples):
            if sample.ts > self.sent_at + 5:
                raise ValueError(
                    f"samples[{i}].ts: {sample.ts} is later than sent_at ({self.sent_at});"
                    " a sample cannot be collected after its batch was sent"
                )
        return self


def _trusted_schema(tp: Any) -> cs.CoreSchema:
    """The core schema of one field's type for ``trusted_batch``: models and lists of models
    built, JSON integers made floats where the field is a float, everything else as is."""
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return cs.any_schema()
            optional, tp = True, args[0]
        else:
            break
    schema: cs.CoreSchema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = {}
        for name, info in tp.model_fields.items():
            field = _trusted_schema(info.annotation)
            if not info.is_required():
                default = info.default
                if isinstance(default, list | BaseModel):  # a fresh one per instance
                    factory = list if isinstance(default, list) else type(default)
                    field = cs.with_default_schema(field, default_factory=factory)
                else:
                    field = cs.with_default_schema(field, default=default)
            fields[name] = cs.model_field(field)
        schema = cs.model_schema(tp, cs.model_fields_schema(fields))
    elif typing.get_origin(tp) is list:
        schema = cs.list_schema(_trusted_schema(typing.get_args(tp)[0]))
    elif tp is float:
        schema = cs.float_schema()
    else:
        schema = cs.any_schema()
    return cs.nullable_schema(schema) if optional else schema


def _trusted_validator() -> SchemaValidator:
    """``trusted_batch``'s validator. pydantic-core reuses a complete model's own validator
    (its bounds and rules) for a model schema of that class, which is just what this one must
    not do, so the classes read as incomplete while it is built (tests/test_wire.py checks
    that it checks nothing)."""
    models = [Batch, Sample, HostMetrics, Disk, Gpu, XidEvent, GpuProcess, HostFacts]
    for model in models:
        model.__pydantic_complete__ = False  # type: ignore[attr-defined]
    try:
        return SchemaValidator(_trusted_schema(Batch))
    finally:
        for model in models:
            model.__pydantic_complete__ = True  # type: ignore[attr-defined]


_TRUSTED = _trusted_validator()


def trusted_batch(data: bytes) -> Batch:
    """A batch that was validated before, read back from this server's own logs (the ingest
    log, an ingest worker's log): the same ``Batch`` as ``Batch.model_validate_json`` gives,
    built from the same models without checking it again (no bounds, patterns or
    cross-field rules), which is most of what validation costs. Never for a body from the
    network. Falls back to full validation if the data does not fit the models (a log
    written by another version); raises ``ValueError`` (pydantic's ``ValidationError``) if
    that fails too."""
    try:
        return _TRUSTED.validate_json(data)  # type: ignore[no-any-return]
    except ValueError:
        return Batch.model_validate_json(data)


class IngestAck(BaseModel):
    batch_id: str
    status: Literal["stored", "duplicate"]
    samples: int
    clock_skew_seconds: float
    warnings: list[str] = []


def future_timestamps(batch: Batch, now: float, max_future_seconds: float) -> list[dict]:
    """Where a batch is dated more than ``max_future_seconds`` after ``now`` (the receiver's
    clock): ``sent_at``, a sample's ``ts``, an XID event's or a process's time. Each as
    ``{"loc", "msg", "type"}`` (the API's error details); empty when all is well."""
    limit = now + max_future_seconds
    out: list[dict] = []

    def check(loc: str, ts: float | None) -> None:
        if ts is not None and ts > limit:
            out.append({
                "loc": loc, "type": "future_timestamp",
                "msg": f"{ts:.0f} is {ts - now:,.0f} s after the server's clock (more than "
                f"the {max_future_seconds:g} s ingest.max_future_seconds allows); fix the "
                "agent's clock (NTP)",
            })  # fmt: skip

    check("sent_at", batch.sent_at)
    for i, smp in enumerate(batch.samples):
        check(f"samples[{i}].ts", smp.ts)
        for g, gpu in enumerate(smp.gpus):
            for k, ev in enumerate(gpu.xid_events):
                check(f"samples[{i}].gpus[{g}].xid_events[{k}].ts", ev.ts)
        for k, proc in enumerate(smp.processes):
            check(f"samples[{i}].processes[{k}].started_at", proc.started_at)
    return out


def gpu_is_free(
    gpu: Gpu, processes: list[GpuProcess], *, mem_free_bytes: int = 512 * 2**20
) -> bool:
    """A GPU is free when no compute process holds it, it reports no error, and it holds
    (almost) no memory. Used by the host list, the dashboard and the recommender alike."""
    if gpu.error:
        return False
    if any(p.gpu_index == gpu.index for p in processes):
        return False
    return not (gpu.memory_used_bytes is not None and gpu.memory_used_bytes > mem_free_bytes)


def safe_host_name(name: str) -> bool:
    return re.fullmatch(HOST_NAME_RE, name) is not None
