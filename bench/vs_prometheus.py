"""gpufleet's usage reports beside PromQL on the same data, in one run.

The same synthetic fleet (default: 30 days, 50 hosts x 8 GPUs, a sample every 100 s; GPUs run
jobs of hours at a steady utilisation with noise, sit idle between them, and notebooks hold
some GPUs without computing) is written

- into gpufleet: raw samples through the store's bulk path, then rolled up into the
  minute/hour/day tiers by the real rollup (its cost is printed apart: it is paid once, as
  samples arrive, not per question); then a real ``gpufleet server`` answers over HTTP;
- into Prometheus (the one ``make setup`` installs): OpenMetrics text, one file per 2-hour
  block, turned into TSDB blocks by ``promtool tsdb create-blocks-from openmetrics``; then a real
  ``prometheus`` (no scrape targets) answers over HTTP, after its compaction has settled.

Then the same report questions both ways, each answer checked against the other:

1. per-GPU daily average utilisation over the 30 days (``period=day&by=gpu`` /
   ``avg_over_time(...[1d])`` stepped by a day);
2. per-GPU p95 utilisation over the month (``period=month&by=gpu`` p95_util, within its
   documented 5-point bound / ``quantile_over_time(0.95, ...[30d])``);
3. per-GPU busy hours over the month (utilisation above 5%: ``busy_gpu_hours`` / a
   ``sum_over_time`` subquery at the sample step);
4. a month by host: average utilisation per host (``period=month&by=host`` /
   ``avg by (host) (avg_over_time(...[30d]))``).

Each question is asked ``--runs`` times on every side after one warm-up, the sides taking
turns run by run (so a burst of load on a shared machine falls on all of them); the median
(and the fastest and slowest run) is printed for each and the ratios. gpufleet is timed twice: "read now" (each
request sends ``Cache-Control: no-cache``, so the server reads the tiers and builds the
answer every time) and "kept" (the same request again: the answer the server kept, valid
while no rollup changed the days it covers; see docs/reports.md). A time runs until the
last byte of the answer has arrived; decoding the JSON in this Python client is timed apart
(it grows with the answer's size, not with the server's work). With ``--baseline-src``, a
second gpufleet server runs the source tree given (e.g. an older commit's ``src``, made by
``git archive``) on a copy of the same store, timed the same way in the same run, and its
answers are checked to equal the new one's. Everything runs on this machine, on loopback,
one question at a time.

    .venv/bin/python bench/vs_prometheus.py [--hosts 50] [--gpus 8] [--days 30] [--step 100]
        [--runs 5] [--keep DIR [--reuse]] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gpufleet.store import open_store
from gpufleet.store.rows import TABLE_COLUMNS

METRIC = "gpu_utilization_percent"  # the name gpufleet's /metrics gives it
BUSY_PERCENT = 5.0  # warehouse.busy_util_percent's default: busy when above it
BLOCK_SECONDS = 2 * 3600  # promtool writes 2-hour blocks
GIB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the fleet --------------------------------------------------------------------------------


def make_fleet(hosts: int, gpus: int, steps: int, step: int, seed: int) -> np.ndarray:
    """Utilisation (integer percent, as NVML reports it) per GPU x step, and who holds it:
    returns (util uint8 [G, T], held bool [G, T])."""
    rng = np.random.default_rng(seed)
    n = hosts * gpus
    util = np.zeros((n, steps), dtype=np.uint8)
    held = np.zeros((n, steps), dtype=bool)
    hour = 3600 / step
    for g in range(n):
        t = int(rng.integers(0, int(6 * hour)))
        busy_share = rng.uniform(0.3, 0.9)  # some GPUs are in demand, some are not
        while t < steps:
            run = int(max(1, rng.lognormal(np.log(4 * hour), 1.0)))
            end = min(steps, t + run)
            kind = rng.random()
            if kind < 0.15:  # a notebook: holds memory, computes now and then
                level = rng.uniform(0, 3, end - t)
            else:
                mean = rng.uniform(20, 98)
                level = mean + rng.normal(0, 8, end - t)
            util[g, t:end] = np.clip(np.rint(level), 0, 100).astype(np.uint8)
            held[g, t:end] = True
            gap = rng.exponential(run * (1 - busy_share) / busy_share) + 1
            t = end + int(gap)
    return util, held


def host_name(h: int) -> str:
    return f"node{h:03d}"


# -- gpufleet's side ----------------------------------------------------------------------------


def write_gpufleet(data_dir: Path, util: np.ndarray, held: np.ndarray, hosts: int, gpus: int,
                   t0: int, step: int) -> dict[str, float]:  # fmt: skip
    """Raw samples through the bulk path, one day at a time, then the rollup (timed apart)."""
    store = open_store(data_dir / "gpufleet.duckdb")
    steps = util.shape[1]
    per_day = 86400 // step
    names = [host_name(h) for h in range(hosts)]
    written, clock = 0, time.perf_counter()
    try:
        for d0 in range(0, steps, per_day):
            k = np.arange(d0, min(steps, d0 + per_day))
            ts = (t0 + k * step).astype(np.float64)
            cols = {}
            # host rows: every host at every step of the day
            hs = np.repeat(np.arange(hosts), len(k))
            host_ts = np.tile(ts, hosts)
            nh = len(hs)
            cols["host_samples"] = _columns("host_samples", nh, {
                "host": pa.array(np.array(names, dtype=object)[hs], pa.string()),
                "ts": host_ts, "interval_seconds": np.full(nh, float(step), np.float32),
                "gpus": np.full(nh, gpus, np.int32), "users": np.zeros(nh, np.int32),
            })  # fmt: skip
            gi = np.repeat(np.arange(hosts * gpus), len(k))
            u = util[:, k].reshape(-1)
            hd = held[:, k].reshape(-1)
            ng = len(gi)
            cols["gpu_samples"] = _columns("gpu_samples", ng, {
                "host": pa.array(np.array(names, dtype=object)[gi // gpus], pa.string()),
                "ts": np.tile(ts, hosts * gpus), "gpu_index": (gi % gpus).astype(np.int32),
                "uuid": pa.array([f"GPU-{i:05d}" for i in gi], pa.string()),
                "name": pa.array(["NVIDIA A100-SXM4-80GB"] * ng, pa.string()),
                "utilization_gpu_percent": u.astype(np.float32),
                "memory_used_bytes": np.where(hd, 40 * GIB, 0).astype(np.int64),
                "memory_total_bytes": np.full(ng, 80 * GIB, np.int64),
                "power_watts": (60 + 3.4 * u).astype(np.float32),
                "processes": hd.astype(np.int32), "xid_events": np.zeros(ng, np.int32),
            })  # fmt: skip
            written += store.insert_raw(cols)
        insert_s = time.perf_counter() - clock
        end = t0 + steps * step
        clock = time.perf_counter()
        cpu = time.process_time()
        store.rollup(now=end, tz="UTC", busy_util_percent=BUSY_PERCENT)
        rollup_s, rollup_cpu = time.perf_counter() - clock, time.process_time() - cpu
    finally:
        store.close()
    size = sum(p.stat().st_size for p in data_dir.glob("gpufleet.duckdb*"))
    return {"rows": written, "insert_s": insert_s, "rollup_s": rollup_s,
            "rollup_cpu_s": rollup_cpu, "bytes": size}  # fmt: skip


def _columns(table: str, n: int, given: dict[str, Any]) -> dict[str, Any]:
    """Every column of the raw table: the given ones, nulls for the rest."""
    out: dict[str, Any] = {}
    for c in TABLE_COLUMNS[table]:
        out[c] = given[c] if c in given else pa.nulls(n)
    return out


class GpufleetServer:
    def __init__(self, data_dir: Path, src: Path | None = None) -> None:
        self.data_dir = data_dir
        self.src = src  # run this source tree instead of the installed package
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GpufleetServer:
        env = dict(os.environ)
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        with open(self.data_dir / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpufleet", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        wait_http(self.url + "/healthz", self.proc, self.data_dir / "server.log")
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    def report(self, *, fresh: bool = False, **params: str) -> tuple[bytes, str]:
        """The answer's bytes and how the server made it (its X-Report-Cache header: hit,
        miss; empty from a server without one). ``fresh``: ask it to read the tiers now."""
        headers = {"Cache-Control": "no-cache"} if fresh else {}
        url = f"{self.url}/api/v1/reports?{urllib.parse.urlencode(params)}"
        body, got = fetch(url, headers)
        return body, got.get("x-report-cache", "")


# -- Prometheus's side --------------------------------------------------------------------------


def write_prometheus(work: Path, util: np.ndarray, hosts: int, gpus: int, t0: int,
                     step: int) -> dict[str, float]:  # fmt: skip
    """OpenMetrics text per 2-hour block, through promtool into TSDB blocks."""
    blocks = work / "prom-data"
    blocks.mkdir()
    text_dir = work / "openmetrics"
    text_dir.mkdir()
    labels = [
        f'{METRIC}{{host="{host_name(g // gpus)}",gpu="{g % gpus}"}} ' for g in range(hosts * gpus)
    ]
    steps = util.shape[1]
    per_block = BLOCK_SECONDS // step
    text_s = promtool_s = 0.0
    size = 0
    for b0 in range(0, steps, per_block):
        clock = time.perf_counter()
        k = np.arange(b0, min(steps, b0 + per_block))
        stamps = [f" {t0 + int(i) * step}\n" for i in k]
        lines = [f"# TYPE {METRIC} gauge\n"]
        for g, prefix in enumerate(labels):
            vals = util[g, k].tolist()
            lines.extend(prefix + str(v) + s for v, s in zip(vals, stamps, strict=True))
        lines.append("# EOF\n")
        path = text_dir / f"block-{b0:06d}.om"
        path.write_text("".join(lines))
        size += path.stat().st_size
        text_s += time.perf_counter() - clock
        clock = time.perf_counter()
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(path),
             str(blocks)],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        promtool_s += time.perf_counter() - clock
        path.unlink()
    return {"text_s": text_s, "promtool_s": promtool_s, "text_bytes": size}


class Prometheus:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        config = self.work / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
        with open(self.work / "prometheus.log", "ab") as out:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={self.work / 'prom-data'}",
                 "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--query.timeout=30m", "--query.max-samples=500000000"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_http(self.url + "/-/ready", self.proc, self.work / "prometheus.log", deadline=300)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    def metric(self, name: str) -> float:
        for line in (
            urllib.request.urlopen(self.url + "/metrics", timeout=60).read().decode().splitlines()
        ):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")

    def settle(self, deadline_s: float = 1800) -> int:
        """Wait until compaction has merged the 2-hour blocks (the block count unchanged over
        two compaction cycles, which run once a minute): a long-running Prometheus would hold
        its month in a few large blocks, and that is the fair comparison."""
        end = time.monotonic() + deadline_s
        last, same = -1.0, 0
        while time.monotonic() < end:
            blocks = self.metric("prometheus_tsdb_blocks_loaded")
            running = self.metric("prometheus_tsdb_compactions_total")
            log(f"prometheus: {blocks:.0f} blocks loaded, {running:.0f} compactions so far")
            same = same + 1 if blocks == last else 0
            if same >= 3 or (same >= 2 and running > 0):
                return int(blocks)
            last = blocks
            time.sleep(65)
        return int(last)

    def query(self, promql: str, at: float) -> bytes:
        q = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        return fetch(f"{self.url}/api/v1/query?{q}")[0]

    def query_range(self, promql: str, start: float, end: float, step: float) -> bytes:
        q = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
        return fetch(f"{self.url}/api/v1/query_range?{q}")[0]

    @staticmethod
    def data(body: bytes) -> list[dict[str, Any]]:
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise SystemExit(f"prometheus: {answer}")
        return list(answer["data"]["result"])


# -- plumbing -------------------------------------------------------------------------------------


def get_json(url: str) -> dict[str, Any]:
    return dict(json.loads(fetch(url)[0]))


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The body, to its last byte, and the response headers (names in lower case)."""
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return r.read(), {k.lower(): v for k, v in r.headers.items()}


