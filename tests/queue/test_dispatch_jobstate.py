"""The pure part of the supervised dispatchers: what a launch asks of the supervisor, and which
event a job's rank records add up to."""

from __future__ import annotations

import re

import pytest

from gpufleet.queue.dispatch.base import DispatchError, EventKind, HostGpus, Launch
from gpufleet.queue.dispatch.jobstate import (
    Job,
    Rank,
    launch_spec,
    parse_handle,
    terminal_event,
)


def two_hosts(command: tuple[str, ...]) -> Launch:
    hosts = (HostGpus("gpu-1", (0, 3)), HostGpus("gpu-2", (5,)))
    return Launch("j-1", "train", "ada", hosts, command=command, env={"A": "1"})


def test_launch_spec_per_rank() -> None:
    spec = launch_spec(two_hosts(("python train.py --lr 0.1",)), 1, 4.0)
    assert spec["shell_command"] == "python train.py --lr 0.1" and "argv" not in spec
    assert spec["env"] == {
        "A": "1",
        "GPUFLEET_JOB_ID": "j-1",
        "GPUFLEET_HOSTS": "gpu-1,gpu-2",
        "GPUFLEET_RANK": "1",
        "CUDA_VISIBLE_DEVICES": "5",
    }
    assert (spec["host"], spec["rank"], spec["kill_grace_seconds"]) == ("gpu-2", 1, 4.0)
    argv = launch_spec(two_hosts(("python", "train.py")), 0, 4.0)
    assert argv["argv"] == ["python", "train.py"] and "shell_command" not in argv
    assert argv["env"]["CUDA_VISIBLE_DEVICES"] == "0,3"


def test_image_only_job_is_refused() -> None:
    job = Launch("j-2", "n", "u", (HostGpus("gpu-1", (0,)),), image="pytorch/pytorch:2.3")
    with pytest.raises(DispatchError, match=re.escape("only the image 'pytorch/pytorch:2.3'")):
        launch_spec(job, 0, 1.0)


def record(code: int | None, reason: str | None = None, ended: float = 100.0) -> dict[str, object]:
    return {"exit_code": code, "reason": reason, "ended_at": ended}


def job(*records: dict[str, object], cancel: bool = False) -> Job:
    ranks = [Rank(f"gpu-{i}", pid=100 + i, record=dict(r)) for i, r in enumerate(records)]
    return Job("j", ranks, "running", cancel_requested=cancel)


@pytest.mark.parametrize(
    ("records", "cancel", "expected"),
    [
        ((record(0), record(0, ended=130.0)), False, (EventKind.EXITED, 0, None, 130.0)),
        ((record(3), record(0)), False, (EventKind.EXITED, 3, None, 100.0)),
        # rank 1 ran out of GPU memory; rank 0 was stopped because of it: the OOM decides
        ((record(143, "cancelled"), record(1, "oom")), False, (EventKind.FAILED, 1, "oom", 100.0)),
        (
            (record(143, "cancelled"), record(0)),
            True,
            (EventKind.CANCELLED, 143, "cancelled", 100.0),
        ),
        ((record(137, "time limit"),), False, (EventKind.FAILED, 137, "time limit", 100.0)),
        (
            (record(None, "launch failed: No such file or directory: x"),),
            False,
            (EventKind.FAILED, None, "launch failed: No such file or directory: x", 100.0),
        ),
        (
            (record(137, "killed by signal SIGKILL"),),
            False,
            (EventKind.EXITED, 137, "killed by signal SIGKILL", 100.0),
        ),
    ],
)
def test_terminal_event(
    records: tuple[dict[str, object], ...],
    cancel: bool,
    expected: tuple[EventKind, int | None, str | None, float],
) -> None:
    event = terminal_event(job(*records, cancel=cancel))
    assert (event.kind, event.exit_code, event.reason, event.at_seconds) == expected
    assert event.handle == ",".join(f"{100 + i}@gpu-{i}" for i in range(len(records)))


def test_parse_handle() -> None:
    assert parse_handle("12@gpu-1,-@gpu.b_2") == [("gpu-1", 12), ("gpu.b_2", None)]
    assert parse_handle(None) is None and parse_handle("") is None
