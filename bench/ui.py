"""Web UI benchmark in real Chromium (Playwright driving /usr/bin/chromium) against a real server.

1. Ingest-to-screen latency: one sample at a time is POSTed for one of 20 hosts (random gaps of
   0.1-0.4 s); the page stamps, in a MutationObserver followed by requestAnimationFrame, when
   that host's row shows the sample. Latency = that stamp - the moment before the POST (same
   machine, same clock). p50 and p95 over --samples (100).
2. 500 hosts x 8 GPUs, each reporting every 5 s (100 samples/s, the hosts due in each 0.1 s
   in one batch), with processes on most GPUs:
   - time to first meaningful render: navigation start to the first full render of all rows
     (the performance mark "gpufleet-first-render");
   - browser main-thread busy %: CDP Performance.getMetrics TaskDuration over the window
     (the page scrolled to the top, all 500 rows in the DOM and updated);
   - server CPU for the stream: the server process's CPU (psutil) while the page streams,
     minus its CPU under the same ingest load with no page open (phase A vs phase B, same
     duration; A's CPU is scaled to B's sample rate, since ingest CPU follows it); also the stream's own time building and encoding updates, timed inside the
     server (/api/v1/stream/stats busy_seconds: CPU time of the event loop's thread in the
     stream's code), which other load on the machine cannot skew.

    .venv/bin/python bench/ui.py            # full run (about 2 minutes)
    .venv/bin/python bench/ui.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ServerProc, create_token, free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
MODELS = [("NVIDIA A100-SXM4-80GB", 80), ("NVIDIA H100 80GB HBM3", 80),
          ("NVIDIA GeForce RTX 4090", 24), ("Tesla V100-SXM2-32GB", 32)]  # fmt: skip
USERS = [f"user{i:02d}" for i in range(40)]


def sample_dict(host: str, k: int, ts: float, rnd: random.Random, gpus: int = 8) -> dict:
    model, mem_gib = MODELS[k % len(MODELS)]
    gl, procs = [], []
    for i in range(gpus):
        busy = rnd.random() < 0.7
        util = float(rnd.randint(0, 100)) if busy else 0.0
        used = int(rnd.uniform(0.2, 0.95) * mem_gib * 2**30) if busy else 4 * 2**20
        gl.append({
            "index": i, "uuid": f"GPU-{host}-{i}", "name": model,
            "utilization_gpu_percent": util, "memory_used_bytes": used,
            "memory_total_bytes": mem_gib * 2**30, "temperature_celsius": 35 + util * 0.45,
            "power_watts": 60 + util * 3, "power_limit_watts": 400.0,
        })  # fmt: skip
        if busy:
            procs.append({
                "pid": 1000 + i, "gpu_index": i, "user": USERS[(k * 7 + i) % len(USERS)],
                "command": "python train.py --config configs/resnet50.yaml",
                "started_at": ts - 3600, "gpu_memory_bytes": used - 2**29,
            })  # fmt: skip
    return {
        "host": host, "ts": ts, "interval_seconds": 5.0,
        "host_metrics": {
            "cpu_percent": float(rnd.randint(1, 99)), "cpu_count": 64, "load1": 8.0,
            "memory_total_bytes": 512 * 2**30, "memory_used_bytes": 120 * 2**30,
            "disks": [{"mount": "/", "total_bytes": 2**40, "used_bytes": 2**39}],
            "net_rx_bytes_per_second": 1e6, "net_tx_bytes_per_second": 2e5,
        },
        "gpus": gl, "processes": procs,
        "facts": {"driver_version": "550.54.15", "cuda_version": "12.4", "agent_version": "0.1.0"},
    }  # fmt: skip


def body(samples: list[dict]) -> bytes:
    return orjson.dumps({
        "batch_id": f"bench-{uuid.uuid4().hex}", "sent_at": max(s["ts"] for s in samples),
        "samples": samples,
    })  # fmt: skip


class Feeder:
    """Every host reports every ``interval`` seconds, spread evenly over the interval. The hosts
    due in each 0.1 s tick go in one batch (a batch may hold samples of several hosts): the
    page sees the same 100 host updates a second as with one batch per host, while the load
    generator and ingest stay light enough to leave the 2 cores to the server's stream and the
    browser being measured (bench/ingest.py measures one-batch-per-agent ingest)."""

    TICK = 0.1

    def __init__(self, url: str, token: str, hosts: int, interval: float):
        self.url, self.hosts, self.interval = url, hosts, interval
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.stop_event = threading.Event()
        self.sent = self.failed = 0
        self.lag = 0.0
        self._worker: threading.Thread | None = None

    def _run(self) -> None:
        rnd = random.Random(1)
        variants = {k: [sample_dict(f"node{k:03d}", k, time.time(), rnd) for _ in range(4)]
                    for k in range(self.hosts)}  # fmt: skip
        ticks = round(self.interval / self.TICK)
        start = time.time()
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self.stop_event.is_set():
                wait = start + n * self.TICK - time.time()
                if wait > 0 and self.stop_event.wait(wait):
                    return
                self.lag = max(self.lag, -wait)
                due = range(n % ticks, self.hosts, ticks)
                samples = []
                for k in due:
                    s = variants[k][(n // ticks) % 4]
                    s["ts"] = time.time()
                    samples.append(s)
                r = client.post(self.url + "/api/v1/ingest", content=body(samples),
                                headers=self.headers)  # fmt: skip
                if r.status_code == 200:
                    self.sent += len(samples)
                else:
                    self.failed += 1
                n += 1

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._worker is not None:
            self._worker.join(30)


def preload(url: str, token: str, hosts: int) -> None:
    rnd = random.Random(0)
    now = time.time()
    with httpx.Client(timeout=60) as c:
        for i in range(0, hosts, 50):
            samples = [sample_dict(f"node{k:03d}", k, now, rnd) for k in range(i, min(i + 50, hosts))]
            r = c.post(url + "/api/v1/ingest", content=body(samples),
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
            r.raise_for_status()


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


OBSERVER = """() => {
  window.__seen = {};
  new MutationObserver((muts) => {
    const t = performance.timeOrigin + performance.now();
    for (const m of muts) {
      const el = m.target;
      if (m.attributeName !== "data-last-seen" || !el.dataset) continue;
      const key = el.dataset.host + "@" + el.dataset.lastSeen;
      if (window.__seen[key]) continue;
      window.__seen[key] = -1;
      requestAnimationFrame(() => { window.__seen[key] = (performance.timeOrigin + performance.now()) / 1000; });
      window.__seenDom = window.__seenDom || {}; window.__seenDom[key] = t / 1000;
    }
  }).observe(document.getElementById("hosts"), { attributes: true, subtree: true, attributeFilter: ["data-last-seen"] });
}"""


def latency(browser, srv: ServerProc, n: int) -> list[float]:
    rnd = random.Random(7)
    with httpx.Client(timeout=30) as c:
        now = time.time()
        c.post(srv.url + "/api/v1/ingest", headers={"Authorization": f"Bearer {srv.token}"},
               content=body([sample_dict(f"lat{k:02d}", k, now, rnd) for k in range(20)]))  # fmt: skip
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(srv.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.evaluate(OBSERVER)
        out = []
        for i in range(n):
            time.sleep(rnd.uniform(0.1, 0.4))
            host = f"lat{i % 20:02d}"
            s = sample_dict(host, i, time.time(), rnd)
            key = f"{host}@{s['ts']!r}"
            t0 = time.time()
            r = c.post(srv.url + "/api/v1/ingest", content=body([s]),
                       headers={"Authorization": f"Bearer {srv.token}"})  # fmt: skip
            r.raise_for_status()
            seen = page.wait_for_function(
                "k => { const v = window.__seen[k]; return v > 0 ? v : null; }",
                arg=key, timeout=10_000,
            ).json_value()  # fmt: skip
            out.append(seen - t0)
        page.close()
        return out


def fleet(browser, srv: ServerProc, hosts: int, window: float) -> dict[str, float]:
    proc = psutil.Process(srv.proc.pid)
    preload(srv.url, srv.token, hosts)
    feeder = Feeder(srv.url, srv.token, hosts, 5.0)
    feeder.start()
    time.sleep(3)
    # phase A: ingest load, no page
    sent0, c0, t0 = feeder.sent, cpu_seconds(proc), time.time()
    time.sleep(window)
    cpu_a = (cpu_seconds(proc) - c0) / (time.time() - t0)
    rate_a = (feeder.sent - sent0) / (time.time() - t0)
    # phase B: the same load with the overview open and streaming
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto(srv.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    first_render = page.evaluate(
        "performance.getEntriesByName('gpufleet-first-render')[0].startTime"
    ) / 1000  # fmt: skip
    rows = page.locator(".host").count()
    time.sleep(2)
    stats0 = httpx.get(srv.url + "/api/v1/stream/stats").json()
    m0 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    sent0, c0, t0 = feeder.sent, cpu_seconds(proc), time.time()
    time.sleep(window)
    m1 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    elapsed = time.time() - t0
    cpu_b = (cpu_seconds(proc) - c0) / elapsed
    rate_b = (feeder.sent - sent0) / elapsed
    stats1 = httpx.get(srv.url + "/api/v1/stream/stats").json()
    feeder.stop()
    page.close()
    busy = (m1["TaskDuration"] - m0["TaskDuration"]) / (m1["Timestamp"] - m0["Timestamp"])
    return {
        "rows": rows,
        "first_render_s": first_render,
        "main_thread_busy": busy,
        "server_cpu_ingest_only": cpu_a,
        "server_cpu_with_page": cpu_b,
        # ingest CPU scales with the sample rate: compare at phase B's rate
        "server_cpu_ingest_scaled": cpu_a * rate_b / rate_a,
        "stream_cpu_difference": cpu_b - cpu_a * rate_b / rate_a,
        "stream_cpu_inside": (stats1["busy_seconds"] - stats0["busy_seconds"]) / elapsed,
        "flushes_per_s": (stats1["flushes"] - stats0["flushes"]) / elapsed,
        "rate_a": rate_a,
        "rate_b": rate_b,
        "feeder_failed": feeder.failed,
        "feeder_max_lag_s": feeder.lag,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--window", type=float, default=30.0, help="seconds per measured phase")
    ap.add_argument("--quick", action="store_true", help="20 samples, 100 hosts, 8 s windows")
    a = ap.parse_args()
    if a.quick:
        a.samples, a.hosts, a.window = 20, 100, 8.0
    if not os.path.exists(CHROMIUM):
        print(f"error: {CHROMIUM} is missing\nhint: make setup (installs Debian's chromium)",
              file=sys.stderr)  # fmt: skip
        return 1
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        results = {}
        for phase in ("latency", "fleet"):
            data = Path(tmp) / phase
            srv = ServerProc(data, free_port(), create_token(data, "bench"))
            srv.start()
            try:
                if phase == "latency":
                    results["lat"] = latency(browser, srv, a.samples)
                else:
                    results["fleet"] = fleet(browser, srv, a.hosts, a.window)
            finally:
                srv.stop()
        browser.close()

    lat, f = results["lat"], results["fleet"]
    cores = psutil.cpu_count()
    rows = [
        ("ingest-to-screen latency p50", f"{statistics.median(lat) * 1000:.0f} ms", ""),
        (f"ingest-to-screen latency p95 ({len(lat)} samples)", f"{pct(lat, 95) * 1000:.0f} ms",
         "< 1000 ms"),
        (f"time to first meaningful render ({f['rows']} hosts x 8 GPUs)",
         f"{f['first_render_s'] * 1000:.0f} ms", "< 1500 ms"),
        ("browser main thread busy while streaming", f"{f['main_thread_busy'] * 100:.1f} %",
         "< 30 %"),
        ("server CPU, ingest only (no page)", f"{f['server_cpu_ingest_only'] * 100:.1f} % of a core", ""),
        ("  the same, scaled to phase B's sample rate", f"{f['server_cpu_ingest_scaled'] * 100:.1f} % of a core", ""),
        ("server CPU, ingest + one page streaming", f"{f['server_cpu_with_page'] * 100:.1f} % of a core", ""),
        ("server CPU for the stream (B - scaled A)", f"{f['stream_cpu_difference'] * 100:.1f} % of a core",
         "< 20 %"),
        ("stream's own CPU (timed in the server)", f"{f['stream_cpu_inside'] * 100:.1f} % of a core",
         "< 20 %"),
        ("samples/s ingested (no page / with page)", f"{f['rate_a']:.0f} / {f['rate_b']:.0f}", ""),
        ("stream messages/s", f"{f['flushes_per_s']:.1f}", "<= 4"),
    ]  # fmt: skip
    print(f"\ngpufleet web UI benchmark (Chromium {CHROMIUM}, {cores} cores, "
          f"{a.hosts} hosts x 8 GPUs every 5 s, {a.window:.0f} s windows)\n")  # fmt: skip
    w = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{w}} | {'value':>22} | target    |")
    print(f"|{'-' * (w + 2)}|{'-' * 24}|-----------|")
    for name, value, target in rows:
        print(f"| {name:<{w}} | {value:>22} | {target:<9} |")
    if f["feeder_failed"]:
        print(f"\nwarning: {f['feeder_failed']} ingest requests failed", file=sys.stderr)
    print(f"\nload generator's worst lag behind schedule: {f['feeder_max_lag_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
