"""History features per host, from the warehouse's hourly GPU facts. Pure: arrays in, features out.

The input is one matrix: the share of each hour each GPU was *held* (a process on it), NaN
where the host did not report. From it, per host:

- **take rate by hour of week** (``hazard``): how often a GPU that was free for an hour gets
  taken the next hour, per hour of the week (Monday 00:00 UTC = 0). Sparse cells are shrunk
  towards the host's overall rate, and the host's towards the fleet's, so a new host starts at
  the fleet's rate instead of at "never taken".
- **per-GPU factor** (``gpu_factor``): GPU 0 of a host is taken more often than GPU 7 when
  people run without ``CUDA_VISIBLE_DEVICES``; the factor is that GPU's rate over its host's
  (shrunk the same way).
- **busy profile** (``busy_profile``): the mean held share per hour of week (for the reasons).
- **popularity**: the host's held share over the fleet's (1 = as busy as the fleet; 2 = twice).
- **held runs** (``held_runs_hours``): how long GPUs stayed held once taken (hours), for the
  "when will something free up" estimate.

P(a free GPU stays free for the next H hours) = exp(-sum of its hourly take rates over the
window): a piecewise-constant hazard, the discrete-time survival model of the hour tier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

WEEK_HOURS = 168
FREE_BELOW = 0.01  # an hour with less than 1% held seconds counts as a free hour
SHRINK_HOUR = 6.0  # pseudo free-hours pulling an hour-of-week cell to the host's rate
SHRINK_HOST = 48.0  # pseudo free-hours pulling a host to the fleet's rate
SHRINK_GPU = 24.0  # pseudo free-hours pulling a GPU to its host's rate
DEFAULT_RATE = 0.05  # per free hour, when the fleet has no history at all
# windows (hours) at which the share of free GPU-hours that stayed free is kept (``stay_free``)
STAY_HOURS = np.asarray([1, 2, 4, 8, 16, 32, 64, 128, 256], dtype=float)
SHRINK_STAY = 24.0  # pseudo free-hours pulling a host's stay-free share to the fleet's
RECENT_HOURS = 120  # the fleet's recent stay-free share: the history's last five days


def hour_of_week(ts: float) -> int:
    """Monday 00:00 UTC is 0 (the Unix epoch was a Thursday)."""
    return int((math.floor(ts / 3600) + 72) % WEEK_HOURS)


@dataclass(frozen=True)
class HourlyHeld:
    """``held[i, j]``: the share of hour ``start_hour + j*3600`` GPU ``keys[i]`` was held (0..1;
    NaN: no data)."""

    start_hour: int
    keys: Sequence[tuple[str, int]]
    held: np.ndarray

    @classmethod
    def empty(cls) -> HourlyHeld:
        return cls(0, [], np.zeros((0, 0)))


@dataclass
class HostHistory:
    hazard: np.ndarray  # (168,) take rate per free GPU-hour, by hour of week
    cum: np.ndarray  # (169,) cumulative hazard, cum[0] = 0
    gpu_factor: dict[int, float]
    busy_profile: np.ndarray  # (168,) mean held share (NaN where unknown)
    popularity: float
    held_share: float  # over the history
    held_runs_hours: np.ndarray  # sorted
    hours_known: int
    # takes per hour on the whole host, by hour of week (cumulative, 169): how often someone
    # arrives and takes GPUs there, whatever number of GPUs is free
    arrivals_cum: np.ndarray = field(default_factory=lambda: np.zeros(WEEK_HOURS + 1))
    # of the hours a GPU of this host was free, the share after which it stayed free for the
    # next STAY_HOURS[i] hours (outcome known inside the history; shrunk to the fleet's)
    stay_free: np.ndarray = field(default_factory=lambda: np.exp(-DEFAULT_RATE * STAY_HOURS))

    def window_hazard(self, start_ts: float, hours: float) -> float:
        """Integrated take rate of this host's GPUs over [start, start + hours]."""
        return window_sum(self.cum, start_ts, hours)


@dataclass
class FleetHistory:
    hosts: dict[str, HostHistory] = field(default_factory=dict)
    fleet_rate: float = DEFAULT_RATE
    fleet_held_share: float = 0.0
    fleet_runs_hours: np.ndarray = field(default_factory=lambda: np.zeros(0))
    built_at: float = 0.0
    hours_known: int = 0
    stay_free: np.ndarray = field(default_factory=lambda: np.exp(-DEFAULT_RATE * STAY_HOURS))
    # the same over the last RECENT_HOURS only (the fleet's, shrunk to the whole history's)
    recent_stay_free: np.ndarray = field(
        default_factory=lambda: np.exp(-DEFAULT_RATE * STAY_HOURS)
    )

    def host(self, name: str) -> HostHistory:
        h = self.hosts.get(name)
        if h is None:
            h = flat_host(self.fleet_rate, self.fleet_runs_hours, self.stay_free)
            self.hosts[name] = h
        return h


