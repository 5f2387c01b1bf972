"""Generated raw samples for warehouse tests, and report figures computed by brute force
straight from them (no tiers, no histogram)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, datetime
from zoneinfo import ZoneInfo

from gpufleet.warehouse import calendar as cal
from gpufleet.wire import Gpu, GpuProcess, Sample

USERS = ["alice", "bob", "carol", None]
MODELS = ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"]


def generate(
    start: float, end: float, seed: int = 1, hosts: int = 4, gpus: int = 2
) -> list[Sample]:
    """Samples from ``start`` to ``end``: hosts with different intervals, a host down for a
    few hours, one that arrives late and one that leaves, processes that come and go, GPUs
    shared by two users, missing utilisation, values right at the busy threshold."""
    rnd = random.Random(seed)
    out: list[Sample] = []
    for h in range(hosts):
        name = f"node{h}"
        interval = (60.0, 120.0, 90.0, 60.0)[h % 4]
        t = start + rnd.randrange(0, 60)
        host_start = start + (20 * 3600 if h == 3 else 0)  # arrives later
        host_end = end - (10 * 3600 if h == 2 else 0)  # leaves early
        held: dict[int, list[str | None]] = {}
        while t < end:
            if not (host_start <= t < host_end) or (
                h == 1 and start + 30 * 3600 <= t < start + 33 * 3600
            ):
                t += interval
                continue
            gpu_list, procs = [], []
            for g in range(gpus):
                if rnd.random() < 0.05:
                    held[g] = []
                elif rnd.random() < 0.05:
                    held[g] = rnd.sample(USERS, rnd.choice([1, 1, 1, 2]))
                users = held.get(g, [])
                util = (
                    None
                    if rnd.random() < 0.03
                    else rnd.choice([0.0, 5.0, 5.5, 37.5, 95.0, 100.0, rnd.randrange(0, 201) / 2])
                )
                if not users and util is not None:
                    util = min(util, 3.0)
                gpu_list.append(
                    Gpu(
                        index=g, uuid=f"GPU-{name}-{g}", name=MODELS[h % 2],
                        utilization_gpu_percent=util,
                        memory_used_bytes=rnd.randrange(0, 80) * 2**30 if users else 2**20,
                        memory_total_bytes=80 * 2**30,
                        power_watts=None if rnd.random() < 0.02 else rnd.randrange(200, 1600) / 4,
                    )
                )  # fmt: skip
                for k, u in enumerate(users):
                    for _ in range(rnd.choice([1, 1, 2])):
                        procs.append(
                            GpuProcess(
                                pid=1000 + 10 * g + k + len(procs), gpu_index=g, user=u,
                                gpu_memory_bytes=rnd.randrange(1, 20) * 2**28,
                            )
                        )  # fmt: skip
            out.append(
                Sample(host=name, ts=t, interval_seconds=interval, gpus=gpu_list, processes=procs)
            )
            t += interval
    return out


def _p_quantile(pairs: list[tuple[float, float]], q: float) -> float | None:
    """Exact time-weighted quantile: the smallest u with weight(<= u) >= q * total."""
    total = sum(w for _, w in pairs)
    if total <= 0:
        return None
    cum = 0.0
    for u, w in sorted(pairs):
        cum += w
        if cum >= q * total - 1e-9:
            return u
    return max(u for u, _ in pairs)


def brute_report(
    samples: list[Sample], *, period: str, by: str, first: date, last: date, tz: str, busy: float
) -> dict[tuple[str, str], dict]:
    """{(period_start, key): figures} computed sample by sample."""
    zone = ZoneInfo(tz)
    acc: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(float))
    utils: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    # user -> minute -> host -> max GPUs held in one sample of that minute
    held_at: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for s in samples:
        d = datetime.fromtimestamp(s.ts, zone).date()
        if not first <= d <= last:
            continue
        label = cal.period_start(d, period, first).isoformat()
        w = s.interval_seconds
        users_on: dict[int, dict[str | None, int]] = defaultdict(dict)
        for p in s.processes:
            users_on[p.gpu_index][p.user] = users_on[p.gpu_index].get(p.user, 0) + (
                p.gpu_memory_bytes or 0
            )
        per_user_gpus: dict[str, int] = defaultdict(int)
        for g in s.gpus:
            u, held = g.utilization_gpu_percent, bool(users_on.get(g.index))
            is_busy = u is not None and u > busy
            if by in ("fleet", "host", "gpu_model", "gpu"):
                key = {
                    "fleet": "fleet",
                    "host": s.host,
                    "gpu_model": g.name,
                    "gpu": f"{s.host}:{g.index}",
                }[by]
                a = acc[(label, key)]
                a["availability_hours"] += w / 3600
                a["gpu_hours"] += w / 3600 if held else 0
                a["busy_gpu_hours"] += w / 3600 if is_busy else 0
                a["idle_held_hours"] += w / 3600 if held and not is_busy else 0
                a["mem_gb_hours"] += (g.memory_used_bytes or 0) * w / 1e9 / 3600
                a["energy_kwh"] += (g.power_watts or 0) * w / 3.6e6
                if u is not None:
                    a["_uw"] += u * w
                    a["_w"] += w
                    utils[(label, key)].append((u, w))
                continue
            shares = users_on.get(g.index, {})
            for user, mem in shares.items():
                name = user if user is not None else "(unknown)"
                per_user_gpus[name] += 1
                ws = w / len(shares)
                a = acc[(label, name)]
                a["gpu_hours"] += ws / 3600
                a["busy_gpu_hours"] += ws / 3600 if is_busy else 0
                a["idle_held_hours"] += ws / 3600 if not is_busy else 0
                a["mem_gb_hours"] += mem * w / 1e9 / 3600
                a["energy_kwh"] += (g.power_watts or 0) * ws / 3.6e6
                if u is not None:
                    a["_uw"] += u * ws
                    a["_w"] += ws
                    utils[(label, name)].append((u, ws))
        minute = int(s.ts // 60)
        for name, n in per_user_gpus.items():
            cur = held_at[name][minute]
            cur[s.host] = max(cur.get(s.host, 0), n)
    out = {}
    for k, a in acc.items():
        fig = {m: v for m, v in a.items() if not m.startswith("_")}
        fig["avg_util"] = a["_uw"] / a["_w"] if a.get("_w") else None
        fig["p95_util"] = _p_quantile(utils.get(k, []), 0.95)
        out[k] = fig
    if by == "user":
        for name, minutes in held_at.items():
            for minute, hosts in minutes.items():
                d = datetime.fromtimestamp(minute * 60, zone).date()
                label = cal.period_start(d, period, first).isoformat()
                fig = out.get((label, name))
                if fig is not None:
                    fig["peak_concurrent_gpus"] = max(
                        fig.get("peak_concurrent_gpus", 0), sum(hosts.values())
                    )
    return out
