"""Reports on the web and by e-mail, on the warehouse benchmark's store (a year of 100 hosts x
8 GPUs): time until /reports and /me/usage have drawn their charts and table in headless
Chromium (both API calls included), and the time to build a report e-mail (three reports and
three PNG charts) and its size.

    .venv/bin/python bench/warehouse.py --dir /tmp/wh        # makes /tmp/wh/bench.duckdb
    .venv/bin/python bench/reports_web.py --store /tmp/wh/bench.duckdb

The server runs on a copy of nothing: it opens the store itself (stop other users of it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

PAGES = [
    "/reports?period=month&by=user&from=2024-01-01&to=2024-12-31",
    "/reports?period=month&by=host&from=2024-12-01&to=2024-12-31",
    "/reports?period=day&by=gpu&from=2024-12-01&to=2024-12-31",
    "/me/usage?user=user3&period=month&from=2024-01-01&to=2024-12-31",
]
MAILS = [
    ("month", "user", date(2024, 12, 1), date(2024, 12, 31)),
    ("week", "host", date(2024, 12, 23), date(2024, 12, 29)),
    ("year", "user", date(2024, 1, 1), date(2024, 12, 31)),
]


def start_server(store: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = folder / "gpufleet.yaml"
    cfg.write_text(
        f"server:\n  data_dir: {folder}\n  database: {store}\n"
        "warehouse:\n  timezone: Asia/Shanghai\n"  # the benchmark's zone: no day-tier rebuild
        "  retention_minute_days: 100000\n  retention_hour_days: 100000\n"
    )
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpufleet", "server", "--config", str(cfg), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GPUFLEET_CONFIG": ""},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {(folder / 'server.log').read_text()[-2000:]}")


def pages(url: str, runs: int) -> None:
    from playwright.sync_api import sync_playwright

    print(f"page (headless Chromium, 1440x900, median of {runs} after a warm-up)   ms   rows")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        for path in PAGES:
            times, rows = [], 0
            for i in range(runs + 1):
                p = b.new_page(viewport={"width": 1440, "height": 900})
                t = time.perf_counter()
                p.goto(url + path)
                p.wait_for_function(
                    "document.getElementById('report').dataset.state === 'ready'", timeout=120_000
                )
                if i:
                    times.append(time.perf_counter() - t)
                rows = p.locator("#r-table tbody tr[data-key]").count()
                p.close()
            print(f"  {path:<66} {statistics.median(times) * 1000:6.0f}  {rows}")
        b.close()


def mails(url: str, runs: int) -> None:
    from gpufleet.reports.mail import build_message

    def fetch(period: str, by: str, first: date, last: date) -> dict:
        q = {"period": period, "by": by, "from": str(first), "to": str(last)}
        return httpx.get(url + "/api/v1/reports", params=q, timeout=120).json()

    print(f"\ne-mail (3 reports through the API + 3 PNG charts, median of {runs})        ms    KiB")
    for period, by, first, last in MAILS:
        times, size = [], 0
        for _ in range(runs):
            t = time.perf_counter()
            msg = build_message(fetch, to="pi@lab.example", period=period, by=by, first=first,
                                last=last, from_address="gpufleet@lab.example")  # fmt: skip
            times.append(time.perf_counter() - t)
            size = len(msg.as_bytes())
        name = f"{period} by {by} ({first} to {last})"
        print(f"  {name:<66} {statistics.median(times) * 1000:6.0f}  {size / 1024:5.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True, help="bench/warehouse.py's bench.duckdb")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gpufleet-rw-"))
    proc, url = start_server(args.store.resolve(), folder)
    try:
        load = os.getloadavg()[0]
        print(f"server {url} on {args.store}; load average {load:.1f} on {os.cpu_count()} CPUs")
        pages(url, args.runs)
        mails(url, args.runs)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
