"""Names a backend will accept for a gpufleet job id: job ids are free text, Slurm job names and
Kubernetes labels are not. Unchanged when already valid, else cleaned and suffixed with a short
hash of the original, so two ids never share a name."""

from __future__ import annotations

import hashlib
import re

_NOT_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def safe_name(text: str, max_length: int = 63) -> str:
    """``[A-Za-z0-9_.-]``, alphanumeric at both ends, at most ``max_length`` characters: a valid
    Kubernetes label value (63) and a Slurm job name that ``--name`` lists cannot split."""
    clean = _NOT_SAFE.sub("-", text).strip("-_.")
    if clean == text and len(clean) <= max_length:
        return clean
    return f"{clean[: max_length - 9].rstrip('-_.')}-{short_hash(text)}".lstrip("-")
