"""Host collector: CPU, load, memory, swap, real disks, network rates, uptime, users (psutil).

Rates (CPU %, network bytes/s) come from counter deltas between two rounds, so the first round
reports them as ``None`` rather than an invented number.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from gpufleet.hostfilter import NETWORK_FSTYPES, is_real_mount, is_virtual_interface
from gpufleet.wire import MAX_DISKS_PER_HOST, Disk, HostFacts, HostMetrics

STATVFS_TIMEOUT_SECONDS = 1.0


def select_disks(partitions: Iterable[Any]) -> list[Any]:
    """The real mounts among psutil partitions (``device``, ``mountpoint``, ``fstype``):
    no pseudo filesystems, no squashfs snaps or overlays, and each device once (a bind mount
    or btrfs subvolume seen twice keeps its shortest mount point)."""
    chosen: dict[str, Any] = {}
    for part in partitions:
        mount = part.mountpoint
        if not is_real_mount(part.device or "", mount, part.fstype or ""):
            continue
        key = part.device
        current = chosen.get(key)
        if current is None or len(mount) < len(current.mountpoint):
            chosen[key] = part
    return sorted(chosen.values(), key=lambda p: p.mountpoint)


class HostCollector:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cpu_prev: tuple[float, float] | None = None  # (busy, total) seconds
        self._net_prev: tuple[float, int, int] | None = None  # (t, rx, tx)
        self._facts: HostFacts | None = None
        self._boot_time = psutil.boot_time()
        self._cpu_count = psutil.cpu_count() or None
        self._statvfs_pending: dict[str, threading.Thread] = {}
        self._cpu_percent()  # prime the counters: the first round then has a real value

    # -- metrics --------------------------------------------------------------------------

    def collect(self, now: float | None = None) -> tuple[HostMetrics, list[str]]:
        now = self._clock() if now is None else now
        errors: list[str] = []
        m: dict[str, Any] = {"cpu_count": self._cpu_count}

        def part(what: str, read: Callable[[], None]) -> None:
            # One failing source (an odd /proc, a psutil bug) costs its metrics, not the round.
            try:
                read()
            except Exception as exc:
                errors.append(f"host {what}: {type(exc).__name__}: {exc}"[:1024])

        def cpu() -> None:
            m["cpu_percent"] = self._cpu_percent()
            m["load1"], m["load5"], m["load15"] = (round(x, 2) for x in os.getloadavg())

        def memory() -> None:
            vm = psutil.virtual_memory()
            m["memory_total_bytes"], m["memory_available_bytes"] = vm.total, vm.available
            m["memory_used_bytes"] = max(vm.total - vm.available, 0)
            sw = psutil.swap_memory()
            m["swap_total_bytes"], m["swap_used_bytes"] = sw.total, sw.used

        def disks() -> None:
            m["disks"] = self._disks(errors)

        def network() -> None:
            m["net_rx_bytes_per_second"], m["net_tx_bytes_per_second"] = self._net_rates(now)

        def users() -> None:
            m["users"] = sorted({u.name[:256] for u in psutil.users() if u.name})[:1024]

        for what, read in (
            ("cpu", cpu),
            ("memory", memory),
            ("disks", disks),
            ("network", network),
            ("users", users),
        ):
            part(what, read)
        m["uptime_seconds"] = max(now - self._boot_time, 0.0)
        return HostMetrics(**m), errors

    def _cpu_percent(self) -> float | None:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        busy = total - idle
        prev, self._cpu_prev = self._cpu_prev, (busy, total)
        if prev is None or total - prev[1] <= 0:
            return None
        return round(min(max((busy - prev[0]) / (total - prev[1]) * 100.0, 0.0), 100.0), 2)

    def _disks(self, errors: list[str]) -> list[Disk]:
        disks = []
        for part in select_disks(psutil.disk_partitions(all=False))[:MAX_DISKS_PER_HOST]:
            usage = self._usage(part, errors)
            if usage is None or usage.total <= 0:
                continue
            disks.append(
                Disk(
                    mount=part.mountpoint[:256],
                    device=part.device[:256],
                    fstype=part.fstype[:256],
                    total_bytes=usage.total,
                    used_bytes=usage.used,
                )
            )
        return disks

    def _usage(self, part: Any, errors: list[str]) -> Any:
        """statvfs; on a network filesystem with a deadline (a dead NFS server hangs it)."""
        if part.fstype not in NETWORK_FSTYPES:
            try:
                return psutil.disk_usage(part.mountpoint)
            except OSError:
                return None
        mount = part.mountpoint
        pending = self._statvfs_pending.get(mount)
        if pending is not None and pending.is_alive():
            errors.append(f"disk {mount}: statvfs still hung from an earlier round")
            return None
        box: list[Any] = []

        def stat() -> None:
            try:
                box.append(psutil.disk_usage(mount))
            except OSError:
                box.append(None)

        thread = threading.Thread(target=stat, name=f"statvfs {mount}", daemon=True)
        thread.start()
        thread.join(STATVFS_TIMEOUT_SECONDS)
        if thread.is_alive():
            self._statvfs_pending[mount] = thread
            errors.append(
                f"disk {mount}: statvfs did not return within {STATVFS_TIMEOUT_SECONDS:g} s"
            )
            return None
        self._statvfs_pending.pop(mount, None)
        return box[0] if box else None

    def _net_rates(self, now: float) -> tuple[float | None, float | None]:
        rx = tx = 0
        for nic, c in psutil.net_io_counters(pernic=True).items():
            if is_virtual_interface(nic):
                continue
            rx += c.bytes_recv
            tx += c.bytes_sent
        prev, self._net_prev = self._net_prev, (now, rx, tx)
        if prev is None:
            return None, None
        elapsed = now - prev[0]
        if elapsed <= 0 or rx < prev[1] or tx < prev[2]:  # clock jump, counter reset, NIC gone
            return None, None
        return (rx - prev[1]) / elapsed, (tx - prev[2]) / elapsed

    # -- facts ----------------------------------------------------------------------------

    def facts(self) -> HostFacts:
        if self._facts is None:
            self._facts = HostFacts(
                hostname=socket.gethostname()[:256],
                os=_os_name()[:256],
                kernel=platform.release()[:256],
                cpu_model=_cpu_model()[:256],
                cpu_count=self._cpu_count,
                memory_total_bytes=psutil.virtual_memory().total,
                boot_time=self._boot_time,
            )
        return self._facts.model_copy()


def _os_name() -> str:
    try:
        release = platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME", "")
    except OSError:
        return f"{platform.system()} {platform.release()}".strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
