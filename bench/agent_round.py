"""Benchmark: one gpufleet agent collection round vs one scrape of prometheus-node-exporter.

    .venv/bin/python bench/agent_round.py [--rounds 60] [--gpus 8] [--processes 8]

Both run on this machine in the same run, interleaved (agent round, scrape, agent round, ...),
and the table reports medians over the steady state (after warm-up rounds):

- agent round: ``Collector.collect()`` -- host metrics (psutil), process attribution from the
  real /proc (``--processes`` live ``sleep`` children spread over the GPUs), and the GPU part
  through the NVML gate over the *fake* NVML (this machine has no GPU: real NVML calls cost
  more, typically 10 us - 1 ms each);
- node_exporter: ``GET /metrics`` over loopback on a free port (default collectors), wall time
  seen by the client and CPU time of the node_exporter process (from /proc/<pid>/stat);
- RSS: a subprocess that imports only the agent's modules and runs rounds, read from
  /proc/self/status (VmRSS) after the rounds;
- projected CPU share: agent CPU per round / interval.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
TARGET_RATIO, TARGET_RSS_MB, TARGET_CPU_SHARE = 0.5, 60.0, 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_collector(gpus: int, pids: list[int]):
    from gpufleet.agent.collect import Collector
    from gpufleet.agent.fakenvml import FakeNvml

    fake = FakeNvml.with_models(["NVIDIA A100-SXM4-80GB"] * gpus)
    for i, pid in enumerate(pids):
        if gpus:
            fake.add_process(i % gpus, pid, (i + 1) * 2**30)
    return Collector(host_name="bench", nvml=fake)


RSS_CHILD = textwrap.dedent(
    """
    import sys, subprocess
    gpus, nproc, rounds = map(int, sys.argv[1:4])
    children = [subprocess.Popen(["sleep", "600"]) for _ in range(nproc)]
    from gpufleet.agent.collect import Collector
    from gpufleet.agent.fakenvml import FakeNvml
    from gpufleet.agent.prom import render
    fake = FakeNvml.with_models(["NVIDIA A100-SXM4-80GB"] * gpus)
    for i, c in enumerate(children):
        fake.add_process(i % gpus, c.pid, 2**30)
    collector = Collector(host_name="bench", nvml=fake)
    for _ in range(rounds):
        render(collector.collect())
    rss = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    heavy = [m for m in ("fastapi", "duckdb", "sklearn", "numpy", "uvicorn") if m in sys.modules]
    print(int(rss.split()[1]) / 1024, ",".join(heavy) or "-")
    for c in children:
        c.kill()
    """
)


def measure_rss(gpus: int, nproc: int, rounds: int) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(gpus), str(nproc), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="measured rounds (default 60)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs (default 8)")
    parser.add_argument("--processes", type=int, default=8, help="GPU processes (default 8)")
    parser.add_argument("--interval", type=float, default=5.0, help="agent interval, seconds")
    args = parser.parse_args()

    if not os.access(NODE_EXPORTER, os.X_OK):
        sys.exit(
            f"error: {NODE_EXPORTER} not found\nhint: apt-get install prometheus-node-exporter"
        )

    children = [subprocess.Popen(["sleep", "600"]) for _ in range(args.processes)]
    port = free_port()
    exporter = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or exporter.poll() is not None:
                    sys.exit("error: prometheus-node-exporter did not start")
                time.sleep(0.1)

        collector = make_collector(args.gpus, [c.pid for c in children])
        agent_wall, agent_cpu, ne_wall, ne_cpu, ne_bytes = [], [], [], [], 0
        for i in range(args.warmup + args.rounds):
            w0, c0 = time.perf_counter(), time.process_time()
            sample = collector.collect()
            w1, c1 = time.perf_counter(), time.process_time()
            e0 = proc_cpu_seconds(exporter.pid)
            s0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=10).read()
            s1 = time.perf_counter()
            e1 = proc_cpu_seconds(exporter.pid)
            if i >= args.warmup:
                agent_wall.append(w1 - w0)
                agent_cpu.append(c1 - c0)
                ne_wall.append(s1 - s0)
                ne_cpu.append(e1 - e0)
                ne_bytes = len(body)
            time.sleep(0.05)  # let counters move between rounds, as at a real interval
        collector.close()
        assert len(sample.processes) == args.processes and len(sample.gpus) == args.gpus
        ne_rss_mb = vm_rss_mb(exporter.pid)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        for child in children:
            child.kill()

    rss_mb, heavy = measure_rss(args.gpus, args.processes, 20)
    med = statistics.median
    a_wall, a_cpu, n_wall = med(agent_wall), med(agent_cpu), med(ne_wall)
    # node_exporter CPU per scrape: /proc ticks are 10 ms, so use the mean over all scrapes
    n_cpu = sum(ne_cpu) / len(ne_cpu)
    ratio = a_wall / n_wall
    share = a_cpu / args.interval * 100

    def ok(flag: bool) -> str:
        return "yes" if flag else "NO"

    print(
        f"# agent collection round vs node_exporter scrape ({args.rounds} rounds after "
        f"{args.warmup} warm-up, medians; {os.cpu_count()} CPUs)"
    )
    print(
        f"# agent: {args.gpus} GPUs through the FAKE NVML (no GPU on this machine), "
        f"{args.processes} GPU processes attributed from the real /proc, host metrics via psutil"
    )
    print()
    print("| measure | gpufleet agent round | node_exporter scrape | target | met |")
    print("|---|---|---|---|---|")
    print(
        f"| wall time | {a_wall * 1e3:.2f} ms | {n_wall * 1e3:.2f} ms | agent <= 0.5x | {ok(ratio <= TARGET_RATIO)} |"
    )
    print(f"| CPU time | {a_cpu * 1e3:.2f} ms | {n_cpu * 1e3:.2f} ms (mean) | | |")
    print(
        f"| ratio agent/node_exporter (wall) | {ratio:.2f}x | | <= {TARGET_RATIO}x | {ok(ratio <= TARGET_RATIO)} |"
    )
    print(
        f"| RSS | {rss_mb:.1f} MB (heavy modules loaded: {heavy}) | {ne_rss_mb:.1f} MB | < {TARGET_RSS_MB:.0f} MB | {ok(rss_mb < TARGET_RSS_MB)} |"
    )
    print(
        f"| CPU share at {args.interval:g} s interval | {share:.3f}% of one core | | < {TARGET_CPU_SHARE}% | {ok(share < TARGET_CPU_SHARE)} |"
    )
    print(f"| payload | {len(sample.model_dump_json())} B JSON | {ne_bytes} B text | | |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
