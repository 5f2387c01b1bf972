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
from itertools import accumulate, chain
from operator import attrgetter, itemgetter
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


@dataclass
class Layout:
    """A host's series as its last samples had them (reused while they stay the same)."""

    group: str | None
    gpus: tuple[int, ...]
    raw_mounts: tuple[str, ...]  # as listed (a mount listed twice: its last entry counts)
    keep: np.ndarray  # the entries of raw_mounts that are series, in series order
    dup: bool
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
        self.user: dict[tuple[int, str], int] = {}  # (GPU series, users) -> series

    def sid(self, key: Labels) -> int:
        got = self.sids.get(key)
        if got is None:
            got = self.sids[key] = len(self.keys)
            self.keys.append(key)
        return got

    def layout(self, host: str, group: str | None, gpus: tuple[int, ...],
               raw_mounts: tuple[str, ...]) -> Layout:  # fmt: skip
        lay = self.layouts.get(host)
        if (lay is not None and lay.gpus == gpus and lay.raw_mounts == raw_mounts
                and lay.group == group):  # fmt: skip
            return lay
        last = {m: j for j, m in enumerate(raw_mounts)}  # first place, last entry (a dict)
        hs = self.sid(_key(host, group, "host", host))
        g = np.array([self.sid(_key(host, group, "gpu", i)) for i in gpus], np.int64)
        d = np.array([self.sid(_key(host, group, "mount", m)) for m in last], np.int64)
        lay = Layout(group, gpus, raw_mounts, np.array(list(last.values()), np.int64),
                     len(last) < len(raw_mounts), hs, g, d,
                     frozenset([hs, *g.tolist(), *d.tolist()]))  # fmt: skip
        self.layouts[host] = lay
        return lay

    def user_sid(self, host: str, group: str | None, gpu_sid: int, gpu: int, users: str) -> int:
        got = self.user.get((gpu_sid, users))
        if got is None:
            got = self.user[(gpu_sid, users)] = self.sid(_user_key(host, group, gpu, users))
        return got


Present = tuple[Layout, tuple[int, ...]]  # the series one sample had (layout, user series)


def present_has(p: Present, sid: int) -> bool:
    return sid in p[0].sids or sid in p[1]


Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # sids, values, times, order


