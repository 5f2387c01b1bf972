"""The latest Sample in the Prometheus text exposition format (0.0.4), and a tiny server for it.

Names carry base units and the ``gpufleet_`` prefix, the same quantities as the wire schema.
A metric that is not available (``None``) is left out rather than exported as zero.

    text = render(sample)
    server = serve_metrics(9835, "127.0.0.1", lambda: latest_sample)   # GET /metrics
    server.shutdown()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gpufleet.promtext import CONTENT_TYPE, Family, exposition
from gpufleet.wire import Sample

log = logging.getLogger("gpufleet.agent.prom")


# (wire attribute, metric name, help)
_HOST_GAUGES = (
    ("cpu_percent", "host_cpu_percent", "CPU time spent busy over the last round."),
    ("cpu_count", "host_cpus", "Logical CPUs."),
    ("load1", "host_load1", "Load average over 1 minute."),
    ("load5", "host_load5", "Load average over 5 minutes."),
    ("load15", "host_load15", "Load average over 15 minutes."),
    ("memory_total_bytes", "host_memory_total_bytes", "Physical memory."),
    ("memory_used_bytes", "host_memory_used_bytes", "Physical memory in use (total - available)."),
    ("memory_available_bytes", "host_memory_available_bytes", "Memory available to new work."),
    ("swap_total_bytes", "host_swap_total_bytes", "Swap space."),
    ("swap_used_bytes", "host_swap_used_bytes", "Swap space in use."),
    (
        "net_rx_bytes_per_second",
        "host_network_receive_bytes_per_second",
        "Bytes received per second, all physical interfaces.",
    ),
    (
        "net_tx_bytes_per_second",
        "host_network_transmit_bytes_per_second",
        "Bytes sent per second, all physical interfaces.",
    ),
    ("uptime_seconds", "host_uptime_seconds", "Time since boot."),
)
_GPU_GAUGES = (
    (
        "utilization_gpu_percent",
        "gpu_utilization_percent",
        "Time a kernel ran on the GPU over the last sample period.",
    ),
    (
        "utilization_memory_percent",
        "gpu_memory_utilization_percent",
        "Time device memory was read or written over the last sample period.",
    ),
    ("memory_used_bytes", "gpu_memory_used_bytes", "GPU memory in use."),
    ("memory_total_bytes", "gpu_memory_total_bytes", "GPU memory."),
    ("temperature_celsius", "gpu_temperature_celsius", "GPU core temperature."),
    ("power_watts", "gpu_power_watts", "Power draw."),
    ("power_limit_watts", "gpu_power_limit_watts", "Enforced power limit."),
    ("fan_percent", "gpu_fan_percent", "Fan speed as a share of its maximum."),
    ("sm_clock_hertz", "gpu_sm_clock_hertz", "Streaming multiprocessor clock."),
    ("pstate", "gpu_pstate", "Performance state (0 fastest, 15 slowest)."),
)


class XidTotals:
    """XID events per GPU counted since this process started: a counter (``rate()`` works;
    a restart is a counter reset). Each host's sample is counted once (by its time)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, int], int] = {}
        self._last_ts: dict[str, float] = {}

    def observe(self, sample: Sample | None) -> None:
        if sample is None or sample.ts <= self._last_ts.get(sample.host, float("-inf")):
            return
        self._last_ts[sample.host] = sample.ts
        for gpu in sample.gpus:
            key = (sample.host, gpu.index)
            self.totals[key] = self.totals.get(key, 0) + len(gpu.xid_events)

    def total(self, host: str, gpu: int) -> int:
        return self.totals.get((host, gpu), 0)


def render(sample: Sample | None, xids: XidTotals | None = None) -> str:
    """The Prometheus text exposition of one sample (an empty exposition for ``None``)."""
    return "" if sample is None else exposition(sample_families([sample], xids))


