"""Many hosts' samples as columns: the batched form of :func:`metrics.sample_series`.

The engine buffers the samples that arrive between two evaluations and turns them into one
array per metric here (series ids, values, arrival times, order), so that its rules are
evaluated with numpy across every host and GPU at once instead of walking each sample's GPUs
in Python. Values are the same floats :func:`~gpufleet.alerts.metrics.sample_series` gives
(the same operations on the same numbers); a value it would leave out (missing data) is left
out here too. Each sample appears at most once per call (one *layer* of the buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np

from gpufleet.alerts.metrics import (
    GPU_DERIVED,
    HUNG_TEXT,
    LOST_TEXT,
    Labels,
    Thresholds,
    _key,
    _user_key,
)
from gpufleet.wire import Sample

# metric -> its place in a series (sample_series's insertion order): events of one sample are
# put in the order the per-sample engine made them
HOST_ORDER = ("nvml_hung", "collection_errors", "cpu_percent", "load1_per_cpu",
              "memory_used_ratio", "swap_used_ratio", "clock_skew_abs_seconds")  # fmt: skip
GPU_ORDER = ("gpu_error", "xid_events", "gpu_lost", "utilization_gpu_percent",
             "memory_used_bytes", "gpu_memory_used_ratio", "temperature_celsius",
             "power_cap_ratio", "ecc_uncorrected_volatile", "held_idle", "ghost_memory_bytes")  # fmt: skip
METRIC_POS = {m: i for i, m in enumerate(HOST_ORDER)} | {m: i for i, m in enumerate(GPU_ORDER)}
METRIC_POS |= {"disk_used_ratio": 0, "silent_seconds": 0, "host_down": 1, "agent_down": 2}
SPOS = 1024  # order = seq * SPOS + the series' place in its sample (< 1 + disks + 2 * GPUs + 1)

_GPU = attrgetter("index", "error", "xid_events", "utilization_gpu_percent", "memory_used_bytes",
                  "memory_total_bytes", "temperature_celsius", "power_watts",
                  "power_limit_watts", "ecc_uncorrected_volatile")  # fmt: skip
_HOST = attrgetter("cpu_percent", "load1", "cpu_count", "memory_total_bytes",
                   "memory_available_bytes", "swap_total_bytes", "swap_used_bytes")  # fmt: skip
_PROC = attrgetter("gpu_index", "gpu_memory_bytes", "uid", "user")


@dataclass
class Layout:
    """A host's series as its last samples had them (reused while they stay the same)."""

    group: str | None
    gpus: tuple[int, ...]
    mounts: tuple[str, ...]
    host_sid: int
    gpu_sids: np.ndarray
    disk_sids: np.ndarray
    sids: frozenset[int]  # host, mounts, GPUs (user series are per sample)


class SeriesIndex:
    """Series labels <-> dense ids (rows of the engine's arrays)."""

    def __init__(self) -> None:
        self.sids: dict[Labels, int] = {}
        self.keys: list[Labels] = []
        self.layouts: dict[str, Layout] = {}

    def sid(self, key: Labels) -> int:
        got = self.sids.get(key)
        if got is None:
            got = self.sids[key] = len(self.keys)
            self.keys.append(key)
        return got

    def layout(self, host: str, group: str | None, gpus: tuple[int, ...],
               mounts: tuple[str, ...]) -> Layout:  # fmt: skip
        lay = self.layouts.get(host)
        if lay is not None and lay.group == group and lay.gpus == gpus and lay.mounts == mounts:
            return lay
        hs = self.sid(_key(host, group, "host", host))
        g = np.array([self.sid(_key(host, group, "gpu", i)) for i in gpus], np.int64)
        d = np.array([self.sid(_key(host, group, "mount", m)) for m in mounts], np.int64)
        lay = Layout(group, gpus, mounts, hs, g, d, frozenset([hs, *g.tolist(), *d.tolist()]))
        self.layouts[host] = lay
        return lay


