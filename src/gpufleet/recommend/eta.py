"""When nothing fits now: which limit binds, and when and where a fitting set likely frees up.
Pure: a request and the fleet's arrays (``rank.FleetIndex``) in, a reason and an ``Eta`` out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from gpufleet.i18n import ENGLISH, Msg, msg, nmsg
from gpufleet.recommend.request import RecommendRequest, model_matches

if TYPE_CHECKING:
    from gpufleet.recommend.rank import FleetIndex

ETA_HOSTS = 64


@dataclass(frozen=True)
class Eta:
    host: str
    gpus: tuple[int, ...]
    at: float
    in_hours: float  # the median estimate
    reason: str
    low_hours: float = 0.0  # an 80% range: the 10th and 90th percentiles of past holds
    high_hours: float = 0.0
    # where the range comes from: "past holds", or "N past estimates" (online.EtaLedger)
    range_from: str = "past holds"
    # ``reason`` as a message (``reason`` is its English), for the page and the CLI
    reason_msg: Msg | None = None

    def with_range(self, low: float, high: float, estimates: int) -> Eta:
        """The same estimate with the 80% range from the errors of ``estimates`` past
        estimates of this fleet (online.EtaLedger)."""
        params = dict(self.reason_msg.params) if self.reason_msg is not None else {}
        m = msg("likely free in ~{hours:.1f} h somewhere (80% range {low:.1f}-{high:.1f} h, from"
                " how far off this fleet's last {estimates} estimates were); likeliest on"
                " {host}: {detail}", hours=self.in_hours, low=low, high=high,
                estimates=estimates, host=params.get("host", self.host),
                detail=params.get("detail", []))  # fmt: skip
        return replace(self, low_hours=low, high_hours=high, reason=m.render(ENGLISH),
                       reason_msg=m, range_from=f"{estimates} past estimates")  # fmt: skip

    def as_json(self) -> dict:
        return {
            "host": self.host, "gpus": list(self.gpus), "at": round(self.at, 1),
            "at_iso": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="minutes"),
            "in_hours": round(self.in_hours, 2), "low_hours": round(self.low_hours, 2),
            "high_hours": round(self.high_hours, 2), "range_from": self.range_from,
            "reason": self.reason,
            "reason_i18n": self.reason_msg.as_json() if self.reason_msg else None,
        }  # fmt: skip


def _need(req: RecommendRequest, ix: FleetIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per GPU: of an accepted model with the memory in total; per host: online."""
    name_ok = np.asarray([model_matches(req, name) for name in ix.names], dtype=bool)
    big = (
        name_ok[ix.g_name] & (ix.g_total >= float(req.gpu_mem_bytes))
        if ix.g_host.size
        else np.zeros(0, dtype=bool)
    )
    return big, ix.h_online


