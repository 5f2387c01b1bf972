"""What a Kubernetes Job and its pods say about a gpufleet job: pure functions over the API's
JSON (``batch/v1`` Job and ``v1`` Pod as the API server sends them, camelCase keys)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpufleet.queue.dispatch.base import HOST_OOM, EventKind

Obj = Mapping[str, Any]

# why a pod stopped when its host went away (pod status.reason / DisruptionTarget reasons)
_HOST_DOWN = frozenset(
    {"NodeLost", "Terminated", "NodeShutdown", "DeletionByTaintManager", "TerminationByKubelet",
     "Evicted", "UnexpectedAdmissionError"}
)  # fmt: skip


def timestamp(text: Any) -> float | None:
    """An RFC 3339 time from the API (``2026-12-03T07:00:00Z``) as Unix seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _statuses(pod: Obj) -> list[Obj]:
    return list((pod.get("status") or {}).get("containerStatuses") or [])


def pod_started_at(pod: Obj) -> float | None:
    """When the pod's container began running, or None if it has not run."""
    status = pod.get("status") or {}
    for container in _statuses(pod):
        state = container.get("state") or {}
        for key in ("running", "terminated"):
            if key in state and state[key] is not None:
                return timestamp(state[key].get("startedAt")) or timestamp(status.get("startTime"))
    if status.get("phase") == "Running":
        return timestamp(status.get("startTime"))
    return None


def pod_ended(pod: Obj) -> bool:
    """The pod has finished: a terminal phase, or a container that terminated."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return any((c.get("state") or {}).get("terminated") for c in _statuses(pod))


def job_condition(job: Obj) -> Obj | None:
    """The Job's terminal condition (``Complete`` or ``Failed`` with status True), if any."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition
    return None


@dataclass(frozen=True)
class Ending:
    kind: EventKind
    exit_code: int | None = None
    reason: str | None = None
    at_seconds: float | None = None
    check_log: bool = False  # a plain non-zero exit: read the log for a CUDA OOM


def _pod_failure(pods: Iterable[Obj]) -> Ending | None:
    """The first failed pod's story: OOMKilled, its host gone, or its container's exit code."""
    for pod in pods:
        status = pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        disruption = conditions.get("DisruptionTarget") or {}
        if status.get("reason") in _HOST_DOWN or (
            disruption.get("status") == "True" and disruption.get("reason") in _HOST_DOWN
        ):
            return Ending(EventKind.FAILED, None, "host down")
        for container in _statuses(pod):
            ended = (container.get("state") or {}).get("terminated") or {}
            code = ended.get("exitCode")
            at = timestamp(ended.get("finishedAt"))
            if ended.get("reason") == "OOMKilled":
                return Ending(EventKind.FAILED, code, HOST_OOM, at)  # host memory limit
            if isinstance(code, int) and code != 0:
                return Ending(EventKind.EXITED, code, None, at, check_log=True)
    return None


def job_ending(job: Obj, pods: Iterable[Obj]) -> Ending | None:
    """How the Job ended, or None while it has not: ``Complete`` -> EXITED 0; ``Failed`` with
    ``DeadlineExceeded`` -> FAILED "time limit"; otherwise the failed pod says why (OOMKilled ->
    "out of host memory", its node gone -> "host down", else EXITED with the container's exit code)."""
    condition = job_condition(job)
    if condition is None:
        return None
    at = timestamp(condition.get("lastTransitionTime")) or timestamp(
        (job.get("status") or {}).get("completionTime")
    )
    if condition["type"] == "Complete":
        return Ending(EventKind.EXITED, 0, None, at)
    if condition.get("reason") == "DeadlineExceeded":
        return Ending(EventKind.FAILED, None, "time limit", at)
    found = _pod_failure(pods)
    if found is not None:
        return Ending(found.kind, found.exit_code, found.reason, found.at_seconds or at,
                      found.check_log)  # fmt: skip
    message = condition.get("message") or condition.get("reason") or "the Job failed"
    return Ending(EventKind.FAILED, None, f"kubernetes: {message}", at)
