"""Is this log the story of a job that ran out of GPU memory? One rule for every dispatcher, so a
CUDA OOM is reported as ``"oom"`` and not as a mystery non-zero exit.

The words are the supervisor's ``OOM_MARKERS`` (the program the SSH and local dispatchers run on
a host; it ships as one standard-library file, so the list lives there); the Slurm and
Kubernetes dispatchers read a job's log with the same list here."""

from __future__ import annotations

import re

from gpufleet.queue.dispatch.supervisor import OOM_MARKERS

_CUDA_OOM = re.compile(
    "|".join(re.escape(m.decode()).replace(r"\ ", r"\s+") for m in OOM_MARKERS), re.IGNORECASE
)


def looks_like_cuda_oom(log_text: str) -> bool:
    """True when the job's output says a GPU memory allocation failed."""
    return _CUDA_OOM.search(log_text) is not None