def sample_families(samples: Iterable[Sample], xids: XidTotals | None = None) -> list[Family]:
    """Metric families for the latest sample of each host (the agent: one; the server: all).

    Per-process data is summed per GPU, user and container (no ``pid`` label: a label that
    takes a new value for every job makes a new series each time), so the exposition grows
    with GPUs and users, not with processes. ``xids``: the XID counter's state (counted
    from these samples when not given)."""
    families: list[Family] = []
    samples = list(samples)
    if xids is None:
        xids = XidTotals()
        for sample in samples:
            xids.observe(sample)

    def family(name: str, help_: str, type_: str = "gauge") -> Family:
        fam = Family(name, help_, type_)
        families.append(fam)
        return fam

    ts = family("sample_timestamp_seconds", "When the latest sample was collected (Unix time).")
    errors = family("collection_errors", "Host-level collection problems in the latest sample.")
    info = family("host_info", "Facts about the host; the value is always 1.")
    host_gauges = [(attr, family(name, help_)) for attr, name, help_ in _HOST_GAUGES]
    users = family("host_logged_in_users", "Distinct users logged in.")
    disk_total = family("host_disk_total_bytes", "Size of the filesystem mounted there.")
    disk_used = family("host_disk_used_bytes", "Space used on the filesystem mounted there.")
    gpu_info = family(
        "gpu_info", "The GPU's UUID and model name; the value is always 1 (join on host, gpu)."
    )
    up = family(
        "gpu_up", "1 when NVML answered for this GPU in the latest sample, 0 when it erred."
    )
    gpu_gauges = [(attr, family(name, help_)) for attr, name, help_ in _GPU_GAUGES]
    ecc = family("gpu_ecc_uncorrected_volatile_errors_total",
                 "Uncorrected ECC errors since the driver loaded (a driver reload resets it).",
                 "counter")  # fmt: skip
    xid = family("gpu_xid_events_total",
                 "XID events (GPU errors the driver reported) counted since the exporter "
                 "started.", "counter")  # fmt: skip
    last_xid = family("gpu_last_xid", "Code of the last XID event in the latest sample.")
    procs = family("gpu_processes", "Processes holding the GPU.")
    proc_mem = family(
        "gpu_user_memory_bytes", "GPU memory held by a user's processes (per container)."
    )
    user_procs = family("gpu_user_processes", "Processes of a user (per container) on the GPU.")

    for sample in samples:
        host = (("host", sample.host),)
        ts.add(host, sample.ts)
        errors.add(host, len(sample.errors))
        facts = sample.facts
        info.add(
            (
                *host,
                ("os", facts.os),
                ("kernel", facts.kernel),
                ("cpu_model", facts.cpu_model),
                ("driver_version", facts.driver_version or ""),
                ("cuda_version", facts.cuda_version or ""),
                ("agent_version", facts.agent_version),
            ),
            1,
        )
        hm = sample.host_metrics
        for attr, fam in host_gauges:
            fam.add(host, getattr(hm, attr))
        users.add(host, len(hm.users))
        labels: tuple[tuple[str, str], ...]
        for disk in hm.disks:
            labels = (
                *host,
                ("mount", disk.mount),
                ("device", disk.device),
                ("fstype", disk.fstype),
            )
            disk_total.add(labels, disk.total_bytes)
            disk_used.add(labels, disk.used_bytes)

        # GPU series carry (host, gpu) only; the UUID and model are on gpu_info, once per GPU
        # (long labels repeated on every series made the server's /metrics 3x larger).
        gpu_labels = {gpu.index: (*host, ("gpu", str(gpu.index))) for gpu in sample.gpus}
        for gpu in sample.gpus:
            labels = gpu_labels[gpu.index]
            gpu_info.add((*labels, ("uuid", gpu.uuid), ("name", gpu.name)), 1)
            up.add(labels, 0 if gpu.error else 1)
            for attr, fam in gpu_gauges:
                fam.add(labels, getattr(gpu, attr))
            ecc.add(labels, gpu.ecc_uncorrected_volatile)
            xid.add(labels, xids.total(sample.host, gpu.index))
            if gpu.xid_events:
                last_xid.add(labels, gpu.xid_events[-1].xid)
            procs.add(labels, sum(p.gpu_index == gpu.index for p in sample.processes))
        held: dict[tuple, list[int | None]] = {}  # (GPU labels + user, container) -> [bytes, n]
        for proc in sample.processes:
            labels = gpu_labels[proc.gpu_index] + (
                ("user", proc.user if proc.user is not None else _uid(proc.uid)),
                ("container", proc.container_name or (proc.container_id or "")[:12]),
            )
            acc = held.setdefault(labels, [None, 0])
            if proc.gpu_memory_bytes is not None:
                acc[0] = (acc[0] or 0) + proc.gpu_memory_bytes
            acc[1] = (acc[1] or 0) + 1
        for labels, (memory, count) in held.items():
            proc_mem.add(labels, memory)
            user_procs.add(labels, count)
    return families


def _uid(uid: int | None) -> str:
    return "" if uid is None else f"uid:{uid}"


# -- the HTTP endpoint --------------------------------------------------------------------------


def serve_metrics(
    port: int, host: str = "127.0.0.1", get_sample: Callable[[], Sample | None] = lambda: None,
    xids: XidTotals | None = None,
) -> ThreadingHTTPServer:  # fmt: skip
    """Serve ``render(get_sample())`` at ``GET /metrics`` (and ``HEAD``) on a daemon thread.

    ``xids``: the XID counter, fed by the caller with every sample it collects; without it
    the counter counts the samples this endpoint sees (those between two scrapes are missed).
    ``port=0`` picks a free port (``server.server_address[1]``). Stop with ``.shutdown()``.
    """
    seen = xids or XidTotals()

    class Handler(BaseHTTPRequestHandler):
        server_version = "gpufleet-agent"

        def do_HEAD(self) -> None:
            self._head_only = True
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    sample = get_sample()
                    if xids is None:
                        seen.observe(sample)
                    body = render(sample, seen).encode()
                except Exception:
                    log.exception("rendering /metrics failed")
                    self._send(500, b"error: rendering the latest sample failed\n", "text/plain")
                    return
                self._send(200, body, CONTENT_TYPE)
            elif path == "/":
                self._send(
                    200, b'gpufleet agent: see <a href="/metrics">/metrics</a>\n', "text/html"
                )
            else:
                self._send(404, b"not found: try /metrics\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not getattr(self, "_head_only", False):
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics %s - %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="gpufleet-metrics", daemon=True)
    thread.start()
    return server
