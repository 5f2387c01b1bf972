"""Latency of one answer (with its reasons) on a large fleet, per path (bench and docs).

A fleet of ``n`` hosts of the lab's shapes with 28 days of drawn hour-tier history (holds of
geometric length), then requests timed on each path the server meets:

- ``fits (cached index)``: something fits; the snapshot's arrays are shared (the server's
  normal case within ``recommend.snapshot_seconds``);
- ``fits (index built)``: the first answer after the state changed;
- ``nothing fits``: no host has the GPUs now (the time-to-free estimate and the reason);
- ``full fleet``: every GPU held.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np

from gpufleet.recommend.baselines import most_free
from gpufleet.recommend.fleet import FleetSnap, GpuSnap, HostSnap
from gpufleet.recommend.history import FleetHistory, HourlyHeld, build_history
from gpufleet.recommend.labfleet import build_lab
from gpufleet.recommend.rank import FleetIndex, recommend
from gpufleet.recommend.request import RecommendRequest

NOW = 1_800_000_000.0
HOURS = 28 * 24


def drawn_fleet(n: int, seed: int, busy: float) -> tuple[FleetSnap, FleetHistory]:
    rng = random.Random(f"latency:{seed}")
    lab = build_lab(n, seed)
    hosts = []
    for h in lab:
        s = h.shape
        gpus = []
        for g in range(h.gpu_count):
            taken = rng.random() < busy
            gpus.append(GpuSnap(
                g, s.gpu_name, s.gpu_memory_bytes, "taken" if taken else "free",
                memory_used_bytes=s.gpu_memory_bytes // 2 if taken else 300 * 2**20,
                held_since=NOW - rng.expovariate(1 / 8) * 3600 if taken else None,
            ))  # fmt: skip
        hosts.append(HostSnap(h.name, tuple(gpus), cpu_count=s.cpu_count,
                              disk_free_bytes=s.disk_free_bytes))  # fmt: skip
    keys = [(h.name, g) for h in lab for g in range(h.gpu_count)]
    nrng = np.random.default_rng(seed)
    held = np.zeros((len(keys), HOURS))
    for i in range(len(keys)):
        t, on = 0, bool(nrng.random() < 0.5)
        while t < HOURS:
            span = int(nrng.geometric(1 / (8 if on else 6)))
            held[i, t : t + span] = 1.0 if on else 0.0
            t, on = t + span, not on
    start = int(NOW // 3600) * 3600 - HOURS * 3600
    return FleetSnap(NOW, tuple(hosts)), build_history(HourlyHeld(start, keys, held), built_at=NOW)


def _requests(rng: random.Random, n: int, big: bool) -> list[RecommendRequest]:
    out = []
    for _ in range(n):
        if big:  # 8 x 70 GB: only the 8-GPU A100 hosts could hold it
            out.append(RecommendRequest(gpus=8, gpu_mem_gib=70, hours=rng.choice([2, 6, 24]),
                                        model="bert"))  # fmt: skip
        else:
            out.append(RecommendRequest(
                gpus=rng.choice([1, 1, 2, 4]), gpu_mem_gib=rng.choice([8, 16, 24, 40]),
                hours=rng.choice([0.5, 2, 6, 24]), model="resnet50",
                data_gib=rng.choice([0, 20, 200]), data_host=None,
            ))  # fmt: skip
    return out


def _time(fn: Callable[[RecommendRequest], object], reqs: list[RecommendRequest],
          clock: Callable[[], float]) -> dict[str, float]:  # fmt: skip
    """Wall and CPU (this thread's) milliseconds per answer: CPU time leaves out the waits for
    a core on a shared machine."""
    fn(reqs[0])
    wall, cpu = [], []
    for r in reqs:
        t, c = clock(), time.thread_time()
        fn(r)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((clock() - t) * 1000)
    wall.sort()
    cpu.sort()

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {"p50_ms": q(wall, 0.5), "p99_ms": q(wall, 0.99), "cpu_p50_ms": q(cpu, 0.5),
            "cpu_p99_ms": q(cpu, 0.99), "answers": float(len(wall))}  # fmt: skip


def latency_paths(n_hosts: int = 1000, requests: int = 300, seed: int = 0,
                  clock: Callable[[], float] | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    clock = clock or time.perf_counter
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    for label, busy, big in (("fits", 0.5, False), ("nothing fits", 0.5, True),
                             ("full fleet", 1.0, False)):  # fmt: skip
        snap, hist = drawn_fleet(n_hosts, seed, busy)
        reqs = _requests(rng, requests, big)
        index = FleetIndex(snap, hist)
        probe = recommend(reqs[0], snap, hist, index=index)
        if label != "fits" and probe.choices:
            raise AssertionError(f"latency fleet for {label!r} has room")  # pragma: no cover

        def cached(r: RecommendRequest, snap: FleetSnap = snap, index: FleetIndex = index,
                   hist: FleetHistory = hist) -> object:  # fmt: skip
            return recommend(r, snap, hist, index=index).as_json()

        def cold(r: RecommendRequest, snap: FleetSnap = snap, hist: FleetHistory = hist) -> object:
            return recommend(r, snap, hist).as_json()

        def rule(r: RecommendRequest, snap: FleetSnap = snap, hist: FleetHistory = hist) -> object:
            return most_free(r, snap, hist)

        out[f"{label} (cached index)"] = _time(cached, reqs, clock)
        out[f"{label} (index built)"] = _time(cold, reqs[: max(20, requests // 3)], clock)
        # side by side, the same fleet and requests: the one-line rule "most free GPUs now"
        # (a loop over the snapshot, no index, no reasons)
        out[f"{label}: baseline most free GPUs now"] = _time(rule, reqs, clock)
    return out