@dataclass
class Present:
    """The series one sample had (for alerts whose series a later sample no longer has)."""

    layout: Layout
    users: frozenset[int]

    def has(self, sid: int) -> bool:
        return sid in self.layout.sids or sid in self.users


Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # sids, values, times, order


def _num(col: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """Floats, and where they are missing (None: nothing missing)."""
    if None in col:
        present = np.fromiter((x is not None for x in col), bool, len(col))
        return np.fromiter((0.0 if x is None else x for x in col), float, len(col)), present
    return np.array(col, dtype=float), None


def _truthy(col: tuple[Any, ...]) -> np.ndarray:
    return np.fromiter((bool(x) for x in col), bool, len(col))


def _rows(out: dict[str, Rows], metric: str, sids: np.ndarray, vals: np.ndarray,
          t: np.ndarray, order: np.ndarray, present: np.ndarray | None) -> None:  # fmt: skip
    if present is not None and not present.all():
        sids, vals, t, order = sids[present], vals[present], t[present], order[present]
    if len(sids):
        out[metric] = (sids, vals, t, order)


def layer_rows(
    layer: list[tuple[int, Sample, float, float | None, str | None]],
    index: SeriesIndex,
    wanted: frozenset[str],
    th: Thresholds,
) -> tuple[dict[str, Rows], list[Present]]:
    """``layer``: (seq, sample, now, skew, group), each host at most once. Returns the rows
    of each wanted metric and, per sample, the series it has."""
    n = len(layer)
    out: dict[str, Rows] = {}
    samples = [e[1] for e in layer]
    nows = np.fromiter((e[2] for e in layer), float, n)
    base = np.fromiter((e[0] for e in layer), np.int64, n) * SPOS
    # -- host series
    hms = [s.host_metrics for s in samples]
    want_disks = "disk_used_ratio" in wanted
    disk_vals: list[float] = []
    layouts: list[Layout] = []
    gpu_lists = [s.gpus for s in samples]
    counts = np.fromiter(map(len, gpu_lists), np.int64, n)
    gpus = list(chain.from_iterable(gpu_lists))
    gcols = list(zip(*map(_GPU, gpus), strict=True)) if gpus else [()] * 10
    indices: tuple[int, ...] = gcols[0]
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    n_disks = np.zeros(n, np.int64)
    for i, (e, hm) in enumerate(zip(layer, hms, strict=True)):
        mounts: tuple[str, ...] = ()
        if want_disks and hm.disks:
            ratios: dict[str, float] = {}
            for disk in hm.disks:
                if disk.total_bytes > 0:
                    ratios[disk.mount] = disk.used_bytes / disk.total_bytes
            mounts = tuple(ratios)
            disk_vals += ratios.values()
            n_disks[i] = len(mounts)
        layouts.append(index.layout(e[1].host, e[4], indices[offsets[i] : offsets[i + 1]], mounts))
    host_sids = np.fromiter((lay.host_sid for lay in layouts), np.int64, n)
    hwant = [m for m in HOST_ORDER if m in wanted]
    if hwant:
        hcols = list(zip(*map(_HOST, hms), strict=True))
        for m in hwant:
            order = base + 0
            if m == "nvml_hung":
                vals = np.fromiter((float(any(HUNG_TEXT in x for x in s.errors)) if s.errors
                                    else 0.0 for s in samples), float, n)  # fmt: skip
                _rows(out, m, host_sids, vals, nows, order, None)
            elif m == "collection_errors":
                vals = np.fromiter((float(len(s.errors)) for s in samples), float, n)
                _rows(out, m, host_sids, vals, nows, order, None)
            elif m == "cpu_percent":
                vals, present = _num(hcols[0])
                _rows(out, m, host_sids, vals, nows, order, present)
            elif m == "load1_per_cpu":
                load, present = _num(hcols[1])
                ok = _truthy(hcols[2]) & (True if present is None else present)
                cpus, _ = _num(tuple(c or 1 for c in hcols[2]))
                _rows(out, m, host_sids, load / cpus, nows, order, ok)
            elif m == "memory_used_ratio":
                avail, present = _num(hcols[4])
                ok = _truthy(hcols[3]) & (True if present is None else present)
                total, _ = _num(tuple(c or 1 for c in hcols[3]))
                _rows(out, m, host_sids, 1 - avail / total, nows, order, ok)
            elif m == "swap_used_ratio":
                used, present = _num(hcols[6])
                ok = _truthy(hcols[5]) & (True if present is None else present)
                total, _ = _num(tuple(c or 1 for c in hcols[5]))
                _rows(out, m, host_sids, used / total, nows, order, ok)
            elif m == "clock_skew_abs_seconds":
                vals, present = _num(tuple(e[3] for e in layer))
                _rows(out, m, host_sids, np.abs(vals), nows, order, present)
    if want_disks and disk_vals:
        dsids = np.concatenate([lay.disk_sids for lay in layouts])
        nd = n_disks
        sample_of = np.repeat(np.arange(n), nd)
        within = np.arange(len(dsids)) - np.repeat(np.cumsum(nd) - nd, nd)
        _rows(out, "disk_used_ratio", dsids, np.array(disk_vals), nows[sample_of],
              base[sample_of] + 1 + within, None)  # fmt: skip
    users_of: list[frozenset[int]] = [frozenset()] * n
    if gpus:
        users_of = _gpu_rows(out, layer, layouts, gcols, counts, n_disks, nows, base,
                             index, wanted, th)  # fmt: skip
    return out, [Present(lay, u) for lay, u in zip(layouts, users_of, strict=True)]


def _gpu_rows(out: dict[str, Rows], layer: list[Any], layouts: list[Layout],
              gcols: list[tuple[Any, ...]], counts: np.ndarray, n_disks: np.ndarray,
              nows: np.ndarray, base: np.ndarray, index: SeriesIndex, wanted: frozenset[str],
              th: Thresholds) -> list[frozenset[int]]:  # fmt: skip
    n = len(layer)
    total = int(counts.sum())
    sample_of = np.repeat(np.arange(n), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    order = base[sample_of] + 1 + n_disks[sample_of] + 2 * within
    t = nows[sample_of]
    sids = np.concatenate([lay.gpu_sids for lay in layouts])
    _, errors, xids, util_c, used_c, mtotal_c, temp_c, power_c, limit_c, ecc_c = gcols
    err_none = None if errors.count(None) == total else np.fromiter(
        (x is None for x in errors), bool, total)  # fmt: skip
    zeros = np.zeros(total)
    if "gpu_error" in wanted:
        vals = zeros if err_none is None else (~err_none).astype(float)
        _rows(out, "gpu_error", sids, vals, t, order, None)
    if "xid_events" in wanted:
        vals = np.fromiter(map(len, xids), float, total) if any(xids) else zeros
        _rows(out, "xid_events", sids, vals, t, order, None)
    if "gpu_lost" in wanted:
        vals = zeros
        if err_none is not None or any(xids):
            vals = np.fromiter(
                (float(any(e.xid == 79 for e in x)
                       or (err is not None and any(s in err for s in LOST_TEXT)))
                 for x, err in zip(xids, errors, strict=True)), float, total)  # fmt: skip
        _rows(out, "gpu_lost", sids, vals, t, order, None)
    util, util_ok = _num(util_c)
    used, used_ok = _num(used_c)
    if "utilization_gpu_percent" in wanted:
        _rows(out, "utilization_gpu_percent", sids, util, t, order, util_ok)
    if "memory_used_bytes" in wanted:
        _rows(out, "memory_used_bytes", sids, used, t, order, used_ok)
    if "gpu_memory_used_ratio" in wanted:
        ok = _truthy(mtotal_c) & (True if used_ok is None else used_ok)
        mtotal, _ = _num(tuple(x or 1 for x in mtotal_c))
        _rows(out, "gpu_memory_used_ratio", sids, used / mtotal, t, order, ok)
    if "temperature_celsius" in wanted:
        vals, present = _num(temp_c)
        _rows(out, "temperature_celsius", sids, vals, t, order, present)
    if "power_cap_ratio" in wanted:
        power, present = _num(power_c)
        ok = _truthy(limit_c) & (True if present is None else present)
        limit, _ = _num(tuple(x or 1.0 for x in limit_c))
        _rows(out, "power_cap_ratio", sids, power / limit, t, order, ok)
    if "ecc_uncorrected_volatile" in wanted:
        vals, present = _num(ecc_c)
        _rows(out, "ecc_uncorrected_volatile", sids, vals, t, order, present)
    users_of: list[frozenset[int]] = [frozenset()] * n
    if GPU_DERIVED.isdisjoint(wanted):
        return users_of
    # processes -> their GPU's row (a process on a GPU the sample does not list is ignored)
    procs = [(i, p) for i, e in enumerate(layer) for p in e[1].processes]
    row_of = np.full(n * 64, -1, np.int64)
    row_of[sample_of * 64 + np.array(gcols[0], np.int64)] = np.arange(total)
    held: np.ndarray = np.zeros(total)
    gone: np.ndarray = np.zeros(total)
    has_procs = np.zeros(total, bool)
    users: dict[int, set[str]] = {}
    if procs:
        pcols = list(zip(*(_PROC(p) for _, p in procs), strict=True))
        prow = row_of[np.fromiter((i for i, _ in procs), np.int64, len(procs)) * 64
                      + np.array(pcols[0], np.int64)]  # fmt: skip
        mem, _ = _num(tuple(x or 0 for x in pcols[1]))
        owned = np.fromiter((uid is not None or bool(u) for uid, u in zip(pcols[2], pcols[3],
                            strict=True)), bool, len(procs))  # fmt: skip
        on = prow >= 0
        prow, mem, owned = prow[on], mem[on], owned[on]
        held = np.bincount(prow, weights=mem * owned, minlength=total)
        gone = np.bincount(prow, weights=mem * ~owned, minlength=total)
        has_procs = np.bincount(prow, minlength=total) > 0
        for r, u in zip(prow.tolist(), np.array(pcols[3], object)[on].tolist(), strict=True):
            if u:
                users.setdefault(r, set()).add(u)
    ok_err = np.ones(total, bool) if err_none is None else err_none
    with_users = np.zeros(total, bool)
    if users:
        with_users[list(users)] = True
    hi_ok = ok_err & (True if util_ok is None else util_ok)
    held_idle = np.where(
        has_procs,
        with_users & (held >= th.held_memory_bytes) & (util < th.idle_util_percent),
        False,
    ).astype(float)
    if "ghost_memory_bytes" in wanted:
        plain_ghost = np.where(used >= th.ghost_min_bytes, used, 0.0)
        ghost = np.where(has_procs, gone, plain_ghost)
        _rows(out, "ghost_memory_bytes", sids, ghost, t, order,
              ok_err & (True if used_ok is None else used_ok))  # fmt: skip
    if "held_idle" not in wanted:
        return users_of
    # the user label is kept only on the held-but-idle series (so the alert names them)
    to_user = with_users & hi_ok
    _rows(out, "held_idle", sids, held_idle, t, order, hi_ok & ~to_user)
    rows = np.flatnonzero(to_user)
    if len(rows):
        usids = np.empty(len(rows), np.int64)
        per_sample: dict[int, set[int]] = {}
        so = sample_of[rows].tolist()
        for k, (r, i) in enumerate(zip(rows.tolist(), so, strict=True)):
            host, group = layer[i][1].host, layer[i][4]
            key = _user_key(host, group, gcols[0][r], ",".join(sorted(users[r])))
            usids[k] = sid = index.sid(key)
            per_sample.setdefault(i, set()).add(sid)
        users_of = [frozenset(per_sample.get(i, ())) for i in range(n)]
        out["held_idle@user"] = (usids, held_idle[rows], t[rows], order[rows] + 1)
    return users_of
