"""Rank where a request should run now. Pure: a request, a fleet snapshot and history features
in; ranked choices with reasons (or an estimate of when something frees up) out.

Score of a set of GPUs on one host (higher is better)::

    p_free x speed^w_speed x exp(-copy_hours / hours) x spread x health

- ``p_free``: P(none of the chosen GPUs is taken during the requested hours). People take the
  free GPUs of a host in a habitual order (GPU 0 first: no ``CUDA_VISIBLE_DEVICES``); the
  history learns that order per GPU (``gpu_factor``) and the host's takes per hour by hour of
  week. The chosen GPUs are the host's last in that order, so they stay free while the host
  sees no more takes than it has *spare* free GPUs: ``p_free = P(N <= free - k)`` with
  ``N ~ Poisson(takes expected on that host over exactly that window)`` (``Weights.buffer``;
  without it, each GPU's own take rate, adjusted for how crowded the host is now);
- ``speed``: throughput of the GPU model for the model type, relative to a V100;
- ``copy_hours``: time to copy the data there (0 where it already is);
- ``spread``: ``(1 - w_load x share of the host's GPUs taken now) / (1 + w_spread x
  (popularity - 1))`` (popularity: the host's held share over the fleet's, from history):
  steer work away from the crowded servers;
- ``health``: hot GPUs, a busy CPU, open problems lower it.

Order: the hosts whose chance of being taken (``1 - p_free``) is at most ``1 + Weights.band``
(1.25) times the safest host's come first (less those where copying the data costs clearly
more than at the best of them, ``Weights.band_copy``), the one that has served the fewest
GPU-hours first (the hour tier's window plus the holds since it was built): among about
equally safe places, the least used host, which is what spreads the lab's load
(docs/recommender.md); then the rest by score.

Only feasible sets are considered: free GPUs (never taken, reserved or erroring) with enough
memory, of an accepted model, on online hosts; several hosts only when the request allows it.
Ties go to the score, then the host name, then the lower GPU index: the same state always
gives the same answer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from gpufleet.i18n import ENGLISH, N_, Msg, msg, nmsg
from gpufleet.recommend import calibrate
from gpufleet.recommend.calibrate import StatedChance
from gpufleet.recommend.eta import Eta, estimate_eta, nothing_fits_reason
from gpufleet.recommend.fleet import GIB, FleetSnap, GpuSnap, HostSnap
from gpufleet.recommend.history import (
    STAY_HOURS,
    WEEK_HOURS,
    FleetHistory,
    HostHistory,
)
from gpufleet.recommend.request import RecommendRequest, gpu_model_matches
from gpufleet.recommend.speeds import gpu_class, relative_speed


@dataclass(frozen=True)
class Weights:
    speed: float = 0.15
    spread: float = 0.6
    load: float = 0.5  # prefer hosts with a smaller share of their GPUs taken now
    # hosts whose chance of being taken, 1 - P(stays free), is at most (1 + band) x the safest
    # host's come first, the one that has served the fewest GPU-hours (history + holds since)
    # first: among about equally safe places, the least used host (0: by score alone) ...
    band: float = 0.25
    # ... unless copying the data there costs more (exp(-copy_hours / hours) lower by this)
    # than at the best of them
    band_copy: float = 0.1
    crowd: float = 1.0  # how much "fuller than usual now" raises the take rate
    copy_gbit_per_second: float = 1.0  # effective copy bandwidth between hosts
    hot_celsius: float = 85.0
    # True: P(the host sees fewer takes in the window than it has spare free GPUs), your GPUs
    # being the ones taken last; False: each chosen GPU's own take rate (no buffer)
    buffer: bool = True
    # rank by the chance the set is still free when the requester is ready to start (set-up
    # plus the data copy to that host) instead of for the whole requested duration: a GPU
    # that is visibly held is rarely taken from under a running job, the race is before the
    # start (docs/recommender.md); the stated p_free_for_duration is the same either way
    start_horizon: bool = False
    setup_hours: float = 5 / 60
    # the stated p_free_for_duration: the ranking's chance recalibrated (calibrate.py); the
    # ranking itself uses the model's chance
    # (the server and the harness pass ``online.Recalibrated``: refitted on the fleet's own
    # past answers)
    calibration: StatedChance = calibrate.DEFAULT


@dataclass(frozen=True)
class Choice:
    host: str
    gpus: tuple[int, ...]
    score: float
    p_free: float
    reasons: tuple[str, ...]
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()  # several hosts: (host, gpus) each
    # why it is at this place in the list: "safe band" (about as safe as the safest answer,
    # the least used first) or "score"
    order: str = "score"
    gpu_hours_served: float | None = None
    # the ranking model's own chance and what the stated one was computed from (calibrate.py)
    p_model: float | None = None
    features: tuple[float, ...] = ()
    # the reasons as messages (``reasons`` is their English): the page and the CLI render
    # them in their reader's language; the API sends them as ``reasons_i18n``
    reason_msgs: tuple[Msg, ...] = ()

    @property
    def command(self) -> str:
        if self.parts:
            return " ; ".join(_command(h, g) for h, g in self.parts)
        return _command(self.host, self.gpus)

    def as_json(self) -> dict:
        parts = self.parts or ((self.host, self.gpus),)
        return {
            # several hosts: every one of them, at the top level as in ``hosts``
            "host": ", ".join(h for h, _ in parts),
            "gpus": list(self.gpus) if not self.parts else [i for _, g in parts for i in g],
            "hosts": [{"host": h, "gpus": list(g)} for h, g in parts],
            "score": round(self.score, 4),
            "order": self.order,
            "gpu_hours_served": None
            if self.gpu_hours_served is None
            else round(self.gpu_hours_served, 1),
            "p_free_for_duration": round(self.p_free, 4),
            "reasons": list(self.reasons),
            "reasons_i18n": [m.as_json() for m in self.reason_msgs],
            "command": self.command,
            "ssh": self.command,
        }


def _command(host: str, gpus: tuple[int, ...]) -> str:
    return f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))} ssh {host}"


@dataclass(frozen=True)
class Answer:
    choices: tuple[Choice, ...]
    eta: Eta | None = None
    note: str | None = None  # why nothing fits now (English: ``note_msg`` rendered)
    considered_hosts: int = 0
    note_msg: Msg | None = None

    def as_json(self) -> dict:
        return {
            "recommendations": [c.as_json() for c in self.choices],
            "eta": self.eta.as_json() if self.eta else None,
            "note": self.note,
            "note_i18n": self.note_msg.as_json() if self.note_msg else None,
            "considered_hosts": self.considered_hosts,
        }


def _choice(host: str, gpus: tuple[int, ...], score: float, p_free: float,
            msgs: tuple[Msg, ...], **kw: Any) -> Choice:  # fmt: skip
    """A Choice whose English ``reasons`` are its messages rendered in English."""
    english = tuple(m.render(ENGLISH) for m in msgs)
    return Choice(host, gpus, score, p_free, english, reason_msgs=msgs, **kw)


@dataclass
class _HostEval:
    host: HostSnap
    hist: HostHistory
    gpus: list[tuple[float, GpuSnap]] = field(default_factory=list)  # (p_free, gpu), best first
    factor: float = 1.0  # speed x copy x spread x health
    notes: list[str] = field(default_factory=list)


def model_ok(req: RecommendRequest, gpu: GpuSnap) -> bool:
    return not req.gpu_models or any(gpu_model_matches(p, gpu.name) for p in req.gpu_models)


def memory_ok(req: RecommendRequest, gpu: GpuSnap) -> bool:
    total = gpu.memory_total_bytes
    if total is None or total < req.gpu_mem_bytes:
        return False
    return (gpu.memory_used_bytes or 0) + req.gpu_mem_bytes <= total


def usable(req: RecommendRequest, gpu: GpuSnap) -> bool:
    """Free, of an accepted model, with the memory: the only GPUs ever recommended."""
    return gpu.state == "free" and model_ok(req, gpu) and memory_ok(req, gpu)


def disk_ok(req: RecommendRequest, host: HostSnap) -> bool:
    if req.data_gib <= 0 or req.data_host == host.name or host.disk_free_bytes is None:
        return True
    return host.disk_free_bytes >= req.data_bytes


def copy_hours(req: RecommendRequest, host: str, w: Weights) -> float:
    if req.data_gib <= 0 or req.data_host is None or req.data_host == host:
        return 0.0
    return req.data_bytes * 8 / (w.copy_gbit_per_second * 1e9) / 3600


def _evaluate_host(
    req: RecommendRequest, host: HostSnap, history: FleetHistory, now: float, w: Weights
) -> _HostEval | None:
    if not host.online or not disk_ok(req, host):
        return None
    cands = [g for g in host.gpus if usable(req, g)]
    if not cands:
        return None
    hist = history.host(host.name)
    base = hist.window_hazard(now, req.hours)
    n = len(host.gpus)
    taken_now = sum(1 for g in host.gpus if g.state != "free") / n if n else 0.0
    crowd = (1 + w.crowd * taken_now) / (1 + w.crowd * hist.held_share)
    scored = []
    for g in cands:
        lam = base * crowd * hist.gpu_factor.get(g.index, 1.0)
        scored.append((math.exp(-lam), g))
    scored.sort(key=lambda pg: (-pg[0], pg[1].index))
    ev = _HostEval(host, hist, scored)
    speed = relative_speed(cands[0].name, req.family)
    copy_h = copy_hours(req, host.name, w)
    spread = 1.0 / (1.0 + w.spread * max(0.0, hist.popularity - 1.0))
    health = 1.0
    if host.alerts:
        health *= 0.5
    if host.load1 is not None and host.cpu_count and host.load1 / host.cpu_count > 1.0:
        health *= 0.85
    ev.factor = speed**w.speed * math.exp(-copy_h / max(req.hours, 0.25)) * spread * health
    return ev


def _pick(ev: _HostEval, k: int, w: Weights) -> tuple[list[GpuSnap], float, float]:
    chosen = ev.gpus[:k]
    p = math.prod(pg[0] for pg in chosen)
    gpus = sorted((pg[1] for pg in chosen), key=lambda g: g.index)
    hot = any((g.temperature_celsius or 0) >= w.hot_celsius for g in gpus)
    return gpus, p, p * ev.factor * (0.8 if hot else 1.0)


_STATE_CODE = {"free": 0, "taken": 1, "reserved": 2, "error": 3}


class FleetIndex:
    """The fleet and its history as arrays, built once per snapshot and shared by every
    request asked of that snapshot (the ranking itself is then a few vector operations)."""

    def __init__(self, fleet: FleetSnap, history: FleetHistory) -> None:
        self.fleet, self.history = fleet, history
        hosts = fleet.hosts
        self.hists = [history.host(h.name) for h in hosts]
        # one row per GPU, in one pass over the snapshot (the only per-GPU Python loop)
        now = fleet.now
        names: dict[str, int] = {}
        # per GPU, one column at a time: floats and ints only (no tuple per GPU, which would
        # set off the garbage collector's passes over every object of the process)
        gpus = [g for h in hosts for g in h.gpus]
        ng = len(gpus)
        a = np.empty((ng, 7))
        a[:, 0] = np.fromiter((g.index for g in gpus), dtype=float, count=ng)
        a[:, 1] = np.fromiter((_STATE_CODE[g.state] for g in gpus), dtype=float, count=ng)
        a[:, 2] = np.fromiter((g.memory_total_bytes or -1.0 for g in gpus), dtype=float, count=ng)
        a[:, 3] = np.fromiter((g.memory_used_bytes or 0 for g in gpus), dtype=float, count=ng)
        a[:, 4] = np.fromiter((g.temperature_celsius or 0.0 for g in gpus), dtype=float, count=ng)
        a[:, 5] = np.fromiter((g.held_since or now for g in gpus), dtype=float, count=ng)
        a[:, 6] = np.fromiter((names.setdefault(g.name, len(names)) for g in gpus), dtype=float,
                              count=ng)  # fmt: skip
        sizes = np.fromiter(map(len, (h.gpus for h in hosts)), dtype=np.int64, count=len(hosts))
        self.names = list(names)
        self.g_host = np.repeat(np.arange(len(hosts), dtype=np.int64), sizes)
        self.g_index = a[:, 0].astype(np.int64)
        self.g_free = a[:, 1] == 0
        self.g_taken = a[:, 1] == 1
        self.g_total, self.g_used, self.g_temp = a[:, 2], a[:, 3], a[:, 4]
        gsince = a[:, 5]
        self.g_name = a[:, 6].astype(np.int64)
        h_cum, h_arr, fac, h_share, h_pop, h_known, self.h_stay = _history_arrays(
            history, self.hists
        )
        idx = np.minimum(self.g_index, fac.shape[1] - 1) if fac.size else self.g_index
        self.g_factor = (np.where(self.g_index < fac.shape[1], fac[self.g_host, idx], 1.0)
                         if fac.size else np.ones(self.g_host.size))  # fmt: skip
        self.g_age = np.maximum(0.0, now - gsince) / 3600
        # takes of the last hour per host: GPUs whose oldest process started within it
        self.h_recent = np.bincount(self.g_host, weights=self.g_taken & (self.g_age < 1.0),
                                    minlength=len(hosts))  # fmt: skip
        self._residuals: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        n = len(hosts)
        per_host = [(h.status == "online",
                     np.inf if h.disk_free_bytes is None else h.disk_free_bytes,
                     (0.5 if h.alerts else 1.0) * (0.85 if h.load1 is not None and h.cpu_count
                                                   and h.load1 > h.cpu_count else 1.0))
                    for h in hosts]  # fmt: skip
        hv = np.asarray(per_host, dtype=float).reshape(-1, 3)
        self.h_online = hv[:, 0] > 0
        self.h_disk = hv[:, 1]
        self.h_health = hv[:, 2]
        self.h_names = [h.name for h in hosts]
        self.h_pos = {name: i for i, name in enumerate(self.h_names)}
        self.h_size = np.asarray(sizes, dtype=float)
        taken = np.bincount(self.g_host, weights=~self.g_free, minlength=n) if n else sizes
        self.h_taken = np.where(sizes > 0, taken / np.maximum(sizes, 1), 0.0)
        self.h_share, self.h_pop, past_hours = h_share, h_pop, h_known
        self.h_cum, self.h_arr = h_cum, h_arr
        # takes per hour over the whole fleet (hosts' weekly totals), how long holds last
        self.fleet_takes_per_hour = float(h_arr[:, WEEK_HOURS].sum()) / WEEK_HOURS
        runs = history.fleet_runs_hours
        self.median_hold_hours = float(runs[runs.size // 2]) if runs.size else 1.0
        free = np.bincount(self.g_host, weights=self.g_free, minlength=n) if n else sizes
        self.h_free = np.asarray(free, dtype=float)
        on = self.h_online[self.g_host] if n else np.zeros(0, dtype=bool)
        self.fleet_free_share = float(self.g_free[on].mean()) if on.any() else 0.0
        # GPU-hours each host served: the history's window, plus the holds since it was built
        held_for = np.where(
            self.g_free, 0.0, np.maximum(0.0, fleet.now - np.maximum(gsince, history.built_at))
        )
        since = np.bincount(self.g_host, weights=held_for, minlength=n) / 3600 if n else sizes
        self.h_gpu_hours = self.h_share * sizes * past_hours + since

    def stay_free(self, hours: float, shares: np.ndarray | None = None) -> np.ndarray:
        """Per host (or per row of ``shares``), the history's share of free GPU-hours that
        stayed free for ``hours`` (interpolated in log hours between the kept windows)."""
        stay = self.h_stay if shares is None else shares
        lg = np.log(STAY_HOURS)
        x = float(np.clip(np.log(max(hours, 1e-3)), lg[0], lg[-1]))
        i = min(int(np.searchsorted(lg, x, side="right")) - 1, lg.size - 2)
        f = (x - lg[i]) / (lg[i + 1] - lg[i])
        out: np.ndarray = stay[:, i] * (1 - f) + stay[:, i + 1] * f
        return out

    def with_reserved(self, reserved: set[tuple[str, int]]) -> FleetIndex:
        """This index with those free GPUs counted as not free (answers given a moment ago;
        ``fleet.with_reserved`` for the snapshot form): a shallow copy, arrays shared except
        the few that change."""
        if not reserved:
            return self
        pos = {(self.h_names[int(h)], int(i)): n
               for n, (h, i) in enumerate(zip(self.g_host, self.g_index, strict=True))}  # fmt: skip
        hit = [pos[k] for k in reserved if k in pos]
        if not hit:
            return self
        out = copy.copy(self)
        out.g_free = self.g_free.copy()
        out.g_free[hit] = False
        n = len(self.h_names)
        sizes = np.bincount(self.g_host, minlength=n)
        out.h_free = np.bincount(self.g_host, weights=out.g_free, minlength=n).astype(float)
        out.h_taken = np.where(sizes > 0, 1.0 - out.h_free / np.maximum(sizes, 1), 0.0)
        on = self.h_online[self.g_host]
        out.fleet_free_share = float(out.g_free[on].mean()) if on.any() else 0.0
        return out

    def residuals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per GPU, the remaining hold time in hours given how long it has been held: the
        median and the 10th / 90th percentiles of (L - age) over the host's past holds L
        longer than the age (the fleet's when the host has fewer than 5; with none at all,
        "about as long again", with the 80% range age/9 .. 9 x age). Vectorised over every GPU
        at once; computed on first use and kept with the snapshot."""
        if self._residuals is not None:
            return self._residuals
        age = self.g_age
        none_known = np.maximum(1.0, age)
        med, lo, hi = none_known.copy(), none_known / 9, none_known * 9
        todo = np.ones(age.shape, dtype=bool)
        keys, ends, big = _runs_keys(self.history, self.hists, float(age.max(initial=0)))
        if keys.size:
            host = self.g_host
            start = np.searchsorted(keys, host * big + age, side="right")
            cnt = ends[host] - start
            ok = cnt >= 5
            for arr, at in ((med, None), (lo, 0.1), (hi, 0.9)):
                if at is None:
                    a = keys[np.minimum(start + (cnt - 1) // 2, keys.size - 1)]
                    b = keys[np.minimum(start + cnt // 2, keys.size - 1)]
                    val = (a + b) / 2 - host * big - age
                else:
                    val = keys[np.minimum(start + ((cnt - 1) * at).astype(np.int64),
                                          keys.size - 1)] - host * big - age  # fmt: skip
                arr[ok] = val[ok]
            todo &= ~ok
        pool = self.history.fleet_runs_hours
        if pool.size and todo.any():
            start = np.searchsorted(pool, age, side="right")
            cnt = pool.size - start
            ok = todo & (cnt >= 5)
            top = pool.size - 1
            m = (pool[np.minimum(start + (cnt - 1) // 2, top)]
                 + pool[np.minimum(start + cnt // 2, top)]) / 2 - age  # fmt: skip
            med[ok] = m[ok]
            lo[ok] = (pool[np.minimum(start + ((cnt - 1) * 0.1).astype(np.int64), top)] - age)[ok]
            hi[ok] = (pool[np.minimum(start + ((cnt - 1) * 0.9).astype(np.int64), top)] - age)[ok]
        self._residuals = (med, np.minimum(lo, med), np.maximum(hi, med))
        return self._residuals

    def window_hazard(
        self, start_ts: float, hours: float, cum: np.ndarray | None = None
    ) -> np.ndarray:
        """Every host's integrated take rate over [start, start + hours] (vector form of
        ``history.window_sum``)."""
        cum = self.h_cum if cum is None else cum
        week = cum[:, WEEK_HOURS]
        pos = (start_ts / 3600 + 72) % WEEK_HOURS
        full, rest = divmod(hours, WEEK_HOURS)

        def at(x: float) -> np.ndarray:
            wraps, x = divmod(x, WEEK_HOURS)
            k, frac = divmod(x, 1.0)
            ki = int(k)
            return wraps * week + cum[:, ki] + frac * (cum[:, ki + 1] - cum[:, ki])

        return full * week + at(pos + rest) - at(pos)


def recommend(
    req: RecommendRequest,
    fleet: FleetSnap,
    history: FleetHistory,
    *,
    weights: Weights | None = None,
    tz: str = "UTC",
    reasons: bool = True,
    index: FleetIndex | None = None,
) -> Answer:
    """Rank feasible GPU sets for ``req``. Pass ``index`` (a FleetIndex of this fleet and
    history) when several requests are asked of one snapshot."""
    w = weights or Weights()
    ix = index if index is not None and index.fleet is fleet else FleetIndex(fleet, history)
    now, k = fleet.now, req.gpus
    n_hosts = len(fleet.hosts)
    choices: list[Choice] = []
    if n_hosts and ix.g_host.size:
        name_ok = np.asarray([_name_ok(req, name) for name in ix.names], dtype=bool)
        need = float(req.gpu_mem_bytes)
        host_ok = ix.h_online.copy()
        if req.data_gib > 0:
            room = ix.h_disk >= req.data_bytes
            if req.data_host is not None and req.data_host in ix.h_pos:
                room[ix.h_pos[req.data_host]] = True
            host_ok &= room
        cand = (ix.g_free & name_ok[ix.g_name] & (ix.g_total >= need)
                & (ix.g_used + need <= ix.g_total) & host_ok[ix.g_host])  # fmt: skip
        counts = np.bincount(ix.g_host[cand], minlength=n_hosts)
        if (counts >= k).any():
            crowd = (1 + w.crowd * ix.h_taken) / (1 + w.crowd * ix.h_share)
            lam_host = ix.window_hazard(now, req.hours) * crowd
            ci = np.flatnonzero(cand & (counts >= k)[ix.g_host])
            lam = lam_host[ix.g_host[ci]] * ix.g_factor[ci]
            order = np.lexsort((ix.g_index[ci], lam, ix.g_host[ci]))
            ci, lam = ci[order], lam[order]
            hosts_c = ix.g_host[ci]
            first = np.searchsorted(hosts_c, hosts_c, side="left")
            pick = (np.arange(ci.size) - first) < k
            sel, sel_lam = ci[pick], lam[pick]
            sel_host = ix.g_host[sel]
            if w.buffer:
                mu = ix.window_hazard(now, req.hours, ix.h_arr)
                p_set = poisson_cdf(ix.h_free - k, mu)
            else:
                mu = np.bincount(sel_host, weights=sel_lam, minlength=n_hosts)
                p_set = np.exp(-mu)
            hot = np.bincount(sel_host, weights=ix.g_temp[sel] >= w.hot_celsius,
                              minlength=n_hosts) > 0  # fmt: skip
            speed_of = np.asarray([relative_speed(nm, req.family) for nm in ix.names])
            speed = np.ones(n_hosts)
            speed[sel_host] = speed_of[ix.g_name[sel]]
            copy = np.zeros(n_hosts)
            if req.data_gib > 0 and req.data_host is not None:
                copy[:] = copy_hours(req, "", w)
                if req.data_host in ix.h_pos:
                    copy[ix.h_pos[req.data_host]] = 0.0
            p_rank = p_set
            if w.start_horizon and w.buffer:
                p_rank = np.empty(n_hosts)
                for c in np.unique(copy):
                    at = copy == c
                    mu_c = ix.window_hazard(now, w.setup_hours + float(c), ix.h_arr)
                    p_rank[at] = poisson_cdf(ix.h_free - k, mu_c)[at]
            spread = 1.0 / (1.0 + w.spread * np.maximum(0.0, ix.h_pop - 1.0))
            spread = spread * (1.0 - w.load * ix.h_taken)
            score = (p_rank * speed**w.speed * np.exp(-copy / max(req.hours, 0.25)) * spread
                     * ix.h_health * np.where(hot, 0.8, 1.0))  # fmt: skip
            feas = np.flatnonzero(counts >= k)
            names = np.asarray(ix.h_names, dtype=object)[feas]
            if w.band > 0:  # the about equally safe hosts first, the least used first
                fs, fp = score[feas], p_rank[feas]
                near = 1.0 - fp <= (1.0 - fp.max()) * (1.0 + w.band) + 1e-12
                # ... where copying the data costs little more than at the best of them
                fc = np.exp(-copy / max(req.hours, 0.25))[feas]
                near &= fc >= fc[near].max() - w.band_copy
                key = np.where(near, ix.h_gpu_hours[feas], 0.0)
                top = feas[np.lexsort((names, -fs, key, ~near))][: req.limit]
                in_band = {int(h) for h in feas[near]}
            else:
                top = feas[np.lexsort((names, -score[feas]))][: req.limit]
                in_band = set()
            feats = calibrate.features(
                p_set[top], req.hours, mu[top], (ix.h_free[top] - k) / np.maximum(ix.h_size[top], 1),
                ix.h_taken[top], ix.fleet_free_share,
                ix.fleet_takes_per_hour * req.hours / max(1.0, float(ix.h_free.sum())),
                ix.median_hold_hours,
                float(ix.h_recent.sum()) * req.hours / max(1.0, float(ix.h_free.sum())),
                ix.h_recent[top], ix.stay_free(req.hours)[top] ** k,
                float(ix.stay_free(req.hours, ix.history.recent_stay_free[None, :])[0]) ** k,
            )  # fmt: skip
            stated = w.calibration.apply(feats)
            for at, hi in enumerate(top):
                mine = sel[sel_host == hi]
                gsnaps = {g.index: g for g in fleet.hosts[hi].gpus}
                gpus = [gsnaps[int(i)] for i in sorted(ix.g_index[mine])]
                p = float(stated[at])
                why: tuple[Msg, ...] = ()
                if reasons:
                    ev = _HostEval(fleet.hosts[hi], ix.hists[hi])
                    why = _reasons(req, ev, gpus, p, history, now, w, tz)
                choices.append(_choice(
                    ix.h_names[hi], tuple(g.index for g in gpus), float(score[hi]), p, why,
                    order="safe band" if int(hi) in in_band else "score",
                    gpu_hours_served=float(ix.h_gpu_hours[hi]),
                    p_model=float(p_set[hi]), features=tuple(float(v) for v in feats[at]),
                ))  # fmt: skip
    if not choices and req.multi_host:
        evals = [e for h in fleet.hosts
                 if (e := _evaluate_host(req, h, history, now, w)) is not None]  # fmt: skip
        multi = _multi_host(req, evals, w)
        if multi is not None:
            choices = [multi]
    if choices:
        return Answer(tuple(choices), considered_hosts=n_hosts)
    note = nothing_fits_reason(req, ix)
    return Answer((), estimate_eta(req, ix), note.render(ENGLISH), n_hosts, note)


def poisson_cdf(m: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """P(N <= m) for N ~ Poisson(mu), element-wise (m < 0 gives 0)."""
    m = np.asarray(m, dtype=float)
    mu = np.maximum(np.asarray(mu, dtype=float), 0.0)
    term = np.exp(-mu)
    total = np.where(m >= 0, term, 0.0)
    top = int(max(0.0, float(m.max()))) if m.size else 0
    for i in range(1, top + 1):
        term = term * mu / i
        total = total + np.where(m >= i, term, 0.0)
    return np.minimum(total, 1.0)


def _name_ok(req: RecommendRequest, name: str) -> bool:
    return not req.gpu_models or any(gpu_model_matches(p, name) for p in req.gpu_models)


def _multi_host(req: RecommendRequest, evals: list[_HostEval], w: Weights) -> Choice | None:
    """Greedy: the best-scoring hosts first, as many of their GPUs as still needed."""
    order = sorted(evals, key=lambda e: (-_pick(e, len(e.gpus), w)[2] ** (1 / len(e.gpus)),
                                         e.host.name))  # fmt: skip
    need, parts, p_all, score_all = req.gpus, [], 1.0, 1.0
    for ev in order:
        if need <= 0:
            break
        take = min(need, len(ev.gpus))
        gpus, p, score = _pick(ev, take, w)
        parts.append((ev.host.name, tuple(g.index for g in gpus)))
        p_all *= p
        score_all *= score ** (take / req.gpus)
        need -= take
    if need > 0:
        return None
    reasons = (
        msg("no single host has {gpus} free GPUs that fit; spread over {hosts} hosts",
            gpus=req.gpus, hosts=len(parts)),
        msg("{chance} chance none of them is taken in the next {hours}", chance=pct(p_all),
            hours=_hours(req.hours)),
    )  # fmt: skip
    return _choice(parts[0][0], parts[0][1], score_all, p_all, reasons, parts=tuple(parts))


def pct(p: float) -> str:
    """A chance as people read it: never "100%" or "0%" for what is only likely."""
    if p >= 0.995:
        return ">99%"
    if p < 0.005:
        return "<1%"
    return f"{round(100 * p)}%"


def _hours(h: float) -> str:
    """A duration with its unit (units stay as they are in every language: docs/i18n.md)."""
    return f"{round(h, 1):g} h" if h >= 1 else f"{round(h * 60)} min"


_PARTS = ((0, N_("nights")), (6, N_("mornings")), (12, N_("afternoons")), (18, N_("evenings")))
_WEEKDAYS = (N_("Monday"), N_("Tuesday"), N_("Wednesday"), N_("Thursday"), N_("Friday"),
             N_("Saturday"), N_("Sunday"))  # fmt: skip


def _when(ts: float, tz: str) -> Msg:
    """The day of the week and the part of the day ("Thursday evenings"), in ``tz``."""
    dt = datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(tz))
    part = [name for start, name in _PARTS if dt.hour >= start][-1]
    return msg("{weekday} {part}", weekday=msg(_WEEKDAYS[dt.weekday()]), part=msg(part))


def _reasons(
    req: RecommendRequest,
    ev: _HostEval,
    gpus: list[GpuSnap],
    p: float,
    history: FleetHistory,
    now: float,
    w: Weights,
    tz: str,
) -> tuple[Msg, ...]:
    """Why this place, as messages (one template each: the English reasons are these
    rendered in English, the page and the CLI render them in their reader's language)."""
    host, hist = ev.host, ev.hist
    n, free = len(host.gpus), host.free_count()
    settled = getattr(w.calibration, "answers", 0)  # online.Recalibrated: outcomes used
    own: Msg | str = (
        msg(", checked against {answers} of this fleet's past answers", answers=settled)
        if settled
        else ""
    )
    out = [
        nmsg("{free} of {total} GPUs free now; GPU {gpus} ({model}, {gib:.0f} GiB)",
             "{free} of {total} GPUs free now; GPUs {gpus} ({model}, {gib:.0f} GiB)",
             len(gpus), free=free, total=n, gpus=", ".join(str(g.index) for g in gpus),
             model=_model_label(gpus[0]), gib=(gpus[0].memory_total_bytes or 0) / GIB),
        msg("{chance} chance none of them is taken in the next {hours} (from {known} h of"
            " history{own})", chance=pct(p), hours=_hours(req.hours), known=hist.hours_known,
            own=own)
        if hist.hours_known
        else msg("no history for this host: {chance} chance they stay free for {hours} at the"
                 " fleet's usual rate{own}", chance=pct(p), hours=_hours(req.hours), own=own),
    ]  # fmt: skip
    prof = hist.busy_profile
    if hist.hours_known >= 48 and not np.all(np.isnan(prof)):
        span = int(min(max(req.hours, 1), 168))
        hw = [(int(now // 3600) + 72 + i) % 168 for i in range(span)]
        window = np.nanmean(prof[hw]) if not np.all(np.isnan(prof[hw])) else np.nan
        usual = np.nanmean(prof)
        if not np.isnan(window) and window < 0.8 * usual:
            out.append(msg("this host is usually quiet on {when}", when=_when(now, tz)))
        elif not np.isnan(window) and window > 1.2 * usual and window > 0.3:
            out.append(msg("this host is usually busier than now on {when}", when=_when(now, tz)))
    if hist.hours_known:
        if hist.popularity <= 0.8:
            out.append(msg("less used than most hosts ({times:.1f}x the fleet's average)",
                           times=hist.popularity))  # fmt: skip
        elif hist.popularity >= 1.25:
            out.append(msg("a crowded host ({times:.1f}x the fleet's average use)",
                           times=hist.popularity))  # fmt: skip
    if req.family is not None:
        s = relative_speed(gpus[0].name, req.family)
        cls = gpu_class(gpus[0].name)
        if cls != "v100" and abs(s - 1) >= 0.05:
            out.append(
                msg("{times:.1f}x faster for {model} than a V100", times=s, model=req.family)
                if s > 1
                else msg("{times:.2f}x the speed for {model} than a V100", times=s,
                         model=req.family)
            )  # fmt: skip
    if req.data_gib > 0 and req.data_host is not None:
        if req.data_host == host.name:
            out.append(msg("the data ({gib:g} GiB) is already here", gib=req.data_gib))
        else:
            ch = copy_hours(req, host.name, w)
            out.append(msg("copying {gib:g} GiB from {host} takes ~{hours}", gib=req.data_gib,
                           host=req.data_host, hours=_hours(ch)))  # fmt: skip
    hot = [g.index for g in gpus if (g.temperature_celsius or 0) >= w.hot_celsius]
    if hot:
        out.append(msg("GPU {gpus} running hot (>= {limit:.0f} °C)",
                       gpus=", ".join(map(str, hot)), limit=w.hot_celsius))  # fmt: skip
    if host.load1 is not None and host.cpu_count and host.load1 / host.cpu_count > 1.0:
        out.append(msg("CPU busy (load {load:.0f} on {cores} cores)", load=host.load1,
                       cores=host.cpu_count))  # fmt: skip
    for a in host.alerts[:2]:
        out.append(msg("open problem: {problem}", problem=a))
    return tuple(out)


def _model_label(g: GpuSnap) -> str:
    return g.name.removeprefix("NVIDIA ").removeprefix("Tesla ") or "GPU"


# the last history (held, so its id cannot be reused), its hosts' ids, and their arrays
_ARRAYS_CACHE: list[tuple[FleetHistory, tuple[int, ...], tuple[np.ndarray, ...]]] = []
_HistArrays = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray
]


def _history_arrays(history: FleetHistory, hists: list[HostHistory]) -> _HistArrays:
    """Per host in this order: the cumulative take rate by hour of week, the cumulative
    arrivals, each GPU index's take factor (1 where unknown), the held share, popularity and
    hours of history, the stay-free shares by window. They change when the history is rebuilt (every few minutes), not per
    snapshot: kept for the last one."""
    sig = tuple(id(hh) for hh in hists)
    for h, hsig, arrays in _ARRAYS_CACHE:
        if h is history and hsig == sig:
            return arrays  # type: ignore[return-value]
    n = len(hists)
    cum = np.stack([hh.cum for hh in hists]) if n else np.zeros((0, WEEK_HOURS + 1))
    arr = np.stack([hh.arrivals_cum for hh in hists]) if n else cum
    width = max([max(hh.gpu_factor, default=-1) + 1 for hh in hists] + [0])
    fac = np.ones((n, width))
    for i, hh in enumerate(hists):
        for g, f in hh.gpu_factor.items():
            if g >= 0:
                fac[i, g] = f
    out = (cum, arr, fac, np.asarray([hh.held_share for hh in hists], dtype=float),
           np.asarray([hh.popularity for hh in hists], dtype=float),
           np.asarray([hh.hours_known for hh in hists], dtype=float),
           np.stack([hh.stay_free for hh in hists]) if n else np.zeros((0, STAY_HOURS.size)))  # fmt: skip
    _ARRAYS_CACHE[:] = [(history, sig, out)]
    return out


# the last history (held, so its id cannot be reused), its host order, keys, ends, big
_RUNS_CACHE: list[tuple[FleetHistory, tuple[int, ...], np.ndarray, np.ndarray, float]] = []


def _runs_keys(
    history: FleetHistory, hists: list[HostHistory], age_max: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Every host's past holds in one sorted array (host i's offset by i x big), with each
    host's end; kept per history and host order (both change every few minutes, not per
    snapshot)."""
    sig = tuple(id(hh) for hh in hists)
    for h, hsig, keys, ends, big in _RUNS_CACHE:
        if h is history and hsig == sig and big > age_max:
            return keys, ends, big
    runs = [hh.held_runs_hours for hh in hists]
    big = max([float(r[-1]) for r in runs if r.size] + [age_max, 24.0 * 365]) + 1
    lens = np.asarray([r.size for r in runs], dtype=np.int64)
    keys = (np.concatenate([i * big + r for i, r in enumerate(runs) if r.size])
            if lens.sum() else np.zeros(0))  # fmt: skip
    ends = np.cumsum(lens)
    _RUNS_CACHE[:] = [(history, sig, keys, ends, big)]  # one at a time: the server's current
    return keys, ends, big
