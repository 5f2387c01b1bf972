"""Benchmark: the demo's first-start history (issue 18's target: 90 days of 24 hosts in under
60 s on 2 cores), for several seeds, printed as a table.

    nice -n 10 .venv/bin/python bench/demo_history.py [--days 90] [--hosts 24] [--seeds 0 1 2]

Each run writes ``--days`` of the replay fleet's history into a fresh DuckDB file through the
store's bulk path and rolls it up (``gpufleet.demo.history.write_history``, what ``gpufleet
demo`` does on first start). Printed per seed: wall seconds (generate / store / rollup), the
process's CPU seconds (every thread), rows written; then the median and spread, the target and
the ratio to it, and the load average (the machine is shared: the wall time follows the CPU
the run got, so the CPU seconds are the steadier figure)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.history import write_history
from gpufleet.philly import load_trace
from gpufleet.store.duck import DuckDBStore

TARGET_SECONDS = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=90.0)
    ap.add_argument("--hosts", type=int, default=24)
    ap.add_argument("--step", type=float, default=300.0, help="seconds between samples")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    trace = load_trace()
    rows = []
    print(f"{'seed':>4} {'wall s':>8} {'gen s':>7} {'store s':>8} {'rollup s':>9} "
          f"{'CPU s':>7} {'rows':>11} {'load1':>6}")  # fmt: skip
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="gpufleet-history-") as tmp:
            store = DuckDBStore(Path(tmp) / "gpufleet.duckdb")
            try:
                r = write_history(store, build_fleet(args.hosts, seed), trace, days=args.days,
                                  end=time.time(), tz="UTC", busy_util_percent=5.0,
                                  step_seconds=args.step, seed=seed)  # fmt: skip
            finally:
                store.close()
        load = os.getloadavg()[0]
        rows.append(r)
        print(f"{seed:>4} {r.total_seconds:>8.1f} {r.generate_seconds:>7.1f} "
              f"{r.store_seconds:>8.1f} {r.rollup_seconds:>9.1f} {r.cpu_seconds:>7.1f} "
              f"{r.rows:>11,} {load:>6.1f}")  # fmt: skip
    walls = [r.total_seconds for r in rows]
    cpus = [r.cpu_seconds for r in rows]
    med = statistics.median(walls)
    print(f"\n{args.days:g} days x {args.hosts} hosts, a sample every {args.step:g} s, "
          f"{len(rows)} seed(s): wall median {med:.1f} s (min {min(walls):.1f}, max "
          f"{max(walls):.1f}); CPU median {statistics.median(cpus):.1f} s (min {min(cpus):.1f}, "
          f"max {max(cpus):.1f}); target {TARGET_SECONDS:g} s wall: "
          f"{'met' if med < TARGET_SECONDS else 'NOT met'} (median / target = "
          f"{med / TARGET_SECONDS:.2f}); {os.cpu_count()} CPUs, load average now "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