def nothing_fits_reason(req: RecommendRequest, ix: FleetIndex) -> Msg:
    """Why no single host fits now, naming the limit that binds: GPU model, GPU memory (per
    card, or in use now), free GPUs, disk, or hosts offline (a message: its English is the
    API's ``note``)."""
    k, n = req.gpus, len(ix.h_names)
    mem = req.gpu_mem_gib
    what = (
        nmsg("{n} free GPU with {gib:g} GiB of model {models}",
             "{n} free GPUs with {gib:g} GiB of model {models}", k, gib=mem,
             models=", ".join(req.gpu_models))
        if req.gpu_models
        else nmsg("{n} free GPU with {gib:g} GiB", "{n} free GPUs with {gib:g} GiB", k, gib=mem)
    )  # fmt: skip
    head = msg("no online host has {what} right now", what=what)
    if n == 0 or ix.g_host.size == 0:
        return msg("{head}: the fleet has no hosts", head=head)
    name_ok = np.asarray([model_matches(req, name) for name in ix.names], dtype=bool)[ix.g_name]
    online = ix.h_online[ix.g_host]

    def most(mask: np.ndarray) -> int:
        return int(np.bincount(ix.g_host[mask], minlength=n).max()) if mask.any() else 0

    if req.gpu_models and not (name_ok & online).any():
        return msg("{head} (GPU model: no online host has a {models})", head=head,
                   models=", ".join(req.gpu_models))  # fmt: skip
    big = name_ok & (ix.g_total >= float(req.gpu_mem_bytes))
    if most(big & online) < k:
        if most(big) >= k:
            return nmsg("{head} (hosts offline: only offline hosts have {n} such GPU)",
                        "{head} (hosts offline: only offline hosts have {n} such GPUs)", k,
                        head=head)  # fmt: skip
        return nmsg("{head} (GPU memory: at most {most} GPU of {gib:g} GiB or more on one"
                    " online host)", "{head} (GPU memory: at most {most} GPUs of {gib:g} GiB or"
                    " more on one online host)", k, head=head, most=most(big & online),
                    gib=mem)  # fmt: skip
    free = big & online & ix.g_free
    if most(free) < k:
        return msg("{head} (GPUs: at most {most} of them free on one host now)", head=head,
                   most=most(free))  # fmt: skip
    roomy = free & (ix.g_used + float(req.gpu_mem_bytes) <= ix.g_total)
    if most(roomy) < k:
        return msg("{head} (GPU memory in use: {free} free on one host, but only {roomy} with"
                   " {gib:g} GiB unused)", head=head, free=most(free), roomy=most(roomy),
                   gib=mem)  # fmt: skip
    if req.data_gib > 0:
        return nmsg("{head} (disk: the hosts with {n} free GPU have less than {gib:g} GiB of"
                    " free disk for the data)", "{head} (disk: the hosts with {n} free GPUs have"
                    " less than {gib:g} GiB of free disk for the data)", k, head=head,
                    gib=req.data_gib)  # fmt: skip
    return head


def estimate_eta(req: RecommendRequest, ix: FleetIndex) -> Eta | None:
    """When and where a fitting set most likely frees up: each held GPU's remaining time from
    how long its job has run and how long holds on that host lasted before (the median, and
    an 80% range from the 10th and 90th percentiles); the host whose k-th GPU frees first."""
    k, n = req.gpus, len(ix.h_names)
    if n == 0 or ix.g_host.size == 0:
        return None
    big, online = _need(req, ix)
    usable_now = big & ix.g_free & (ix.g_used + float(req.gpu_mem_bytes) <= ix.g_total)
    rest = ix.residuals()
    held = big & ~ix.g_free & ix.g_taken
    ok = (usable_now | held) & online[ix.g_host]
    if not ok.any():
        return None
    med = np.where(usable_now, 0.0, rest[0])
    lo = np.where(usable_now, 0.0, rest[1])
    hi = np.where(usable_now, 0.0, rest[2])
    gi = np.flatnonzero(ok)
    hosts = ix.g_host[gi]
    counts = np.bincount(hosts, minlength=n)
    good = counts >= k
    if not good.any():
        return None
    gi = gi[good[hosts]]
    hosts = ix.g_host[gi]
    order = np.lexsort((ix.g_index[gi], med[gi], hosts))
    gi, hosts = gi[order], hosts[order]
    first = np.searchsorted(hosts, hosts, side="left")
    kth = gi[(np.arange(gi.size) - first) == k - 1]  # the k-th soonest GPU of each host
    kth_host = ix.g_host[kth]
    best_pos = np.lexsort((np.asarray(ix.h_names, dtype=object)[kth_host], med[kth]))[0]
    h = int(kth_host[best_pos])
    mine = gi[hosts == h][:k]
    ready = float(med[kth[best_pos]])
    low = float(np.sort(lo[mine])[k - 1])
    high = float(np.sort(hi[mine])[k - 1])
    gpus = tuple(sorted(int(i) for i in ix.g_index[mine]))
    # when anywhere: the soonest of many hosts is sooner than any one host's; the
    # ETA_HOSTS hosts whose k-th GPU frees soonest (the others barely move it)
    soon = kth_host[np.argsort(med[kth], kind="stable")[:ETA_HOSTS]]
    near = gi[np.isin(hosts, soon)]
    anywhere = _fleet_ready(k, ix.g_host[near], np.where(usable_now[near], 0.0, med[near]),
                            np.where(usable_now[near], 0.0, hi[near]))  # fmt: skip
    if anywhere is not None:
        ready, low, high = anywhere
    busy = [(int(ix.g_index[g]), ix.g_age[g]) for g in mine if not usable_now[g]]
    busy.sort()
    parts: list[Msg | str] = [msg("GPU {gpu} held for {hours:.1f} h", gpu=i, hours=float(a))
                              for i, a in busy[:3]]  # fmt: skip
    if len(busy) > 3:
        parts.append("...")
    now_free = sorted(int(ix.g_index[g]) for g in mine if usable_now[g])
    if now_free:
        parts.append(msg("GPU {gpus} free now", gpus=", ".join(map(str, now_free))))
    reason = msg("likely free in ~{hours:.1f} h somewhere (80% range {low:.1f}-{high:.1f} h),"
                 " judging by how long holds lasted before; likeliest on {host}: {detail}",
                 hours=ready, low=low, high=high, host=ix.h_names[h], detail=parts)  # fmt: skip
    now = ix.fleet.now
    return Eta(ix.h_names[h], gpus, now + ready * 3600, ready, reason.render(ENGLISH), low, high,
               reason_msg=reason)  # fmt: skip