def wait_http(
    url: str, proc: subprocess.Popen[bytes], logfile: Path, deadline: float = 120
) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited:\n{logfile.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {deadline:.0f} s")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Timing:
    """Wall seconds of the timed calls of one side: median, fastest, slowest; its answers."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.answers: list[Any] = []

    def time(self, fn: Any) -> None:
        clock = time.perf_counter()
        answer = fn()
        self.times.append(time.perf_counter() - clock)
        self.answers.append(answer)

    @property
    def answer(self) -> Any:
        return self.answers[-1]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def spread(self) -> str:
        return f"{min(self.times):.4f}-{max(self.times):.4f}"


def interleaved(sides: dict[str, Any], runs: int) -> dict[str, Timing]:
    """Each side's call once to warm up, then ``runs`` rounds of one timed call per side, the
    order turned by one each round: a burst of load on the shared machine falls on every
    side alike rather than on whichever was being timed."""
    for fn in sides.values():
        fn()
    timings = {name: Timing() for name in sides}
    names = list(sides)
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            timings[name].time(sides[name])
    return timings


def decode_seconds(body: bytes, runs: int) -> float:
    """Median seconds this Python client takes to decode the answer (json.loads)."""
    times = []
    for _ in range(runs):
        clock = time.perf_counter()
        json.loads(body)
        times.append(time.perf_counter() - clock)
    return statistics.median(times)


# -- the questions ------------------------------------------------------------------------------


def gpu_key(row_key: str) -> tuple[str, str]:
    """gpufleet's per-GPU key ``host/index`` (or ``host:index``) as (host, index)."""
    for sep in ("/", ":", "#"):
        if sep in row_key:
            host, index = row_key.rsplit(sep, 1)
            return host, index
    raise SystemExit(f"unexpected GPU key {row_key!r}")


def compare(name: str, ours: dict[Any, float], theirs: dict[Any, float], tol: float) -> str:
    keys = set(ours) | set(theirs)
    missing = len(keys - set(ours)) + len(keys - set(theirs))
    diffs = [abs(ours[k] - theirs[k]) for k in keys if k in ours and k in theirs]
    worst = max(diffs) if diffs else float("nan")
    ok = missing == 0 and worst <= tol
    verdict = "agree" if ok else "DISAGREE"
    return (f"{name}: {len(diffs)} values, {missing} missing on one side, largest difference "
            f"{worst:.4g} (allowed {tol:g}): {verdict}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--step", type=int, default=100, help="seconds between samples")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per question (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    ap.add_argument(
        "--reuse", action="store_true",
        help="with --keep: time the data an earlier run left there (same options) again",
    )  # fmt: skip
    ap.add_argument(
        "--baseline-src", type=Path, default=None,
        help="also time a gpufleet server run from this source tree (a 'src' folder)",
    )  # fmt: skip
    args = ap.parse_args()
    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        raise SystemExit("needs promtool and prometheus on PATH (make setup installs them)")
    if 86400 % args.step or BLOCK_SECONDS % args.step:
        raise SystemExit("--step must divide a day and two hours")
    if args.reuse and args.keep is None:
        raise SystemExit("--reuse needs --keep DIR (the folder of an earlier run)")
    if args.baseline_src is not None and not (args.baseline_src / "gpufleet").is_dir():
        raise SystemExit(f"--baseline-src {args.baseline_src}: no gpufleet package in it")

    first = date(2026, 11, 1)
    last = first + timedelta(days=args.days - 1)
    if last.month != first.month:
        raise SystemExit("--days: at most 30 (the month questions read November 2026)")
    t0 = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    steps = args.days * 86400 // args.step
    end = t0 + steps * args.step
    work = args.keep or Path(tempfile.mkdtemp(prefix="gpufleet-vs-prom-"))
    work.mkdir(parents=True, exist_ok=True)
    n_gpus = args.hosts * args.gpus
    gf_dir = work / "gpufleet"
    built = work / "built.json"  # what the run that wrote the data measured, and its options
    options = {k: getattr(args, k) for k in ("hosts", "gpus", "days", "step", "seed")}
    log(f"fleet: {args.hosts} hosts x {args.gpus} GPUs, {args.days} days at {args.step} s: "
        f"{n_gpus * steps:,} GPU samples; work in {work}")  # fmt: skip
    if args.reuse:
        if not (gf_dir / "gpufleet.duckdb").exists() or not (work / "prom-data").is_dir():
            raise SystemExit(f"--reuse: {work} holds no earlier run's data")
        setup = json.loads(built.read_text()) if built.exists() else {"options": options}
        if setup["options"] != options:
            raise SystemExit(f"--reuse: {work} was written with {setup['options']}")
        gf, pm = setup.get("gpufleet"), setup.get("prometheus")
        log("reusing the data written earlier")
    else:
        util, held = make_fleet(args.hosts, args.gpus, steps, args.step, args.seed)
        gf_dir.mkdir(exist_ok=True)
        log("gpufleet: writing raw samples and rolling them up")
        gf = write_gpufleet(gf_dir, util, held, args.hosts, args.gpus, t0, args.step)
        log(f"gpufleet: {gf['rows']:,} rows in {gf['insert_s']:.0f} s, "
            f"rollup {gf['rollup_s']:.0f} s")  # fmt: skip
        log("prometheus: OpenMetrics text through promtool")
        pm = write_prometheus(work, util, args.hosts, args.gpus, t0, args.step)
        log(f"prometheus: text {pm['text_s']:.0f} s, promtool {pm['promtool_s']:.0f} s")
        built.write_text(json.dumps({"options": options, "gpufleet": gf, "prometheus": pm}))
    base_dir = None
    if args.baseline_src is not None:  # its own copy: one process per DuckDB file
        base_dir = work / "gpufleet-baseline"
        shutil.rmtree(base_dir, ignore_errors=True)
        base_dir.mkdir()
        shutil.copy2(gf_dir / "gpufleet.duckdb", base_dir / "gpufleet.duckdb")

    rows: list[dict[str, Any]] = []
    checks: list[str] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(GpufleetServer(gf_dir))
        base = (
            stack.enter_context(GpufleetServer(base_dir, args.baseline_src.resolve()))
            if base_dir is not None and args.baseline_src is not None
            else None
        )
        prom = stack.enter_context(Prometheus(work))
        blocks = prom.settle()
        span = {"from": first.isoformat(), "to": last.isoformat()}
        month_end = end - 1  # the instant that closes the range: (end - 30d - 1, end - 1]
        rng = f"{args.days}d"

        def ask(name: str, params: dict[str, str], promql: Any) -> dict[str, Any]:
            """Time one question on every side, interleaved: gpufleet read now and kept,
            the baseline (if given), PromQL; check that gpufleet's answers have the same
            content; the row of figures, with both answers."""
            sides = {
                "now": lambda: server.report(fresh=True, **params),
                "kept": lambda: server.report(**params),
                "prom": promql,
            }
            if base is not None:
                sides["baseline"] = lambda: base.report(**params)
            t = interleaved(sides, args.runs)
            said = {how for _, how in t["now"].answers}, {how for _, how in t["kept"].answers}
            if said != ({"miss"}, {"hit"}):
                raise SystemExit(f"{name}: the server said {said}, not read now / kept")
            answer = content(t["now"].answer[0])
            for what in ("kept", "baseline"):
                if what in t and content(t[what].answer[0]) != answer:
                    raise SystemExit(f"{name}: the {what} answer differs from the one read now")
            row = {"name": name, **t, "bytes": len(t["now"].answer[0]),
                   "decode": decode_seconds(t["now"].answer[0], args.runs),
                   "prom_bytes": len(t["prom"].answer),
                   "prom_decode": decode_seconds(t["prom"].answer, args.runs)}  # fmt: skip
            rows.append(row)
            return {"answer": answer, "prom": prom.data(t["prom"].answer)}

        # 1. per-GPU daily average
        got = ask(f"per-GPU daily average, {args.days} days",
                  {"period": "day", "by": "gpu", **span},
                  lambda: prom.query_range(f"avg_over_time({METRIC}[1d])", t0 + 86400 - 1,
                                           end - 1, 86400))  # fmt: skip
        ours = {(*gpu_key(r["key"]), r["period_start"][:10]): r["avg_util"]
                for r in got["answer"]["rows"]}  # fmt: skip
        theirs = {
            (s["metric"]["host"], s["metric"]["gpu"],
             datetime.fromtimestamp(float(t) + 1 - 86400, UTC).date().isoformat()): float(v)
            for s in got["prom"] for t, v in s["values"]
        }  # fmt: skip
        checks.append(compare("daily average", ours, theirs, 1e-3))
        # the same, asking gpufleet for only the values PromQL answers with (fields=)
        got = ask(f"per-GPU daily average, {args.days} days, fields=period_start,key,avg_util",
                  {"period": "day", "by": "gpu", **span, "fields": "period_start,key,avg_util"},
                  lambda: prom.query_range(f"avg_over_time({METRIC}[1d])", t0 + 86400 - 1,
                                           end - 1, 86400))  # fmt: skip
        ours = {(*gpu_key(r["key"]), r["period_start"][:10]): r["avg_util"]
                for r in got["answer"]["rows"]}  # fmt: skip
        checks.append(compare("daily average (fields)", ours, theirs, 1e-3))

        # 2. per-GPU p95 and 3. busy hours over the month (one gpufleet report answers both;
        # it is timed again beside each PromQL query)
        month = {"period": "month", "by": "gpu", **span}
        got = ask("per-GPU p95 utilisation, month", month, lambda: prom.query(
            f"quantile_over_time(0.95, {METRIC}[{rng}])", month_end))  # fmt: skip
        rep = got["answer"]
        ours = {gpu_key(r["key"]): r["p95_util"] for r in rep["rows"]}
        theirs = {(s["metric"]["host"], s["metric"]["gpu"]): float(s["value"][1])
                  for s in got["prom"]}  # fmt: skip
        checks.append(compare("p95", ours, theirs, rep.get("p95_error_bound_percent", 5.0)))
        got = ask("per-GPU busy hours, month (the same report)", month, lambda: prom.query(
            f"sum_over_time(({METRIC} > bool {BUSY_PERCENT:g})[{rng}:{args.step}s]) "
            f"* {args.step} / 3600", month_end))  # fmt: skip
        ours = {gpu_key(r["key"]): r["busy_gpu_hours"] for r in got["answer"]["rows"]}
        theirs = {(s["metric"]["host"], s["metric"]["gpu"]): float(s["value"][1])
                  for s in got["prom"]}  # fmt: skip
        checks.append(compare("busy hours", ours, theirs, 1e-3))

        # 4. a month by host
        got = ask("a month by host (average utilisation)",
                  {"period": "month", "by": "host", **span},
                  lambda: prom.query(f"avg by (host) (avg_over_time({METRIC}[{rng}]))",
                                     month_end))  # fmt: skip
        ours = {r["key"]: r["avg_util"] for r in got["answer"]["rows"]}
        theirs = {s["metric"]["host"]: float(s["value"][1]) for s in got["prom"]}
        checks.append(compare("month by host", ours, theirs, 1e-3))

    print(f"\n#### gpufleet vs Prometheus {prometheus_version()}: {args.hosts} hosts x "
          f"{args.gpus} GPUs, {args.days} days at {args.step} s ({n_gpus * steps:,} GPU "
          f"samples), median of {args.runs} after a warm-up (fastest-slowest), both over HTTP "
          "on loopback, to the answer's last byte\n")  # fmt: skip
    head = "| question | gpufleet read now s | gpufleet kept s | PromQL s | PromQL / read now " \
        "| PromQL / kept |"  # fmt: skip
    if base is not None:
        head = "| question | baseline s " + head[len("| question ") :] + " baseline / read now |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        now, kept, pq = r["now"], r["kept"], r["prom"]
        cells = [r["name"]]
        if base is not None:
            cells.append(f"{r['baseline'].median:.4f} ({r['baseline'].spread()})")
        cells += [f"{now.median:.4f} ({now.spread()})", f"{kept.median:.4f} ({kept.spread()})",
                  f"{pq.median:.4f} ({pq.spread()})", f"{pq.median / now.median:.3g}x",
                  f"{pq.median / kept.median:.3g}x"]  # fmt: skip
        if base is not None:
            cells.append(f"{r['baseline'].median / now.median:.3g}x")
        print("| " + " | ".join(cells) + " |")
    print("\nThe answers' sizes and this Python client's json.loads of them (not in the times "
          "above):\n")  # fmt: skip
    print("| question | gpufleet bytes | decode s | Prometheus bytes | decode s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['bytes']:,} | {r['decode']:.4f} | {r['prom_bytes']:,} | "
              f"{r['prom_decode']:.4f} |")  # fmt: skip
    print()
    for check in checks:
        print(f"- {check}")
    if base is not None:
        print(f"- baseline ({args.baseline_src}): the same answers as gpufleet's, on a copy of "
              "the same store")  # fmt: skip
    if pm is not None:
        print(f"- Prometheus: {blocks} blocks after compaction; OpenMetrics text "
              f"{pm['text_bytes'] / 1e6:.0f} MB (made in {pm['text_s']:.0f} s), promtool "
              f"{pm['promtool_s']:.0f} s")  # fmt: skip
    if gf is not None:
        print(
            f"- gpufleet: {gf['rows']:,} raw rows written in {gf['insert_s']:.0f} s; the rollup "
            f"(paid once, as data arrives, not per question): {gf['rollup_s']:.0f} s wall, "
            f"{gf['rollup_cpu_s']:.0f} s CPU in this process; store {gf['bytes'] / 1e6:.0f} MB"
        )
    if args.reuse:
        print(f"- data written by an earlier run in {work} (its figures above, if it kept them)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def content(body: bytes) -> dict[str, Any]:
    """A report answer without what may differ between two reads: the time it took."""
    answer = dict(json.loads(body))
    answer.pop("query_ms", None)
    return answer


def prometheus_version() -> str:
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout
    return out.split()[2] if out.split()[:2] == ["prometheus,", "version"] else "?"


if __name__ == "__main__":
    main()
