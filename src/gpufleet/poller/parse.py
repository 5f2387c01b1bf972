"""Turn the text of one agent-less poll into a :class:`gpufleet.wire.Sample`.

Pure functions, no I/O: :mod:`gpufleet.poller.ssh` runs one small shell script on the host and
hands its output here. The script prints *sections*, each opened by a line
``@@gpufleet@@ <name>`` (see :data:`SECTION_MARK`), holding the raw text of one source:
``nvidia-smi --query-gpu=... --format=csv,noheader,nounits``, ``--query-compute-apps=...``,
``/proc/stat``, ``/proc/loadavg``, ``/proc/meminfo``, ``/proc/uptime``, ``/proc/net/dev``,
``df -P``, ``ps`` and ``/proc/<pid>/cgroup`` of the GPU processes, ``who``, ``hostname``,
``uname -r`` and ``/etc/os-release``.

Rates (CPU %, network bytes/s) need two readings: :func:`parse_poll` takes the previous poll's
:class:`Counters` and returns the new ones, which the caller keeps per host. The first poll of a
host therefore reports ``None`` for those rates.

Anything the host cannot report is ``None``; a malformed line is skipped and named in
``Sample.errors`` rather than failing the whole poll.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gpufleet.containers import container_from_cgroup
from gpufleet.hostfilter import is_real_mount, is_virtual_interface
from gpufleet.wire import Disk, Gpu, GpuProcess, HostFacts, HostMetrics, Sample

SECTION_MARK = "@@gpufleet@@ "
"""Prefix of the line that opens a section of the poll script's output."""

QUERY_GPU_FIELDS = (
    "index",
    "uuid",
    "name",
    "utilization.gpu",
    "utilization.memory",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "fan.speed",
    "clocks.sm",
    "pstate",
    "ecc.errors.uncorrected.volatile.total",
    "driver_version",
)
QUERY_APPS_FIELDS = ("pid", "gpu_uuid", "used_memory")

MIB = 1024 * 1024
MHZ = 1_000_000
COMMAND_MAX_CHARS = 200
ERROR_MAX_CHARS = 1000
MAX_ERRORS = 64

# Exit statuses of `timeout` (GNU: 124, after -k: 137; BusyBox: 143) meaning "killed for hanging".
TIMEOUT_EXIT_CODES = frozenset({124, 137, 143})



# --------------------------------------------------------------------------------------------
# sections


def split_sections(text: str) -> dict[str, str]:
    """Split the poll script's output into ``{section name: body}``.

    Lines before the first marker are ignored (a login banner from ``.bashrc``, say). A section
    that appears twice keeps its last body.
    """
    sections: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith(SECTION_MARK):
            if name is not None:
                sections[name] = "\n".join(body).strip("\n")
            name = line[len(SECTION_MARK) :].strip()
            body = []
        elif name is not None:
            body.append(line)
    if name is not None:
        sections[name] = "\n".join(body).strip("\n")
    return sections


def _last_section(text: str) -> str | None:
    last = None
    for line in text.splitlines():
        if line.startswith(SECTION_MARK):
            last = line[len(SECTION_MARK) :].strip()
    return last


# --------------------------------------------------------------------------------------------
# nvidia-smi


def smi_value(raw: str) -> str | None:
    """One nvidia-smi CSV cell: ``[N/A]``, ``[Not Supported]``, ``[Unknown Error]``… → None."""
    value = raw.strip()
    if not value or (value.startswith("[") and value.endswith("]")) or value == "N/A":
        return None
    return value


