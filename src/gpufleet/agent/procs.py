"""Who runs a GPU process: Unix user, command line, start time and container, from ``/proc``.

Sources are injectable (``proc_root``, ``host_root`` for container metadata, ``user_name`` for
the uid -> name mapping), like prometheus_client's ``ProcessCollector(proc=...)``. A process is
described once per (pid, start time): a steady-state round reads one small ``stat`` file per
GPU process and nothing else.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gpufleet.containers import container_from_cgroup

log = logging.getLogger("gpufleet.agent.procs")

MAX_COMMAND_CHARS = 200


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    uid: int | None = None
    user: str | None = None
    command: str = ""
    started_at: float | None = None
    container_id: str | None = None
    container_name: str | None = None
    container_runtime: str | None = None


def passwd_user_name(uid: int) -> str | None:
    """The login name of ``uid`` from the passwd database, ``None`` when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def shorten_command(argv: list[str], limit: int = MAX_COMMAND_CHARS) -> str:
    """The command line as one line of at most ``limit`` characters."""
    text = " ".join(a for a in argv if a).replace("\n", " ").replace("\r", " ").strip()
    if len(text) <= limit:
        return text
    return text[: limit - 3].rstrip() + "..."


class ProcessAttributor:
    def __init__(
        self,
        proc_root: str | os.PathLike[str] = "/proc",
        *,
        host_root: str | os.PathLike[str] = "/",
        user_name: Callable[[int], str | None] = passwd_user_name,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.host_root = Path(host_root)
        self._user_name = user_name
        self._cache: dict[int, tuple[int, ProcInfo]] = {}  # pid -> (start ticks, info)
        self._users: dict[int, str | None] = {}
        self._containers: dict[str, tuple[str | None, str | None]] = {}  # id -> (name, runtime)
        self._btime: float | None = None
        self._clock_ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    # -- public ---------------------------------------------------------------------------

    def describe(self, pid: int) -> ProcInfo | None:
        """Describe ``pid``; ``None`` when it is not in ``proc_root`` (gone, or another pid
        namespace)."""
        stat = self._read_stat(pid)
        if stat is None:
            self._cache.pop(pid, None)
            return None
        comm, start_ticks = stat
        cached = self._cache.get(pid)
        if cached is not None and cached[0] == start_ticks:
            return cached[1]
        info = self._describe_new(pid, comm, start_ticks)
        self._cache[pid] = (start_ticks, info)
        return info

    def forget_except(self, live_pids: Iterable[int]) -> None:
        """Drop cached processes not in ``live_pids`` (call once per round)."""
        live = set(live_pids)
        for pid in [p for p in self._cache if p not in live]:
            del self._cache[pid]

    # -- /proc ----------------------------------------------------------------------------

    def _read_stat(self, pid: int) -> tuple[str, int] | None:
        try:
            text = (self.proc_root / str(pid) / "stat").read_text()
        except OSError:
            return None
        # "pid (comm) state ppid ..." -- comm may hold spaces and parentheses.
        open_paren, close_paren = text.find("("), text.rfind(")")
        if open_paren < 0 or close_paren < 0:
            return None
        fields = text[close_paren + 2 :].split()
        try:
            start_ticks = int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
        except (IndexError, ValueError):
            return None
        return text[open_paren + 1 : close_paren], start_ticks

    def _boot_time(self) -> float | None:
        if self._btime is None:
            try:
                for line in (self.proc_root / "stat").read_text().splitlines():
                    if line.startswith("btime "):
                        self._btime = float(line.split()[1])
                        break
            except (OSError, ValueError, IndexError):
                return None
        return self._btime

    def _describe_new(self, pid: int, comm: str, start_ticks: int) -> ProcInfo:
        base = self.proc_root / str(pid)
        uid = None
        try:
            for line in (base / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])  # real uid
                    break
        except (OSError, ValueError, IndexError):
            pass
        user = None
        if uid is not None:
            if uid not in self._users:
                self._users[uid] = self._user_name(uid)
            user = self._users[uid]
        try:
            argv = (base / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:
            argv = []
        command = shorten_command(argv) or f"[{comm}]"

        btime = self._boot_time()
        started_at = None if btime is None else btime + start_ticks / self._clock_ticks

        container_id = container_name = runtime = None
        try:
            ref = container_from_cgroup((base / "cgroup").read_text())
        except OSError:
            ref = None
        if ref is not None:
            container_id, runtime = ref.id, ref.runtime
            if ref.id not in self._containers:
                if len(self._containers) >= 4096:  # containers come and go for months
                    self._containers.clear()
                self._containers[ref.id] = self._container_name(ref.id, ref.runtime)
            container_name, found_runtime = self._containers[ref.id]
            runtime = found_runtime or runtime
        return ProcInfo(
            pid=pid,
            uid=uid,
            user=user,
            command=command,
            started_at=started_at,
            container_id=container_id,
            container_name=container_name,
            container_runtime=runtime,
        )

    # -- container names ------------------------------------------------------------------

    def _container_name(self, cid: str, runtime: str) -> tuple[str | None, str | None]:
        """(name, runtime) from the runtimes' on-disk metadata, (None, None) when unknown."""
        if runtime == "lxc":
            return cid, None
        root = self.host_root
        docker = _load_dict(root / "var/lib/docker/containers" / cid / "config.v2.json")
        if docker:
            labels = (docker.get("Config") or {}).get("Labels") or {}
            name = _k8s_name(labels) or str(docker.get("Name", "")).lstrip("/") or None
            return name, "docker"
        storage = root / "var/lib/containers/storage/overlay-containers"
        spec = _load_dict(storage / cid / "userdata/config.json")
        if spec:
            annotations = spec.get("annotations") or {}
            name = _k8s_name(annotations) or _storage_name(storage, cid)
            return name, "cri-o" if "io.kubernetes.pod.name" in annotations else "podman"
        tasks = root / "run/containerd/io.containerd.runtime.v2.task"
        for path in glob.glob(str(tasks / "*" / cid / "config.json")):
            spec = _load_dict(Path(path))
            if spec:
                return _k8s_name(spec.get("annotations") or {}), "containerd"
        name = _storage_name(storage, cid)
        return (name, "podman") if name else (None, None)


def _k8s_name(meta: dict[str, str]) -> str | None:
    """The "pod/container" name from Kubernetes labels or annotations (kubelet's and containerd's keys)."""
    pod = meta.get("io.kubernetes.pod.name") or meta.get("io.kubernetes.cri.sandbox-name")
    if not pod:
        return None
    container = meta.get("io.kubernetes.container.name") or meta.get(
        "io.kubernetes.cri.container-name"
    )
    return f"{pod}/{container}" if container else pod


def _storage_name(storage: Path, cid: str) -> str | None:
    """Podman's container name from containers/storage's ``containers.json``."""
    entries = _load_json(storage / "containers.json")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == cid and entry.get("names"):
                return str(entry["names"][0])
    return None


def _load_json(path: Path) -> object:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _load_dict(path: Path) -> dict:
    data = _load_json(path)
    return data if isinstance(data, dict) else {}
