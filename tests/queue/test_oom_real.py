"""Out-of-memory as real frameworks say it: the end of the output of jobs run on a real H200
under the queue's supervisor (scripts/nvml_probe.py --jobs; docs/agent.md). PyTorch's and
JAX's were reported as ``oom``; CuPy's was a mystery failure until its words joined the list.
Both readers of a job's output (the supervisor on a host, ``oom.py`` for Slurm and Kubernetes
logs) use the one list."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.queue.dispatch.oom import looks_like_cuda_oom
from gpufleet.queue.dispatch.supervisor import oom_in

LOGS = Path(__file__).parent / "fixtures" / "oom"


@pytest.mark.parametrize("job", ["torch_oom", "jax_oom", "cupy_oom"])
def test_a_real_frameworks_gpu_oom_is_seen_as_oom_by_both_readers(job, tmp_path):
    log = LOGS / f"{job}.log"
    assert looks_like_cuda_oom(log.read_text())
    assert oom_in(str(log))


def test_a_real_job_that_fit_is_not_an_oom():
    log = LOGS / "torch_fits.log"
    assert not looks_like_cuda_oom(log.read_text()) and not oom_in(str(log))


def test_the_readers_agree_on_every_marker_and_on_plain_failures(tmp_path):
    from gpufleet.queue.dispatch.supervisor import OOM_MARKERS

    for marker in OOM_MARKERS:
        text = f"Traceback (most recent call last):\n{marker.decode()}: 2.00 GiB\n"
        path = tmp_path / "out.log"
        path.write_text(text)
        assert looks_like_cuda_oom(text) and oom_in(str(path)), marker
    for text in ("ValueError: bad shape", "RuntimeError: NCCL error", "Killed"):
        path = tmp_path / "plain.log"
        path.write_text(text)
        assert not looks_like_cuda_oom(text) and not oom_in(str(path)), text