class _Cols:
    """Fields of many pydantic models, a column at a time, read from their ``__dict__`` (a
    C-level dict lookup per object; a field missing there is read as an attribute). Number
    fields are read together (:meth:`prefetch`): one array of them, None as NaN."""

    __slots__ = ("dicts", "nums", "objs")

    def __init__(self, objs: list[Any]) -> None:
        self.objs = objs
        self.dicts: list[dict[str, Any]] | None = None
        self.nums: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def __call__(self, name: str) -> list[Any]:
        if self.dicts is None:
            self.dicts = list(map(vars, self.objs))
        try:
            return list(map(itemgetter(name), self.dicts))
        except KeyError:
            return list(map(attrgetter(name), self.objs))

    def prefetch(self, names: list[str]) -> None:
        names = [x for x in names if x not in self.nums]
        if not names or not self.objs:
            return
        if self.dicts is None:
            self.dicts = list(map(vars, self.objs))
        try:  # (one name: a value per object, not a tuple; the reshape makes it a column)
            table = np.array(list(map(itemgetter(*names), self.dicts)), float)
        except KeyError:
            table = np.array(list(map(attrgetter(*names), self.objs)), float)
        table = table.reshape(len(self.objs), len(names))
        for j, name in enumerate(names):
            col = table[:, j]
            if np.isnan(col).any():  # None (a validated sample holds no NaN; not assumed)
                present = np.fromiter((x is not None for x in self(name)), bool, len(col))
                self.nums[name] = (np.where(present, col, 0.0), present)
            else:
                self.nums[name] = (col, None)

    def num(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Floats, and where they are present (None: all are)."""
        if name not in self.nums:
            self.prefetch([name])
        if not self.objs:
            return np.zeros(0), None
        return self.nums[name]


def _num(col: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Floats, and where they are present (None: all are). A missing value (None) is NaN
    to numpy; validated samples hold no NaN, but a NaN is checked for, not assumed away."""
    arr = np.array(col, dtype=float)
    if not len(arr) or not np.isnan(arr).any():
        return arr, None
    present = np.fromiter((x is not None for x in col), bool, len(col))
    return np.where(present, arr, 0.0), present


def _truthy(col: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """A divisor column: where it is given and not zero, and the values (1 elsewhere)."""
    arr, present = col
    ok = arr != 0 if present is None else present & (arr != 0)
    return ok, np.where(ok, arr, 1.0)


def _and(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    return a if b is None else a & b


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
    nows = np.array([e[2] for e in layer], float)
    base = np.array([e[0] for e in layer], np.int64) * SPOS
    of_sample = _Cols(samples)
    hms = of_sample("host_metrics")
    of_host = _Cols(hms)
    gpu_lists = of_sample("gpus")
    gcount = list(map(len, gpu_lists))
    goff = [0, *accumulate(gcount)]
    gpus = list(chain.from_iterable(gpu_lists))
    of_gpu = _Cols(gpus)
    derived = not GPU_DERIVED.isdisjoint(wanted)
    of_gpu.prefetch(["index", *(f for m, fields in _GPU_FIELDS.items()
                                if m in wanted or (derived and m == "derived") for f in fields)])  # fmt: skip
    gidx: list[int] = of_gpu.num("index")[0].astype(np.int64).tolist()
    # -- mounts: a mount with no size is no series
    want_disks = "disk_used_ratio" in wanted
    dmount: list[str] = []
    dcount = [0] * n
    ratio = np.zeros(0)
    if want_disks:
        disk_lists = of_host("disks")
        dcount = list(map(len, disk_lists))
        disks = list(chain.from_iterable(disk_lists))
        if disks:
            of_disk = _Cols(disks)
            dmount = of_disk("mount")
            dtotal = np.array(of_disk("total_bytes"), float)
            dused = np.array(of_disk("used_bytes"), float)
            sized = dtotal > 0
            if not sized.all():
                keep = np.flatnonzero(sized)
                dcount = np.bincount(np.repeat(np.arange(n), dcount)[keep], minlength=n).tolist()
                dmount = [dmount[k] for k in keep.tolist()]
                dtotal, dused = dtotal[keep], dused[keep]
            ratio = dused / dtotal
    doff = [0, *accumulate(dcount)]
    lay_of = index.layout
    layouts = [
        lay_of(
            s.host, e[4], tuple(gidx[goff[i] : goff[i + 1]]), tuple(dmount[doff[i] : doff[i + 1]])
        )
        for i, (e, s) in enumerate(zip(layer, samples, strict=True))
    ]
    host_sids = np.array([lay.host_sid for lay in layouts], np.int64)
    of_host.prefetch([f for m, fields in _HOST_FIELDS.items() if m in wanted for f in fields])
    # -- host series
    for m in HOST_ORDER:
        if m not in wanted:
            continue
        present: np.ndarray | None = None
        if m in ("nvml_hung", "collection_errors"):
            errs = of_sample("errors")
            if not any(errs):
                vals = np.zeros(n)
            elif m == "nvml_hung":
                vals = np.array([float(any(HUNG_TEXT in x for x in e)) for e in errs])
            else:
                vals = np.array(list(map(len, errs)), float)
        elif m == "cpu_percent":
            vals, present = of_host.num("cpu_percent")
        elif m == "load1_per_cpu":
            load, present = of_host.num("load1")
            ok, cpus = _truthy(of_host.num("cpu_count"))
            vals, present = load / cpus, _and(ok, present)
        elif m == "memory_used_ratio":
            avail, present = of_host.num("memory_available_bytes")
            ok, total = _truthy(of_host.num("memory_total_bytes"))
            vals, present = 1 - avail / total, _and(ok, present)
        elif m == "swap_used_ratio":
            used, present = of_host.num("swap_used_bytes")
            ok, total = _truthy(of_host.num("swap_total_bytes"))
            vals, present = used / total, _and(ok, present)
        else:  # clock_skew_abs_seconds
            vals, present = _num([e[3] for e in layer])
            vals = np.abs(vals)
        _rows(out, m, host_sids, vals, nows, base, present)
    if len(ratio):
        dsids = np.concatenate([lay.disk_sids for lay in layouts])
        n_series = [len(lay.disk_sids) for lay in layouts]
        dsample = np.repeat(np.arange(n), n_series)
        if any(lay.dup for lay in layouts):  # a mount listed twice: its last entry counts
            ratio = ratio[np.concatenate([doff[i] + lay.keep for i, lay in enumerate(layouts)])]
        within = np.arange(len(dsids)) - np.repeat(np.cumsum(n_series) - n_series, n_series)
        _rows(out, "disk_used_ratio", dsids, ratio, nows[dsample], base[dsample] + 1 + within,
              None)  # fmt: skip
    n_disks = np.array([len(lay.disk_sids) for lay in layouts], np.int64)
    users_of: list[tuple[int, ...]] = [()] * n
    if gpus and not _GPU_METRICS.isdisjoint(wanted):
        users_of = _gpu_rows(out, layer, of_sample, layouts, of_gpu, gidx, np.array(gcount),
                             n_disks, nows, base, index, wanted, th)  # fmt: skip
    return out, list(zip(layouts, users_of, strict=True))


_GPU_METRICS = frozenset(GPU_ORDER)
# metric -> the number fields it reads ("derived": held_idle and ghost_memory_bytes)
_HOST_FIELDS = {
    "cpu_percent": ("cpu_percent",), "load1_per_cpu": ("load1", "cpu_count"),
    "memory_used_ratio": ("memory_available_bytes", "memory_total_bytes"),
    "swap_used_ratio": ("swap_used_bytes", "swap_total_bytes"),
}  # fmt: skip
_GPU_FIELDS = {
    "utilization_gpu_percent": ("utilization_gpu_percent",),
    "memory_used_bytes": ("memory_used_bytes",),
    "gpu_memory_used_ratio": ("memory_used_bytes", "memory_total_bytes"),
    "temperature_celsius": ("temperature_celsius",),
    "power_cap_ratio": ("power_watts", "power_limit_watts"),
    "ecc_uncorrected_volatile": ("ecc_uncorrected_volatile",),
    "derived": ("utilization_gpu_percent", "memory_used_bytes"),
}  # fmt: skip


def _gpu_rows(out: dict[str, Rows], layer: list[Any], of_sample: _Cols,
              layouts: list[Layout], of_gpu: _Cols, gidx: list[int], counts: np.ndarray,
              n_disks: np.ndarray, nows: np.ndarray, base: np.ndarray, index: SeriesIndex,
              wanted: frozenset[str], th: Thresholds) -> list[tuple[int, ...]]:  # fmt: skip
    n = len(layer)
    total = len(gidx)
    sample_of = np.repeat(np.arange(n), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    order = base[sample_of] + 1 + n_disks[sample_of] + 2 * within
    t = nows[sample_of]
    sids = np.concatenate([lay.gpu_sids for lay in layouts])
    derived = not GPU_DERIVED.isdisjoint(wanted)
    zeros = np.zeros(total)
    errors: list[Any] = []
    err_none: np.ndarray | None = None  # None: no GPU reports an error
    if derived or "gpu_error" in wanted or "gpu_lost" in wanted:
        errors = of_gpu("error")
        if errors.count(None) != total:
            err_none = np.array([x is None for x in errors])
    if "gpu_error" in wanted:
        _rows(out, "gpu_error", sids, zeros if err_none is None else (~err_none).astype(float),
              t, order, None)  # fmt: skip
    xids = of_gpu("xid_events") if ("xid_events" in wanted or "gpu_lost" in wanted) else []
    if "xid_events" in wanted:
        vals = np.array(list(map(len, xids)), float) if any(xids) else zeros
        _rows(out, "xid_events", sids, vals, t, order, None)
    if "gpu_lost" in wanted:
        vals = zeros
        if err_none is not None or any(xids):
            vals = np.array([float(any(e.xid == 79 for e in x)
                                   or (err is not None and any(s in err for s in LOST_TEXT)))
                             for x, err in zip(xids, errors or [None] * total, strict=True)])  # fmt: skip
        _rows(out, "gpu_lost", sids, vals, t, order, None)
    util, util_ok = np.zeros(0), None
    if derived or "utilization_gpu_percent" in wanted:
        util, util_ok = of_gpu.num("utilization_gpu_percent")
    if "utilization_gpu_percent" in wanted:
        _rows(out, "utilization_gpu_percent", sids, util, t, order, util_ok)
    used, used_ok = np.zeros(0), None
    if derived or "memory_used_bytes" in wanted or "gpu_memory_used_ratio" in wanted:
        used, used_ok = of_gpu.num("memory_used_bytes")
    if "memory_used_bytes" in wanted:
        _rows(out, "memory_used_bytes", sids, used, t, order, used_ok)
    if "gpu_memory_used_ratio" in wanted:
        ok, mtotal = _truthy(of_gpu.num("memory_total_bytes"))
        _rows(out, "gpu_memory_used_ratio", sids, used / mtotal, t, order, _and(ok, used_ok))
    if "temperature_celsius" in wanted:
        vals, present = of_gpu.num("temperature_celsius")
        _rows(out, "temperature_celsius", sids, vals, t, order, present)
    if "power_cap_ratio" in wanted:
        power, present = of_gpu.num("power_watts")
        ok, limit = _truthy(of_gpu.num("power_limit_watts"))
        _rows(out, "power_cap_ratio", sids, power / limit, t, order, _and(ok, present))
    if "ecc_uncorrected_volatile" in wanted:
        vals, present = of_gpu.num("ecc_uncorrected_volatile")
        _rows(out, "ecc_uncorrected_volatile", sids, vals, t, order, present)
    users_of: list[tuple[int, ...]] = [()] * n
    if not derived:
        return users_of
    # processes -> their GPU's row (a process on a GPU the sample does not list is ignored)
    plists = of_sample("processes")
    procs = list(chain.from_iterable(plists))
    of_proc = _Cols(procs)
    held: np.ndarray = zeros
    gone: np.ndarray = zeros
    has_procs = np.zeros(total, bool)
    with_users = np.zeros(total, bool)
    label: dict[int, str] = {}  # GPU row -> its users, joined
    if procs:
        row_of = np.full(n * 64, -1, np.int64)
        row_of[sample_of * 64 + np.array(gidx, np.int64)] = np.arange(total)
        psample = np.repeat(np.arange(n), list(map(len, plists)))
        of_proc.prefetch(["gpu_index", "gpu_memory_bytes", "uid"])
        prow = row_of[psample * 64 + of_proc.num("gpu_index")[0].astype(np.int64)]
        mem = of_proc.num("gpu_memory_bytes")[0]  # missing: 0
        users = of_proc("user")
        has_user = np.array(users, dtype=object).astype(bool)
        uid_given = of_proc.num("uid")[1]  # None: every process has a uid
        owned = np.ones(len(prow), bool) if uid_given is None else uid_given | has_user
        on = prow >= 0
        if not on.all():
            prow, mem, owned, has_user = prow[on], mem[on], owned[on], has_user[on]
            users = [users[k] for k in np.flatnonzero(on).tolist()]
        held = np.bincount(prow, weights=mem * owned, minlength=total)
        gone = np.bincount(prow, weights=mem * ~owned, minlength=total)
        has_procs = np.bincount(prow, minlength=total) > 0
        if has_user.any():
            sel = np.flatnonzero(has_user)
            urow = prow[sel]
            names = [users[k] for k in sel.tolist()]
            label = dict(zip(urow.tolist(), names, strict=True))
            many = np.bincount(urow, minlength=total) > 1
            with_users[urow] = True
            if many.any():  # several processes: their users, sorted, once each
                sets: dict[int, set[str]] = {}
                for r, u in zip(urow.tolist(), names, strict=True):
                    if many[r]:
                        sets.setdefault(r, set()).add(u)
                label.update({r: ",".join(sorted(us)) for r, us in sets.items()})
    ok_err = np.ones(total, bool) if err_none is None else err_none
    if "ghost_memory_bytes" in wanted:
        ghost = np.where(has_procs, gone, np.where(used >= th.ghost_min_bytes, used, 0.0))
        _rows(out, "ghost_memory_bytes", sids, ghost, t, order, _and(ok_err, used_ok))
    if "held_idle" not in wanted:
        return users_of
    hi_ok = _and(ok_err, util_ok)
    held_idle = (
        has_procs & with_users & (held >= th.held_memory_bytes) & (util < th.idle_util_percent)
    ).astype(float)
    # the user label is kept only on the held-but-idle series (so the alert names them)
    to_user = with_users & hi_ok
    _rows(out, "held_idle", sids, held_idle, t, order, hi_ok & ~to_user)
    rows = np.flatnonzero(to_user)
    if len(rows):
        so = sample_of[rows].tolist()
        cache, user_sid = index.user, index.user_sid
        usids = []
        for r, i, g_sid in zip(rows.tolist(), so, sids[rows].tolist(), strict=True):
            got = cache.get((g_sid, label[r]))
            if got is None:
                got = user_sid(layer[i][1].host, layer[i][4], g_sid, gidx[r], label[r])
            usids.append(got)
        out["held_idle@user"] = (np.array(usids, np.int64), held_idle[rows], t[rows],
                                 order[rows] + 1)  # fmt: skip
        bounds = np.searchsorted(sample_of[rows], np.arange(n + 1)).tolist()
        users_of = [tuple(usids[bounds[i] : bounds[i + 1]]) for i in range(n)]
    return users_of