_T_HOURS = np.geomspace(1 / 60, 24 * 90, 36)  # 1 min .. 90 days, steps of ~1.4x


def _fleet_ready(
    k: int, host: np.ndarray, med: np.ndarray, hi: np.ndarray
) -> tuple[float, float, float] | None:
    """Median and 80% range of the time until *some* host has ``k`` fitting GPUs free.

    Each held GPU's remaining time is log-logistic with its median and 90th percentile
    (free GPUs: 0); GPUs are taken as independent (a multi-GPU job frees its GPUs together:
    a known simplification); per host the chance that at least ``k`` are free by t (a
    Poisson-binomial), and across hosts the chance that at least one host is ready."""
    if host.size == 0:
        return None
    t = _T_HOURS
    med = np.maximum(med, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.log(np.maximum(hi, med * 1.05) / np.maximum(med, 1e-9))
        beta = np.where(spread > 0, np.log(9.0) / np.where(spread > 0, spread, 1.0), 10.0)
    beta = np.clip(beta, 0.3, 10.0)
    with np.errstate(divide="ignore", over="ignore"):
        ratio = (t[None, :] / np.maximum(med, 1e-9)[:, None]) ** (-beta[:, None])
    cdf = np.where(med[:, None] <= 0, 1.0, 1.0 / (1.0 + ratio))  # (gpus, times)
    hosts, pos = np.unique(host, return_inverse=True)
    order = np.argsort(pos, kind="stable")
    pos_s = pos[order]
    slot = np.arange(pos_s.size) - np.searchsorted(pos_s, pos_s, side="left")
    probs = np.zeros((hosts.size, int(slot.max()) + 1, t.size))  # padding: never free
    probs[pos_s, slot] = cdf[order]
    dist = np.zeros((hosts.size, t.size, k + 1))  # P(c GPUs free by t), c = k: k or more
    dist[:, :, 0] = 1.0
    for j in range(probs.shape[1]):  # add each host's j-th GPU, all hosts at once
        p = probs[:, j, :, None]
        new = dist * (1 - p)
        new[:, :, 1:] += dist[:, :, :-1] * p
        new[:, :, k] += dist[:, :, k] * p[:, :, 0]  # k or more stays k or more
        dist = new
    ready_host = dist[:, :, k]  # P(host has k free by t)
    none_ready = np.exp(np.sum(np.log(np.maximum(1.0 - ready_host, 1e-300)), axis=0))
    some = 1.0 - none_ready

    def at(q: float) -> float:
        if some[0] >= q:
            return 0.0
        if some[-1] < q:
            return float(t[-1])
        i = int(np.argmax(some >= q))
        a, b = some[i - 1], some[i]
        f = (q - a) / (b - a) if b > a else 1.0
        return float(np.exp(np.log(t[i - 1]) + f * (np.log(t[i]) - np.log(t[i - 1]))))

    return at(0.5), at(0.1), at(0.9)