def _float(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        value = _float(raw)
        return int(value) if value is not None else None


def _scaled(raw: str | None, factor: int) -> int | None:
    value = _float(raw)
    return round(value * factor) if value is not None else None


def _pstate(raw: str | None) -> int | None:
    if raw is None:
        return None
    match = re.fullmatch(r"P(\d{1,2})", raw.strip())
    return int(match.group(1)) if match else None


def _csv_rows(text: str) -> list[list[str]]:
    reader = csv.reader((line for line in text.splitlines() if line.strip()), skipinitialspace=True)
    return [row for row in reader if row]


def _model_or_none_fields(model: type[Any], fields: dict[str, Any]) -> tuple[Any, list[str]]:
    """Build ``model(**fields)``; a field that fails validation is set to ``None`` and named."""
    dropped: list[str] = []
    for _ in range(len(fields) + 1):
        try:
            return model(**fields), dropped
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            bad &= {k for k, v in fields.items() if v is not None}
            if not bad:
                raise
            for key in sorted(bad):
                dropped.append(f"{key}={fields[key]!r}")
                fields[key] = None
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class GpuTable:
    gpus: list[Gpu] = field(default_factory=list)
    driver_version: str | None = None
    errors: list[str] = field(default_factory=list)


def parse_query_gpu(text: str) -> GpuTable:
    """Parse ``nvidia-smi --query-gpu=<QUERY_GPU_FIELDS> --format=csv,noheader,nounits``."""
    table = GpuTable()
    seen: set[int] = set()
    for row in _csv_rows(text):
        if len(row) != len(QUERY_GPU_FIELDS):
            table.errors.append(
                f"nvidia-smi --query-gpu: expected {len(QUERY_GPU_FIELDS)} fields,"
                f" got {len(row)}: {', '.join(row)[:200]}"
            )
            continue
        cell = dict(zip(QUERY_GPU_FIELDS, (smi_value(c) for c in row), strict=True))
        index = _int(cell["index"])
        if index is None or index < 0 or index in seen:
            table.errors.append(f"nvidia-smi --query-gpu: bad GPU index in: {', '.join(row)[:200]}")
            continue
        unknown = [
            name
            for name, raw in zip(QUERY_GPU_FIELDS, row, strict=True)
            if "error" in raw.lower() or "requires reset" in raw.lower()
        ]
        fields: dict[str, Any] = {
            "index": index,
            "uuid": cell["uuid"] or "",
            "name": cell["name"] or "",
            "utilization_gpu_percent": _float(cell["utilization.gpu"]),
            "utilization_memory_percent": _float(cell["utilization.memory"]),
            "memory_used_bytes": _scaled(cell["memory.used"], MIB),
            "memory_total_bytes": _scaled(cell["memory.total"], MIB),
            "temperature_celsius": _float(cell["temperature.gpu"]),
            "power_watts": _float(cell["power.draw"]),
            "power_limit_watts": _float(cell["power.limit"]),
            "fan_percent": _float(cell["fan.speed"]),
            "sm_clock_hertz": _scaled(cell["clocks.sm"], MHZ),
            "pstate": _pstate(cell["pstate"]),
            "ecc_uncorrected_volatile": _int(cell["ecc.errors.uncorrected.volatile.total"]),
            "error": None,
        }
        try:
            gpu, dropped = _model_or_none_fields(Gpu, fields)
        except ValidationError as exc:  # index out of range, say: not a GPU we can keep
            table.errors.append(f"nvidia-smi --query-gpu: GPU {index}: {exc.errors()[0]['msg']}")
            continue
        problems = []
        if unknown:
            problems.append("nvidia-smi reported an error for " + ", ".join(unknown))
        if dropped:
            problems.append("out-of-range values dropped: " + ", ".join(dropped))
        if problems:
            gpu.error = "; ".join(problems)[:ERROR_MAX_CHARS]
        seen.add(index)
        table.gpus.append(gpu)
        if table.driver_version is None and cell["driver_version"]:
            table.driver_version = cell["driver_version"]
    return table


@dataclass(frozen=True)
class ComputeApp:
    pid: int
    gpu_index: int
    gpu_uuid: str
    gpu_memory_bytes: int | None


def parse_compute_apps(
    text: str, uuid_to_index: Mapping[str, int]
) -> tuple[list[ComputeApp], list[str]]:
    """Parse ``nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory`` (csv, noheader,
    nounits), mapping each GPU UUID to its index. Rows on an unknown UUID are reported."""
    apps: list[ComputeApp] = []
    errors: list[str] = []
    unknown: list[str] = []
    for row in _csv_rows(text):
        if len(row) == 1 and row[0].strip().lower().startswith("no running"):
            continue  # older drivers print "No running processes found"
        if len(row) != len(QUERY_APPS_FIELDS):
            errors.append(f"nvidia-smi --query-compute-apps: bad line: {', '.join(row)[:200]}")
            continue
        pid = _int(smi_value(row[0]))
        uuid = (smi_value(row[1]) or "").strip()
        if pid is None or pid < 0:
            errors.append(f"nvidia-smi --query-compute-apps: bad pid: {row[0][:50]}")
            continue
        index = uuid_to_index.get(uuid)
        if index is None:
            unknown.append(f"{pid} on {uuid or '?'}")
            continue
        memory = _scaled(smi_value(row[2]), MIB)
        apps.append(ComputeApp(pid, index, uuid, memory))
    if unknown:
        errors.append(
            "nvidia-smi --query-compute-apps: processes on GPUs not in --query-gpu"
            f" (MIG instance?): {', '.join(unknown)[:600]}"
        )
    return apps, errors


# --------------------------------------------------------------------------------------------
# /proc


@dataclass(frozen=True)
class CpuTimes:
    total: int  # jiffies, all states
    idle: int  # idle + iowait


@dataclass(frozen=True)
class ProcStat:
    cpu: CpuTimes | None
    cpu_count: int | None
    boot_time: float | None


def parse_proc_stat(text: str) -> ProcStat:
    cpu: CpuTimes | None = None
    count = 0
    boot_time: float | None = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            values = [int(v) for v in parts[1:] if v.isdigit()]
            if len(values) >= 4:
                # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
                # is already inside user/nice, so only the first 8 count.
                busy_fields = values[:8]
                idle = values[3] + (values[4] if len(values) > 4 else 0)
                cpu = CpuTimes(total=sum(busy_fields), idle=idle)
        elif re.fullmatch(r"cpu\d+", parts[0]):
            count += 1
        elif parts[0] == "btime" and len(parts) > 1:
            boot_time = _float(parts[1])
    return ProcStat(cpu=cpu, cpu_count=count or None, boot_time=boot_time)


def cpu_percent(previous: CpuTimes | None, current: CpuTimes | None) -> float | None:
    """Busy share of all CPUs between two ``/proc/stat`` readings, 0–100."""
    if previous is None or current is None:
        return None
    total = current.total - previous.total
    idle = current.idle - previous.idle
    if total <= 0 or idle < 0:
        return None
    return min(100.0, max(0.0, 100.0 * (total - idle) / total))


def parse_loadavg(text: str) -> tuple[float, float, float] | None:
    parts = text.split()
    if len(parts) < 3:
        return None
    values = [_float(p) for p in parts[:3]]
    if any(v is None or v < 0 for v in values):
        return None
    return (values[0] or 0.0, values[1] or 0.0, values[2] or 0.0)


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as ``{key: bytes}`` (values without a ``kB`` unit are kept as is)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[key.strip()] = value
    return out


def parse_uptime(text: str) -> float | None:
    parts = text.split()
    value = _float(parts[0]) if parts else None
    return value if value is not None and value >= 0 else None


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev`` as ``{interface: (rx_bytes, tx_bytes)}``, every interface."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        fields = rest.split()
        if len(fields) < 9 or not (fields[0].isdigit() and fields[8].isdigit()):
            continue
        out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def net_rates(
    previous: Mapping[str, tuple[int, int]] | None,
    current: Mapping[str, tuple[int, int]] | None,
    elapsed_seconds: float | None,
) -> tuple[float | None, float | None]:
    """Summed rx/tx bytes per second over physical interfaces present in both readings.

    An interface whose counters went backwards (driver reload, wrap) is skipped for this round.
    """
    if previous is None or current is None or not elapsed_seconds or elapsed_seconds <= 0:
        return None, None
    rx = tx = 0
    matched = False
    for name, (rx_now, tx_now) in current.items():
        if is_virtual_interface(name) or name not in previous:
            continue
        rx_before, tx_before = previous[name]
        if rx_now < rx_before or tx_now < tx_before:
            continue
        matched = True
        rx += rx_now - rx_before
        tx += tx_now - tx_before
    if not matched:
        return None, None
    return rx / elapsed_seconds, tx / elapsed_seconds


# --------------------------------------------------------------------------------------------
# df, ps, who, facts


def parse_df(text: str) -> list[Disk]:
    """Parse ``df -P [-T] -B1`` (or ``-k``): one :class:`Disk` per real mount.

    The block size comes from the header (``1-blocks``, ``1024-blocks``). Pseudo filesystems
    are dropped, and a device mounted twice (bind mounts) is kept once, at its shortest path.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Filesystem"):
        return []
    header = lines[0].split()
    has_type = len(header) > 1 and header[1] == "Type"
    size_column = header[2] if has_type else header[1] if len(header) > 1 else ""
    match = re.match(r"(\d+)-blocks", size_column)
    block = int(match.group(1)) if match else 1024
    by_device: dict[str, Disk] = {}
    disks: list[Disk] = []
    for line in lines[1:]:
        parts = line.split()
        first = 2 if has_type else 1
        if len(parts) < first + 5:
            continue
        device = parts[0]
        fstype = parts[1] if has_type else ""
        total, used = parts[first], parts[first + 1]
        mount = " ".join(parts[first + 4 :])
        if not (total.isdigit() and used.isdigit()) or not mount.startswith("/"):
            continue
        if not is_real_mount(device, mount, fstype):
            continue
        if int(total) == 0:
            continue
        disk = Disk(
            mount=mount[:256],
            device=device[:256],
            fstype=fstype[:256],
            total_bytes=min(int(total) * block, 2**62),
            used_bytes=min(int(used) * block, 2**62),
        )
        if device.startswith("/dev/"):
            earlier = by_device.get(device)
            if earlier is not None:
                if len(disk.mount) < len(earlier.mount):
                    disks[disks.index(earlier)] = disk
                    by_device[device] = disk
                continue
            by_device[device] = disk
        disks.append(disk)
    return disks


def parse_etime(text: str) -> int | None:
    """``ps -o etime`` (``[[DD-]hh:]mm:ss``) → seconds."""
    match = re.fullmatch(r"(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True)
class PsRow:
    pid: int
    uid: int | None
    user: str | None
    elapsed_seconds: int | None
    command: str


def shorten_command(command: str, limit: int = COMMAND_MAX_CHARS) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[: limit - 1] + "…"


def parse_ps(text: str) -> dict[int, PsRow]:
    """Parse ``ps -ww -o pid=,uid=,user:64=,etime=,args=``."""
    rows: dict[int, PsRow] = {}
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        uid = int(parts[1]) if parts[1].isdigit() else None
        user = parts[2]
        if uid is not None and user == str(uid):  # no passwd entry: ps prints the number
            user_name: str | None = None
        else:
            user_name = user[:256]
        rows[pid] = PsRow(
            pid=pid,
            uid=uid,
            user=user_name,
            elapsed_seconds=parse_etime(parts[3]),
            command=shorten_command(parts[4] if len(parts) > 4 else ""),
        )
    return rows


def parse_who(text: str) -> list[str]:
    """Distinct logged-in user names from ``who`` (first column), sorted."""
    return sorted({line.split()[0][:256] for line in text.splitlines() if line.strip()})


def parse_os_release(text: str) -> str:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    name = values.get("PRETTY_NAME") or " ".join(
        v for v in (values.get("NAME"), values.get("VERSION")) if v
    )
    return name[:256]


def parse_cpu_model(text: str) -> str:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "cpu model", "Hardware"):
            return " ".join(value.split())[:256]
    return ""


def parse_docker_names(text: str) -> dict[str, str]:
    """``docker ps --no-trunc --format '{{.ID}} {{.Names}}'`` → ``{full id: name}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"[0-9a-f]{12,64}", parts[0]):
            out[parts[0]] = parts[1][:256]
    return out


