"""The job a user submits: parsed from a plain spec (YAML/JSON) or a Kubernetes ``batch/v1`` Job
whose annotations carry ``model_name``, ``data_size`` (GB) and ``epoch``.

Every error names the field, e.g. ``metadata.annotations.epoch: must be a positive integer,
got "abc"``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

GB = 10**9
_MEMORY_RE = re.compile(r"^\s*(?P<num>\d+(\.\d+)?)\s*(?P<unit>[kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": GB,
    "gb": GB,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only ``true``/``false`` (YAML 1.1 also reads ``no``, ``off``,
    ``yes``, ``on`` as booleans, so ``preemptible: no`` would pass for false unseen)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class JobSpecError(ValueError):
    """An invalid job spec; the message starts with the field's path."""


@dataclass(frozen=True)
class JobSpec:
    name: str
    user: str
    gpus: float  # whole GPUs, or a fraction of one (< 1) for small jobs that may share
    model_name: str
    gpu_memory_bytes: int | None = None  # per GPU; None: ask the predictor
    epochs: int | None = None
    steps: int | None = None
    data_size_bytes: int = 0
    data_location: str | None = None  # host name or storage URL
    command: tuple[str, ...] = ()
    priority: int = 0
    deadline: str | None = None  # ISO 8601
    # False: once started, the queue never preempts (nor moves) it; it holds its GPUs to the end
    preemptible: bool = True


def _fail(path: str, what: str, value: Any) -> JobSpecError:
    shown = (
        json.dumps(value)
        if isinstance(value, str | int | float | bool) or value is None
        else repr(value)
    )
    return JobSpecError(f"{path}: {what}, got {shown}")


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise _fail(path, "must be a positive integer", value)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise _fail(path, "must be a positive integer", value) from None
    if number <= 0:
        raise _fail(path, "must be a positive integer", value)
    return number


