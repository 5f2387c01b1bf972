"""The recommender's evaluation (docs/recommender.md): the same as `gpufleet evaluate-recommender`.

    .venv/bin/python bench/recommend_bench.py --vc 11cb48 --load 0.8 --seeds 3   # one cluster
    .venv/bin/python bench/recommend_bench.py --quick    # seconds, a small lab
    .venv/bin/python bench/recommend_bench.py --json > out.json
    .venv/bin/python bench/recommend_bench.py --digest a.json b.json   # one line per scenario
    .venv/bin/python bench/recommend_bench.py --http     # POST /api/v1/recommendations, 1,000 hosts
    .venv/bin/python bench/recommend_bench.py --calibration fit --vc 11cb48 --seeds 100,101
    .venv/bin/python bench/recommend_bench.py --calibration report --vc ed69ec --seeds 0,1,2
    .venv/bin/python bench/recommend_bench.py --calibration tune --runs a.json b.json
    .venv/bin/python bench/recommend_bench.py --eta --vc ed69ec --seeds 0,1,2

``--calibration fit`` replays the clusters (nobody follows the answers), fits the stated
chance's map (recommend/calibrate.py) on every answer's features and outcome and prints the
constants to paste as ``calibrate.DEFAULT``; ``report`` prints the reliability table of the
stated chance (the offline map alone, and recalibrated online on each replay's own settled
answers, recommend/online.py) on other clusters or seeds (``--save-runs FILE``: every
answer of every replay, for ``tune``); ``tune`` replays the online map with other
``OnlineParams`` on saved runs (tune on the training clusters' tuning seeds only).

``--eta`` runs gpufleet's closed loop alone per cluster x load x habit x seed and prints
the time-to-free table: the estimate's error and the share of actual times inside the
stated 80% range, from past holds and from this fleet's past estimates (online.EtaLedger).

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
    ap.add_argument("mode", choices=("fit", "report", "tune"))
    ap.add_argument("--vc", action="append", default=[])
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
    ap.add_argument("--save-runs", help="report: every answer of every replay (JSON), for tune")
    ap.add_argument("--runs", nargs="*", default=[], help="tune: --save-runs files")
    ap.add_argument("--prior", default="10,30,100", help="tune: prior weights to try")
    ap.add_argument("--half-life", default="24,168", help="tune: half-lives (h) to try")
    ap.add_argument("--top", default="false,true", help="tune: learn from top answers too")
    ap.add_argument("--slope", default="false,true", help="tune: fit the slope too")
    ap.add_argument("--no-online", action="store_true",
                    help="report: the offline map alone (no recalibration on the fleet's answers)")
    a = ap.parse_args(argv)
    if a.mode == "tune":
        tune(a.runs, [float(x) for x in a.prior.split(",")],
             [float(x) for x in a.half_life.split(",")],
             [x == "true" for x in a.top.split(",")], [x == "true" for x in a.slope.split(",")])
        return
    if a.mode == "report":
        report(a)
        return
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


def _worst(c: dict) -> str:
    rows = [r for r in c["rows"] if r["answers"] >= 100]
    w = max((abs(r["error_points"]) for r in rows), default=float("nan"))
    over = sum(1 for r in rows if abs(r["error_points"]) >= 5)
    return (f"Brier {c['brier']:.4f} vs base {c['brier_base_rate']:.4f}; worst decile error"
            f" (>= 100 answers) {w:.1f} points, {over} of {len(rows)} such deciles at 5 or more")


def report(a) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    import json

    from gpufleet.philly import load_trace as read_trace
    from gpufleet.recommend.evalreport import reliability_text
    from gpufleet.recommend.evaluate import Config, calibration_study, reliability
    from gpufleet.recommend.lab import HABITS
    from gpufleet.recommend.online import DEFAULT_PARAMS

    trace = read_trace()
    cfg = Config(hosts=a.hosts, scored_jobs=a.scored_jobs)
    seeds = [int(x) for x in a.seeds.split(",")]
    runs = []
    for vc in a.vc:
        for load in a.load or [0.8, 1.0, 1.5]:
            for habit in a.habit or list(HABITS):
                for seed in seeds:
                    said = calibration_study(trace, cfg, vc, load, habit, seed,
                                             online=None if a.no_online else DEFAULT_PARAMS)  # fmt: skip
                    print(f"{vc} load {load:g} {habit} seed {seed}: {len(said)} answers,"
                          f" {sum(x.scored for x in said)} scored", file=sys.stderr, flush=True)  # fmt: skip
                    runs.append({"vc": vc, "load": load, "habit": habit, "seed": seed,
                                 "answers": [dataclasses.asdict(x) for x in said]})  # fmt: skip
    if a.save_runs:
        Path(a.save_runs).write_text(json.dumps(runs))
    if a.save:  # the scored answers as --samples / --heldout files of ``fit`` read them
        Path(a.save).write_text(json.dumps(
            [(x["stated"], x["ok"], x["known"], x["features"], x["p0"])
             for r in runs for x in r["answers"] if x["scored"]]))  # fmt: skip
    where = f"vc {', '.join(a.vc)}; loads {a.load or [0.8, 1.0, 1.5]}; seeds {a.seeds}"
    scored = [x for r in runs for x in r["answers"] if x["scored"]]
    for label, key in (("offline map alone", "p0"), ("stated: recalibrated online", "stated")):
        c = reliability([(x[key], x["ok"]) for x in scored])
        print(reliability_text(c, f"{label} ({where})"))
        if c["answers"]:
            print(_worst(c))
        for vc in a.vc if len(a.vc) > 1 else []:
            cv = reliability([(x[key], x["ok"]) for r in runs if r["vc"] == vc
                              for x in r["answers"] if x["scored"]])  # fmt: skip
            if cv["answers"]:
                print(f"  {vc}: {cv['answers']} answers, base rate {100 * cv['base_rate']:.0f}%;"
                      f" {_worst(cv)}")  # fmt: skip
        print()


def tune(paths: list[str], priors: list[float], half_lives: list[float], tops: list[bool],
         slopes: list[bool]) -> None:  # fmt: skip
    """The online map with other parameters, replayed on saved runs (each run its own
    fleet and ledger): one line per parameter set."""
    import itertools
    import json

    from gpufleet.recommend.evaluate import Answered, reliability, replay_online
    from gpufleet.recommend.online import OnlineParams

    runs = [r for p in paths for r in json.loads(Path(p).read_text())]
    said = [[Answered(**{**x, "gpus": tuple(x["gpus"]), "features": tuple(x["features"]),
                         "first_takes": tuple(x["first_takes"])}) for x in r["answers"]]
            for r in runs]  # fmt: skip
    scored = [(x.p0, x.ok) for run in said for x in run if x.scored]
    print(f"{len(runs)} runs, {len(scored)} scored answers")
    print("offline map alone:", _worst(reliability(scored)))
    for top, slope, prior, hl in itertools.product(tops, slopes, priors, half_lives):
        params = OnlineParams(prior_weight=prior, half_life_hours=hl, slope=slope,
                              top_answers=top)  # fmt: skip
        rows = []
        for run in said:
            stated = replay_online(run, params)
            rows += [(p, x.ok) for p, x in zip(stated, run, strict=True) if x.scored]
        print(f"top {top!s:5} slope {slope!s:5} prior {prior:5g} half-life {hl:5g} h:",
              _worst(reliability(rows)), flush=True)  # fmt: skip


def eta_table(argv: list[str]) -> None:
    import argparse

    from gpufleet.philly import load_trace as read_trace
    from gpufleet.recommend.baselines import all_recommenders
    from gpufleet.recommend.evaluate import Config, eta_summary, run_scenario
    from gpufleet.recommend.lab import HABITS

    ap = argparse.ArgumentParser(prog="recommend_bench.py --eta")
    ap.add_argument("--vc", action="append", required=True)
    ap.add_argument("--load", action="append", type=float)
    ap.add_argument("--habit", action="append", choices=HABITS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--scored-jobs", type=int, default=300)
    a = ap.parse_args(argv)
    trace = read_trace()
    cfg = Config(hosts=a.hosts, scored_jobs=a.scored_jobs)
    seeds = [int(x) for x in a.seeds.split(",")]
    print("| cluster | load | estimates | abs. error median h | p90 h | predicted median h |"
          " actual median h | inside the range from past holds | inside the stated range |"
          " below it | stated high/low, median | range from past estimates | inside then:"
          " stated / past holds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    every: list[tuple[float, ...]] = []
    for vc in a.vc:
        for load in a.load or [0.8, 1.0, 1.5]:
            errs: list[tuple[float, ...]] = []
            for habit in a.habit or list(HABITS):
                for seed in seeds:
                    recs = {"gpufleet": all_recommenders(seed)["gpufleet"]}
                    _, e = run_scenario(trace, cfg, vc, load, habit, seed, recs=recs)
                    errs += e
            every += errs
            print(_eta_row(vc, f"{load:g}", eta_summary(errs)), flush=True)
    print(_eta_row("all", "", eta_summary(every)))


def _eta_row(vc: str, load: str, e: dict) -> str:
    if not e.get("estimates"):
        return f"| {vc} | {load} | 0 | | | | | | | | | | |"
    return (f"| {vc} | {load} | {e['estimates']} | {e['abs_error_median_hours']:.2f} |"
            f" {e['abs_error_p90_hours']:.2f} | {e['predicted_median_hours']:.2f} |"
            f" {e['actual_median_hours']:.2f} | {100 * e['inside_own_interval']:.0f}% |"
            f" {100 * e['inside_interval']:.0f}% | {100 * e['below_interval']:.0f}% |"
            f" {e['range_width_median_ratio']:.1f}x | {100 * e['from_past_estimates']:.0f}% |"
            + (f" {100 * e['inside_when_from_past']:.0f}% / {100 * e['inside_own_when_from_past']:.0f}% |"
               if e["from_past_estimates"] else " - |"))  # fmt: skip


def digest(paths: list[str]) -> None:
    import json

    from gpufleet.recommend.evalreport import digest_text

    print(digest_text([json.loads(Path(p).read_text()) for p in paths]))


if __name__ == "__main__":
    if "--http" in sys.argv[1:]:
        http_bench()
    elif sys.argv[1:2] == ["--calibration"]:
        calibration(sys.argv[2:])
    elif sys.argv[1:2] == ["--eta"]:
        eta_table(sys.argv[2:])
    elif sys.argv[1:2] == ["--digest"]:
        digest(sys.argv[2:])
    else:
        evaluate_recommender.main(sys.argv[1:], prog_name="recommend_bench.py")