def flat_host(rate: float, runs: np.ndarray, stay: np.ndarray | None = None) -> HostHistory:
    hazard = np.full(WEEK_HOURS, rate)
    # a host with no history: the fleet's take rate per free GPU-hour, and (an assumption)
    # two GPUs' worth of it as the host's takes per hour
    return HostHistory(
        hazard, _cumsum(hazard), {}, np.full(WEEK_HOURS, np.nan), 1.0, 0.0, runs, 0,
        _cumsum(hazard * 2.0),
        np.exp(-rate * STAY_HOURS) if stay is None else stay,
    )  # fmt: skip


def _stay_counts(free: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per GPU and window: (free hours followed by that many free hours, free hours whose
    window ends inside the data). ``rem[:, j]``: consecutive free hours from hour j on."""
    n_gpu, n_hours = free.shape
    rem = np.zeros((n_gpu, n_hours + 1), dtype=np.int32)
    for j in range(n_hours - 1, -1, -1):
        rem[:, j] = np.where(free[:, j], rem[:, j + 1] + 1, 0)
    rem = rem[:, :n_hours]
    # the outcome of a start j is known when the data after it is: j + d < n_hours, and a
    # run cut by missing data (not by a take) is left out
    known_end = np.zeros((n_gpu, n_hours + 1), dtype=np.int32)  # first invalid hour from j
    for j in range(n_hours - 1, -1, -1):
        known_end[:, j] = np.where(valid[:, j], known_end[:, j + 1] + 1, 0)
    known_end = known_end[:, :n_hours]
    stayed = np.zeros((n_gpu, STAY_HOURS.size))
    tried = np.zeros((n_gpu, STAY_HOURS.size))
    for i, d in enumerate(STAY_HOURS.astype(int)):
        ok = free & (known_end > d)
        ok[:, max(0, n_hours - d - 1):] = False
        tried[:, i] = ok.sum(axis=1)
        stayed[:, i] = (ok & (rem > d)).sum(axis=1)
    return stayed, tried


def _cumsum(hazard: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(hazard)])


def window_sum(cum: np.ndarray, start_ts: float, hours: float) -> float:
    """Integral of a weekly piecewise-constant rate (cumulative ``cum``) over a window."""
    week = cum[WEEK_HOURS]
    pos = (start_ts / 3600 + 72) % WEEK_HOURS
    full, rest = divmod(hours, WEEK_HOURS)
    total = full * week
    end = pos + rest

    def at(x: float) -> float:  # cumulative up to x hours into the week (x < 2 weeks)
        k, frac = divmod(x, 1.0)
        ki = int(k)
        if ki >= WEEK_HOURS:
            return week + at(x - WEEK_HOURS)
        return float(cum[ki] + frac * (cum[ki + 1] - cum[ki]))

    return float(total + at(end) - at(pos))


def _runs(busy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Lengths of completed held runs (a run that reaches the end of the data is left out)."""
    b = np.concatenate([[False], busy & valid, [False]]).astype(np.int8)
    d = np.diff(b)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    lengths = ends - starts
    if lengths.size and ends[-1] == busy.size:
        lengths = lengths[:-1]
    if lengths.size and starts[0] == 0:
        lengths = lengths[1:]  # began before the data: its true length is unknown
    return lengths


def build_history(data: HourlyHeld, *, built_at: float = 0.0) -> FleetHistory:
    """Features of every host in ``data`` (hosts not in it get the fleet's rates on demand)."""
    held = np.asarray(data.held, dtype=float)
    if held.size == 0 or not data.keys:
        return FleetHistory(built_at=built_at)
    _n_gpu, n_hours = held.shape
    valid = ~np.isnan(held)
    h = np.where(valid, held, 0.0)
    busy = valid & (h >= FREE_BELOW)
    free = valid & (h < FREE_BELOW)
    # a take: free in hour j-1, held in hour j
    events = np.zeros_like(busy)
    events[:, 1:] = free[:, :-1] & busy[:, 1:]
    exposure = np.zeros_like(free)
    exposure[:, 1:] = free[:, :-1] & valid[:, 1:]
    how = (np.arange(n_hours) + data.start_hour // 3600 + 72) % WEEK_HOURS

    ev_g = events.sum(axis=1).astype(float)
    ex_g = exposure.sum(axis=1).astype(float)
    fleet_rate = (ev_g.sum() + 1.0) / (ex_g.sum() + 1.0 / DEFAULT_RATE)
    fleet_held = float(h[valid].mean()) if valid.any() else 0.0

    host_rows: dict[str, list[int]] = {}
    for i, (host, _) in enumerate(data.keys):
        host_rows.setdefault(host, []).append(i)
    all_runs: list[np.ndarray] = []
    runs_of: dict[str, np.ndarray] = {}
    for host, rows in host_rows.items():
        runs = [_runs(busy[i], valid[i]) for i in rows]
        runs_of[host] = np.sort(np.concatenate(runs)) if runs else np.zeros(0)
        all_runs.append(runs_of[host])
    fleet_runs = np.sort(np.concatenate(all_runs)) if all_runs else np.zeros(0)

    stayed, tried = _stay_counts(free, valid)
    prior = np.exp(-fleet_rate * STAY_HOURS)  # where the fleet has no such window yet
    fleet_stay = (stayed.sum(axis=0) + 1.0 * prior) / (tried.sum(axis=0) + 1.0)
    cut = max(0, n_hours - RECENT_HOURS)
    r_stayed, r_tried = _stay_counts(free[:, cut:], valid[:, cut:])
    recent = (r_stayed.sum(axis=0) + SHRINK_STAY * fleet_stay) / (r_tried.sum(axis=0) + SHRINK_STAY)
    out = FleetHistory(
        fleet_rate=float(fleet_rate), fleet_held_share=fleet_held, fleet_runs_hours=fleet_runs,
        built_at=built_at, hours_known=n_hours, stay_free=fleet_stay, recent_stay_free=recent,
    )  # fmt: skip
    for host, rows in host_rows.items():
        r = np.asarray(rows)
        ev, ex = events[r], exposure[r]
        host_rate = (ev.sum() + SHRINK_HOST * fleet_rate) / (ex.sum() + SHRINK_HOST)
        ev_w = np.bincount(how, weights=ev.sum(axis=0), minlength=WEEK_HOURS)
        ex_w = np.bincount(how, weights=ex.sum(axis=0), minlength=WEEK_HOURS)
        hazard = (ev_w + SHRINK_HOUR * host_rate) / (ex_w + SHRINK_HOUR)
        factors = {
            data.keys[i][1]: float(
                ((ev_g[i] + SHRINK_GPU * host_rate) / (ex_g[i] + SHRINK_GPU)) / host_rate
            )
            for i in rows
        }
        hv = valid[r]
        held_w = np.bincount(how, weights=np.where(hv, h[r], 0.0).sum(axis=0), minlength=168)
        cnt_w = np.bincount(how, weights=hv.sum(axis=0).astype(float), minlength=WEEK_HOURS)
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = np.where(cnt_w > 0, held_w / np.maximum(cnt_w, 1), np.nan)
        share = float(h[r][hv].mean()) if hv.any() else fleet_held
        pop = share / fleet_held if fleet_held > 0 else 1.0
        seen = hv.any(axis=0)
        hours_w = np.bincount(how, weights=seen.astype(float), minlength=WEEK_HOURS)
        host_arr = (ev.sum() + SHRINK_HOST * fleet_rate * 2.0) / (seen.sum() + SHRINK_HOST)
        arr_w = (ev_w + SHRINK_HOUR * host_arr) / (hours_w + SHRINK_HOUR)
        out.hosts[host] = HostHistory(
            hazard, _cumsum(hazard), factors, profile, pop, share, runs_of[host],
            int(seen.sum()), _cumsum(arr_w),
            (stayed[r].sum(axis=0) + SHRINK_STAY * fleet_stay)
            / (tried[r].sum(axis=0) + SHRINK_STAY),
        )  # fmt: skip
    return out


def residual_hold_hours(runs: np.ndarray, age_hours: float, fallback: np.ndarray) -> float:
    """Median remaining hold time of a GPU held for ``age_hours`` so far: the median of
    (L - age) over past held runs longer than the age; the fleet's runs when the host has few;
    the age itself (a job tends to run about as long again) when nobody has any."""
    for pool in (runs, fallback):
        longer = pool[pool > age_hours]
        if longer.size >= 5:
            return float(np.median(longer) - age_hours)
    return max(1.0, age_hours)


def residual_hold_many(runs: np.ndarray, ages: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``residual_hold_hours`` for many ages at once (``runs`` and ``fallback`` sorted)."""
    ages = np.asarray(ages, dtype=float)
    out = np.maximum(1.0, ages)
    todo = np.ones(ages.shape, dtype=bool)
    for pool in (runs, fallback):
        if pool.size == 0 or not todo.any():
            continue
        start = np.searchsorted(pool, ages, side="right")
        n = pool.size - start
        ok = todo & (n >= 5)
        if ok.any():
            lo = pool[np.minimum(start + (n - 1) // 2, pool.size - 1)]
            hi = pool[np.minimum(start + n // 2, pool.size - 1)]
            out = np.where(ok, (lo + hi) / 2 - ages, out)
            todo &= ~ok
    return out