# --------------------------------------------------------------------------------------------
# the whole poll


@dataclass(frozen=True)
class Counters:
    """What a host's next poll needs from this one to compute rates."""

    ts: float
    uptime_seconds: float | None = None
    boot_time: float | None = None
    cpu: CpuTimes | None = None
    net: Mapping[str, tuple[int, int]] | None = None


def _elapsed(previous: Counters, ts: float, uptime: float | None) -> float | None:
    # The host's own uptime advances exactly with its counters; fall back to the poller's clock.
    if uptime is not None and previous.uptime_seconds is not None:
        delta = uptime - previous.uptime_seconds
        if delta > 0:
            return delta
    delta = ts - previous.ts
    return delta if delta > 0 else None


def _exit_code(sections: Mapping[str, str], name: str) -> int | None:
    raw = sections.get(name)
    return _int(raw.strip()) if raw is not None else None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return "(no output)"


def parse_poll(
    text: str,
    *,
    host: str,
    ts: float,
    interval_seconds: float = 5.0,
    previous: Counters | None = None,
    agent_version: str = "",
) -> tuple[Sample, Counters]:
    """Build the :class:`Sample` of one poll from the poll script's whole output.

    ``previous`` is the :class:`Counters` returned by this host's last poll (``None`` on the
    first). Output cut short (the poll timed out mid-way) still yields what arrived, with an
    error naming where it stopped.
    """
    sections = split_sections(text)
    errors: list[str] = []

    # ---- GPUs
    smi_timeout = _int(sections.get("smi_timeout_seconds"))
    gpu_rc = _exit_code(sections, "smi_gpu_rc")
    apps_rc = _exit_code(sections, "smi_apps_rc")
    gpus: list[Gpu] = []
    driver_version: str | None = None
    apps: list[ComputeApp] = []
    hung_after = f" (killed after {smi_timeout} s)" if smi_timeout else ""
    if "smi_missing" in sections:
        errors.append("nvidia-smi missing: not found in PATH on the host; no GPU data")
    elif gpu_rc is not None:
        if gpu_rc in TIMEOUT_EXIT_CODES:
            errors.append(f"nvidia-smi hung: --query-gpu gave no answer{hung_after}")
        elif gpu_rc != 0:
            errors.append(
                f"nvidia-smi failed (exit {gpu_rc}): {_first_line(sections.get('smi_gpu', ''))}"
            )
        else:
            table = parse_query_gpu(sections.get("smi_gpu", ""))
            gpus, driver_version = table.gpus, table.driver_version
            errors.extend(table.errors)
            if apps_rc in TIMEOUT_EXIT_CODES:
                errors.append(f"nvidia-smi hung: --query-compute-apps gave no answer{hung_after}")
            elif apps_rc is not None and apps_rc != 0:
                errors.append(
                    f"nvidia-smi --query-compute-apps failed (exit {apps_rc}):"
                    f" {_first_line(sections.get('smi_apps', ''))}"
                )
            elif apps_rc == 0:
                uuid_to_index = {g.uuid: g.index for g in gpus if g.uuid}
                apps, app_errors = parse_compute_apps(sections.get("smi_apps", ""), uuid_to_index)
                errors.extend(app_errors)

    # ---- processes
    ps_rows = parse_ps(sections.get("ps", ""))
    docker_names = parse_docker_names(sections.get("docker", ""))
    processes: list[GpuProcess] = []
    for app in apps:
        row = ps_rows.get(app.pid)
        container = container_from_cgroup(sections.get(f"cgroup {app.pid}", ""))
        started_at = None
        if row is not None and row.elapsed_seconds is not None:
            started_at = ts - row.elapsed_seconds
        proc_fields: dict[str, Any] = {
            "pid": app.pid,
            "gpu_index": app.gpu_index,
            "gpu_uuid": app.gpu_uuid,
            "user": row.user if row else None,
            "uid": row.uid if row else None,
            "command": row.command if row else "",
            "started_at": started_at,
            "gpu_memory_bytes": app.gpu_memory_bytes,
            "container_id": container.id if container else None,
            "container_name": docker_names.get(container.id) if container else None,
            "container_runtime": container.runtime if container else None,
        }
        try:
            proc, _ = _model_or_none_fields(GpuProcess, proc_fields)
        except ValidationError:
            errors.append(f"GPU process {app.pid}: could not be represented; skipped")
            continue
        processes.append(proc)

    # ---- host
    stat = parse_proc_stat(sections.get("stat", ""))
    uptime = parse_uptime(sections.get("uptime", ""))
    net = parse_net_dev(sections.get("netdev", "")) if "netdev" in sections else None
    same_boot = previous is not None and (
        previous.boot_time is None or stat.boot_time is None or previous.boot_time == stat.boot_time
    )
    prev = previous if same_boot else None
    elapsed = _elapsed(prev, ts, uptime) if prev is not None else None
    rx_rate, tx_rate = net_rates(prev.net if prev else None, net, elapsed)
    load = parse_loadavg(sections.get("loadavg", ""))
    mem = parse_meminfo(sections.get("meminfo", ""))
    mem_total = mem.get("MemTotal")
    mem_available = mem.get("MemAvailable")
    if mem_available is None and mem_total is not None and "MemFree" in mem:
        mem_available = mem["MemFree"] + mem.get("Buffers", 0) + mem.get("Cached", 0)
    mem_used = (
        max(0, mem_total - mem_available)
        if mem_total is not None and mem_available is not None
        else None
    )
    swap_total = mem.get("SwapTotal")
    swap_used = (
        max(0, swap_total - mem["SwapFree"])
        if swap_total is not None and "SwapFree" in mem
        else None
    )
    host_fields: dict[str, Any] = {
        "cpu_percent": cpu_percent(prev.cpu if prev else None, stat.cpu),
        "cpu_count": stat.cpu_count,
        "load1": load[0] if load else None,
        "load5": load[1] if load else None,
        "load15": load[2] if load else None,
        "memory_total_bytes": mem_total,
        "memory_used_bytes": mem_used,
        "memory_available_bytes": mem_available,
        "swap_total_bytes": swap_total,
        "swap_used_bytes": swap_used,
        "disks": parse_df(sections.get("df", "")),
        "net_rx_bytes_per_second": rx_rate,
        "net_tx_bytes_per_second": tx_rate,
        "uptime_seconds": uptime,
        "users": parse_who(sections.get("who", "")),
    }
    host_metrics, dropped = _model_or_none_fields(HostMetrics, host_fields)
    if dropped:
        errors.append("host metrics out of range, dropped: " + ", ".join(dropped))

    facts_fields: dict[str, Any] = {
        "hostname": sections.get("hostname", "").strip()[:256],
        "os": parse_os_release(sections.get("os_release", "")),
        "kernel": sections.get("kernel", "").strip()[:256],
        "cpu_model": parse_cpu_model(sections.get("cpuinfo", "")),
        "cpu_count": stat.cpu_count,
        "memory_total_bytes": mem_total,
        "driver_version": driver_version,
        "agent_version": agent_version[:256],
        "boot_time": stat.boot_time,
    }
    facts, _ = _model_or_none_fields(HostFacts, facts_fields)

    if "end" not in sections:
        last = _last_section(text)
        if last in ("smi_gpu", "smi_apps"):
            errors.append("nvidia-smi hung: no answer before the poll timed out")
        elif last is None:
            errors.append("poll output was empty")
        else:
            errors.append(f"poll output was cut short (last section: {last})")

    sample = Sample(
        host=host,
        ts=ts,
        interval_seconds=interval_seconds,
        host_metrics=host_metrics,
        gpus=gpus,
        processes=processes,
        facts=facts,
        errors=_clip_errors(errors),
    )
    counters = Counters(
        ts=ts,
        uptime_seconds=uptime,
        boot_time=stat.boot_time,
        cpu=stat.cpu,
        net=net,
    )
    return sample, counters


def _clip_errors(errors: Iterable[str]) -> list[str]:
    out = [e[:ERROR_MAX_CHARS] for e in errors]
    if len(out) > MAX_ERRORS:
        out = [*out[: MAX_ERRORS - 1], f"... and {len(out) - MAX_ERRORS + 1} more errors"]
    return out
