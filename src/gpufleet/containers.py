"""Which container a process runs in, from the text of its ``/proc/<pid>/cgroup``.

Pure parsing, shared by the agent (reads the file) and the SSH poller (gets the text over SSH).
Covers cgroup v1 and v2 layouts of Docker, containerd (incl. Kubernetes pods), Podman/libpod,
CRI-O and LXC.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class ContainerRef(NamedTuple):
    runtime: str  # docker | containerd | podman | cri-o | kubepods | lxc
    id: str  # full container id (64 hex) or the LXC name


_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # systemd cgroup driver: docker-<id>.scope, libpod-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope
    ("podman", re.compile(r"libpod-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})(?:\.scope)?")),
    ("cri-o", re.compile(r"crio-(?:conmon-)?([0-9a-f]{64})(?:\.scope)?")),
    ("docker", re.compile(r"docker-([0-9a-f]{64})(?:\.scope)?")),
    # cgroupfs driver: /docker/<id>, /kubepods/.../<id>, /libpod_parent/libpod-<id>
    ("docker", re.compile(r"/docker/([0-9a-f]{64})")),
    ("kubepods", re.compile(r"/kubepods[^\n]*/([0-9a-f]{64})")),
    ("containerd", re.compile(r"/containerd/[^/\n]*/?([0-9a-f]{64})")),
    ("lxc", re.compile(r"/lxc(?:\.payload)?[./]([A-Za-z0-9_.-]+)")),
]


def container_from_cgroup(text: str) -> ContainerRef | None:
    """Return the container a process belongs to, or ``None`` for a process on the host."""
    for line in text.splitlines():
        # "hierarchy-id:controllers:path"; v2 has a single "0::/path" line.
        path = line.split(":", 2)[-1]
        for runtime, pattern in _PATTERNS:
            match = pattern.search(path)
            if match:
                return ContainerRef(runtime, match.group(1))
    return None