def _nonneg_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise _fail(path, "must be a non-negative number", value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(path, "must be a non-negative number", value) from None
    if not number >= 0 or number == float("inf"):
        raise _fail(path, "must be a non-negative number", value)
    return number


def _bool(value: Any, path: str) -> bool:
    """A real boolean (YAML ``true``/``false``); a Kubernetes annotation (always a string) may
    be ``"true"`` or ``"false"``, which ``_annotation_bool`` reads."""
    if not isinstance(value, bool):
        raise _fail(path, "must be true or false", value)
    return value


def _annotation_bool(value: Any, path: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _bool(value, path)


def _text(value: Any, path: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise JobSpecError(f"{path}: is required")
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _fail(path, "must be a string", value)
    return str(value).strip()


def parse_memory(value: Any, path: str) -> int:
    """``"40GB"``, ``"16GiB"``, ``17179869184`` -> bytes."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = _MEMORY_RE.match(str(value)) if isinstance(value, str) else None
    if not match or (match["unit"] or "").lower() not in _UNITS or float(match["num"]) <= 0:
        raise _fail(path, 'must be a size such as "40GB" or "16GiB"', value)
    return int(float(match["num"]) * _UNITS[(match["unit"] or "").lower()])


def _gpus(value: Any, path: str) -> float:
    gpus = _nonneg_float(value, path)
    if gpus <= 0 or (gpus > 1 and gpus != int(gpus)):
        raise _fail(
            path, "must be a whole number of GPUs, or a fraction of one (0 < gpus < 1)", value
        )
    return gpus


def parse_plain(data: dict[str, Any]) -> JobSpec:
    """A plain spec: ``{name, user, gpus, model_name, gpu_memory, epochs|steps, data_size_gb,
    data_location, command, priority, deadline, preemptible}``; ``name`` and ``user`` are
    required, the rest optional (``gpus`` 1)."""
    if not isinstance(data, dict):
        raise JobSpecError(f"spec: must be a mapping, got {type(data).__name__}")
    known = {
        "name",
        "user",
        "gpus",
        "model_name",
        "gpu_memory",
        "epochs",
        "steps",
        "data_size_gb",
        "data_location",
        "command",
        "priority",
        "deadline",
        "preemptible",
    }
    for key in data:
        if key not in known:
            raise JobSpecError(f"{key}: unknown field; expected one of {', '.join(sorted(known))}")
    # optional: what the job trains and for how long help the runtime predictor; without them
    # it learns from the user's and group's finished jobs, and the policy from attained service
    epochs = _positive_int(data["epochs"], "epochs") if data.get("epochs") is not None else None
    steps = _positive_int(data["steps"], "steps") if data.get("steps") is not None else None
    command = data.get("command") or ()
    if isinstance(command, str):
        command = tuple(command.split())
    elif not isinstance(command, list | tuple) or not all(isinstance(c, str) for c in command):
        raise _fail("command", "must be a string or a list of strings", str(command))
    priority = data.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _fail("priority", "must be an integer", priority)
    return JobSpec(
        name=_text(data.get("name"), "name") or "",
        user=_text(data.get("user"), "user") or "",
        gpus=_gpus(data.get("gpus", 1), "gpus"),
        model_name=_text(data.get("model_name"), "model_name", required=False) or "",
        gpu_memory_bytes=(
            parse_memory(data["gpu_memory"], "gpu_memory")
            if data.get("gpu_memory") is not None
            else None
        ),
        epochs=epochs,
        steps=steps,
        data_size_bytes=int(_nonneg_float(data.get("data_size_gb", 0), "data_size_gb") * GB),
        data_location=_text(data.get("data_location"), "data_location", required=False),
        command=tuple(command),
        priority=priority,
        deadline=_text(data.get("deadline"), "deadline", required=False),
        preemptible=_bool(data.get("preemptible", True), "preemptible"),
    )


def parse_k8s_job(doc: dict[str, Any]) -> JobSpec:
    """A Kubernetes ``batch/v1`` Job; GPUs from the first container's ``nvidia.com/gpu`` limit."""
    if not isinstance(doc, dict):
        raise JobSpecError(f"spec: must be a mapping, got {type(doc).__name__}")
    if doc.get("apiVersion") != "batch/v1":
        raise _fail("apiVersion", 'must be "batch/v1"', doc.get("apiVersion"))
    if doc.get("kind") != "Job":
        raise _fail("kind", 'must be "Job"', doc.get("kind"))
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise JobSpecError("metadata: is required")
    notes = meta.get("annotations")
    if not isinstance(notes, dict):
        raise JobSpecError("metadata.annotations: is required (model_name, data_size, epoch)")
    prefix = "metadata.annotations"
    model = _text(notes.get("model_name"), f"{prefix}.model_name") or ""
    if "data_size" not in notes:
        raise JobSpecError(f"{prefix}.data_size: is required (GB)")
    data_gb = _nonneg_float(notes["data_size"], f"{prefix}.data_size")
    if "epoch" not in notes:
        raise JobSpecError(f"{prefix}.epoch: is required")
    epochs = _positive_int(notes["epoch"], f"{prefix}.epoch")
    containers = (((doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    )
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise JobSpecError("spec.template.spec.containers: must list at least one container")
    first = containers[0]
    limits = (first.get("resources") or {}).get("limits") or {}
    path = "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu"
    gpus = _gpus(limits.get("nvidia.com/gpu", 1), path)
    memory = notes.get("gpu_memory")
    return JobSpec(
        name=_text(meta.get("name"), "metadata.name") or "",
        user=_text(
            notes.get("user") or (meta.get("labels") or {}).get("user"),
            f"{prefix}.user",
            required=False,
        )
        or meta.get("namespace", "default"),
        gpus=gpus,
        model_name=model,
        gpu_memory_bytes=parse_memory(memory, f"{prefix}.gpu_memory")
        if memory is not None
        else None,
        epochs=epochs,
        data_size_bytes=int(data_gb * GB),
        data_location=_text(notes.get("data_location"), f"{prefix}.data_location", required=False),
        command=tuple(str(c) for c in (first.get("command") or []) + (first.get("args") or [])),
        priority=_positive_int(notes["priority"], f"{prefix}.priority")
        if "priority" in notes
        else 0,
        deadline=_text(notes.get("deadline"), f"{prefix}.deadline", required=False),
        preemptible=_annotation_bool(
            notes.get("gpufleet.io/preemptible", True), f"{prefix}.gpufleet.io/preemptible"
        ),
    )


def parse_job(text: str) -> JobSpec:
    """A YAML or JSON document: a Kubernetes Job when it has ``kind``, else a plain spec."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # (a SafeLoader)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"spec: not valid YAML/JSON: {exc}") from None
    if isinstance(doc, dict) and ("kind" in doc or "apiVersion" in doc):
        return parse_k8s_job(doc)
    return parse_plain(doc)
