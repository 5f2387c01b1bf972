"""The recommender's evaluation (docs/recommender.md): the same as `gpufleet evaluate-recommender`.

    .venv/bin/python bench/recommend_bench.py --vc 11cb48 --load 0.8 --seeds 3   # one cluster
    .venv/bin/python bench/recommend_bench.py --quick    # seconds, a small lab
    .venv/bin/python bench/recommend_bench.py --json > out.json
    .venv/bin/python bench/recommend_bench.py --digest a.json b.json   # one line per scenario
    .venv/bin/python bench/recommend_bench.py --http     # POST /api/v1/recommendations, 1,000 hosts
    .venv/bin/python bench/recommend_bench.py --calibration fit --vc 11cb48 --seeds 100,101
    .venv/bin/python bench/recommend_bench.py --calibration report --vc ed69ec --seeds 0,1,2

``--calibration fit`` replays the clusters (nobody follows the answers), fits the stated
chance's map (recommend/calibrate.py) on every answer's features and outcome and prints the
constants to paste as ``calibrate.DEFAULT``; ``report`` prints the reliability table of the
stated chance (and of the ranking model's own chance beside it) on other clusters or seeds.

``--http`` starts a real ``gpufleet server`` (temp data dir), ingests one sample from each of
1,000 8-GPU hosts (0-8 GPUs held each) and times answers over HTTP: several within one
snapshot, then one per fresh snapshot (1.1 s apart, no new samples in between).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from gpufleet.recommend.cli import evaluate_recommender
from gpufleet.wire import Batch, Gpu, GpuProcess, HostMetrics, Sample

GIB = 2**30


def _sample(i: int, now: float) -> Sample:
    busy = i % 9
    gpus = [Gpu(index=g, name="NVIDIA A100-SXM4-80GB", memory_total_bytes=80 * GIB,
                memory_used_bytes=30 * GIB if g < busy else 0, utilization_gpu_percent=90.0
                if g < busy else 0.0, temperature_celsius=50.0) for g in range(8)]  # fmt: skip
    procs = [GpuProcess(pid=1000 + g, gpu_index=g, user="u", command="python train.py",
                        started_at=now - 3600) for g in range(busy)]  # fmt: skip
    return Sample(host=f"host-{i:04d}", ts=now, gpus=gpus, processes=procs,
                  host_metrics=HostMetrics(load1=4.0, cpu_count=64))  # fmt: skip


def http_bench(hosts: int = 1000) -> None:
    data = Path(tempfile.mkdtemp(prefix="gpufleet-rec-bench-"))
    gf = [sys.executable, "-m", "gpufleet"]
    token = subprocess.run([*gf, "token", "create", "bench", "--data-dir", str(data)],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    port = 18000 + uuid.uuid4().int % 2000
    url = f"http://127.0.0.1:{port}"
    log = open(data / "server.log", "wb")  # noqa: SIM115
    srv = subprocess.Popen([*gf, "server", "--data-dir", str(data), "--port", str(port)],
                           stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        now = time.time()
        for a in range(0, hosts, 250):
            batch = Batch(batch_id=f"bench-{uuid.uuid4().hex}", sent_at=now,
                          samples=[_sample(i, now) for i in range(a, min(hosts, a + 250))])  # fmt: skip
            r = httpx.post(url + "/api/v1/ingest", content=batch.model_dump_json(), timeout=60,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})  # fmt: skip
            r.raise_for_status()
        time.sleep(2)
        bodies = [{"gpus": g, "gpu_mem_gb": m, "hours": h, "model": "resnet50"}
                  for g, m, h in [(1, 16, 1), (2, 40, 6), (4, 60, 12), (8, 70, 24), (1, 8, 0.5)]]  # fmt: skip
        with httpx.Client(timeout=30) as c:
            c.post(url + "/api/v1/recommendations", json=bodies[0]).raise_for_status()
            for label, pause, n in (("same snapshot", 0.0, 50), ("fresh snapshot", 1.1, 15)):
                wall, inner = [], []
                for k in range(n):
                    time.sleep(pause)
                    t = time.perf_counter()
                    r = c.post(url + "/api/v1/recommendations", json=bodies[k % len(bodies)])
                    wall.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                    inner.append(r.json()["answered_in_ms"])
                print(f"{hosts} hosts, {label}: HTTP p50 {statistics.median(wall):.1f} ms, "
                      f"max {max(wall):.1f} ms; ranking p50 {statistics.median(inner):.2f} ms")  # fmt: skip
    finally:
        srv.terminate()
        srv.wait(20)
        log.close()


def calibration(argv: list[str]) -> None:
    import argparse
    import json

    import numpy as np

    from gpufleet.philly import load_trace as read_trace
    from gpufleet.recommend import calibrate
    from gpufleet.recommend.evalreport import reliability_text
    from gpufleet.recommend.evaluate import Config, calibration_samples, reliability
    from gpufleet.recommend.lab import HABITS

    ap = argparse.ArgumentParser(prog="recommend_bench.py --calibration")
    ap.add_argument("mode", choices=("fit", "report"))
    ap.add_argument("--vc", action="append", required=True)
    ap.add_argument("--load", action="append", type=float)
    ap.add_argument("--habit", action="append", choices=HABITS)
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--scored-jobs", type=int, default=300)
    ap.add_argument("--samples", action="append", default=[],
                    help="read the samples from these --save files instead of replaying")
    ap.add_argument("--save", help="write the samples (JSON) here")
    ap.add_argument("--features", default="model_log_odds,log_hours,history_stay_log_odds",
                    help="fit: the features of calibrate.FEATURES the logistic step uses")
    ap.add_argument("--heldout", action="append", default=[],
                    help="fit: also apply the fitted map to these --save files (other clusters"
                    " or seeds) and print their reliability table, pooled and per file")
    a = ap.parse_args(argv)
    trace = read_trace()
    cfg = Config(hosts=a.hosts, scored_jobs=a.scored_jobs)
    seeds = [int(x) for x in a.seeds.split(",")]
    samples: list = []
    weight: list[float] = []  # every --samples file (a cluster) counts the same
    for path in a.samples:
        got = [tuple(s) for s in json.loads(Path(path).read_text())]
        samples += got
        weight += [1.0 / max(1, len(got))] * len(got)
    for vc in a.vc if not a.samples else []:
        for load in a.load or [0.8, 1.0, 1.5]:
            for habit in a.habit or list(HABITS):
                for seed in seeds:
                    got = calibration_samples(trace, cfg, vc, load, habit, seed)
                    print(f"{vc} load {load:g} {habit} seed {seed}: {len(got)} answers",
                          file=sys.stderr, flush=True)  # fmt: skip
                    samples += got
    if a.save:
        Path(a.save).write_text(json.dumps(samples))
    # the features the current calibrate.FEATURES knows (older files may carry more)
    x = np.asarray([s[3][: len(calibrate.FEATURES)] for s in samples])
    ok = np.asarray([s[1] for s in samples])
    model_p = 1 / (1 + np.exp(-x[:, 0]))
    where = f"vc {', '.join(a.vc)}; loads {a.load or [0.8, 1.0, 1.5]}; seeds {a.seeds}"
    print(reliability_text(reliability([(float(p), bool(o)) for p, o in zip(model_p, ok, strict=True)]),
                           f"the ranking model's own chance ({where})"))  # fmt: skip
    if a.mode == "fit":
        cal = calibrate.fit(x, ok, np.asarray(weight) if weight else None,
                            fitted_on=f"{where}; {a.hosts} hosts",
                            used=tuple(a.features.split(",")))  # fmt: skip
        stated = cal.apply(x)
        print(reliability_text(reliability([(float(p), bool(o)) for p, o in zip(stated, ok, strict=True)]),
                               f"stated chance, in-sample ({where})"))  # fmt: skip
        for path in a.heldout + (["pooled"] if len(a.heldout) > 1 else []):
            files = a.heldout if path == "pooled" else [path]
            held = [s for f in files for s in json.loads(Path(f).read_text())]
            hx = np.asarray([s[3][: len(calibrate.FEATURES)] for s in held])
            hp = cal.apply(hx) if len(hx) else np.zeros(0)
            rows = [(float(p), bool(s[1])) for p, s in zip(hp, held, strict=True)]
            print(reliability_text(reliability(rows), f"held out: {', '.join(files)}"))
        print(f"\nDEFAULT = {cal!r}")
    else:
        print(reliability_text(reliability(samples), f"stated chance ({where})"))


def digest(paths: list[str]) -> None:
    import json

    from gpufleet.recommend.evalreport import digest_text

    print(digest_text([json.loads(Path(p).read_text()) for p in paths]))


if __name__ == "__main__":
    if "--http" in sys.argv[1:]:
        http_bench()
    elif sys.argv[1:2] == ["--calibration"]:
        calibration(sys.argv[2:])
    elif sys.argv[1:2] == ["--digest"]:
        digest(sys.argv[2:])
    else:
        evaluate_recommender.main(sys.argv[1:], prog_name="recommend_bench.py")
