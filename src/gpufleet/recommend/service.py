"""The recommender inside the server: a snapshot of live state, history features from the
warehouse (cached, refreshed in the background), and answers. The only I/O of the package
besides the CLI: the core (gpufleet.recommend.rank) gets plain data.

Its own past answers calibrate what it states (``recommend.online``): every single-host
answer and every "nothing fits" estimate is recorded (``recommend.outcomes``: a SQLite file
in the data dir, so a restart keeps them); every ``recommend.settle_seconds`` the live state
settles what it shows (a GPU of an answer seen held; a waiting request that fits now) and the
stated chance's map is refitted on the outcomes whose window is over."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpufleet.live.state import LiveState, host_status
from gpufleet.recommend import calibrate
from gpufleet.recommend.fleet import FleetSnap, GpuSnap, HostSnap, RecentAnswers
from gpufleet.recommend.history import FleetHistory, HourlyHeld, build_history
from gpufleet.recommend.online import (
    FOLLOW_SECONDS,
    ChanceLedger,
    EtaLedger,
    Recalibrated,
    Said,
)
from gpufleet.recommend.outcomes import DB_FILE, OutcomeDB
from gpufleet.recommend.rank import FleetIndex, Weights, copy_hours, recommend
from gpufleet.recommend.request import RecommendRequest, request_from_any
from gpufleet.store import Store, StoreError
from gpufleet.wire import GpuProcess, Sample, gpu_is_free

log = logging.getLogger(__name__)
# a set just recommended is not offered to the next asker for this long (plus its data copy),
# unless the job shows up on it first: without it, everyone asking at once is sent to the
# same GPUs (docs/recommender.md, "Remembering its answers")
REMEMBER_ANSWERS_SECONDS = FOLLOW_SECONDS


def snapshot_from_live(
    live: LiveState,
    now: float,
    reserved: set[tuple[str, int]] | None = None,
    cache: dict[str, tuple[Any, str, HostSnap]] | None = None,
) -> FleetSnap:
    """Every known host as the recommender sees it (status from the same ``host_status`` as
    the dashboard; a GPU is free by the same ``gpu_is_free``). ``cache`` keeps each host's
    snapshot while its latest sample and status stay the same."""
    hosts = []
    for name in sorted(live.hosts):
        st = live.hosts[name]
        status = host_status(st.last_received, st.interval_seconds, now, **live.status_cfg)
        hit = cache.get(name) if cache is not None and not reserved else None
        if hit is not None and hit[0] is st.sample and hit[1] == status:
            hosts.append(hit[2])
            continue
        snap = host_snap(st.sample, status, reserved or set())
        if cache is not None and not reserved:
            cache[name] = (st.sample, status, snap)
        hosts.append(snap)
    return FleetSnap(now, tuple(hosts))


def host_snap(s: Sample, status: str, reserved: set[tuple[str, int]]) -> HostSnap:
    gpus = []
    by_gpu: dict[int, list[GpuProcess]] = {}
    for p in s.processes:
        by_gpu.setdefault(p.gpu_index, []).append(p)
    for g in s.gpus:
        procs = by_gpu.get(g.index, [])
        if g.error:
            state = "error"
        elif gpu_is_free(g, procs):
            state = "reserved" if (s.host, g.index) in reserved else "free"
        else:
            state = "taken"
        starts = [p.started_at for p in procs if p.started_at is not None]
        gpus.append(GpuSnap(
            g.index, g.name, g.memory_total_bytes, state,  # type: ignore[arg-type]
            memory_used_bytes=g.memory_used_bytes, util_percent=g.utilization_gpu_percent,
            temperature_celsius=g.temperature_celsius, held_since=min(starts) if starts else None,
            users=tuple(sorted({p.user for p in procs if p.user})),
        ))  # fmt: skip
    hm = s.host_metrics
    disks = [d.total_bytes - d.used_bytes for d in hm.disks if d.total_bytes > 0]
    return HostSnap(
        s.host, tuple(gpus), status, hm.load1, hm.cpu_count or s.facts.cpu_count,
        max(disks) if disks else None, tuple(s.errors),
    )  # fmt: skip


def load_history(store: Store, now: float, days: float) -> FleetHistory:
    """Hourly held share per GPU over the last ``days`` (completed hours) from the hour tier,
    through the store's report interface; an empty history where the store has no warehouse."""
    end = int(now // 3600) * 3600
    start = end - int(days * 24) * 3600
    buckets = [(t, str(t)) for t in range(start, end, 3600)]
    rows = store.report_facts(tier="hour", by="gpu", buckets=buckets)
    keys: dict[tuple[str, int], int] = {}
    cells: list[tuple[int, int, float]] = []
    for r in rows:
        host, _, idx = str(r["key"]).rpartition(":")
        if not host or not idx.isdigit():
            continue
        secs = float(r.get("sample_seconds") or 0.0)
        if secs <= 0:
            continue
        row = keys.setdefault((host, int(idx)), len(keys))
        col = (int(r["period_start"]) - start) // 3600
        cells.append((row, col, min(1.0, float(r.get("held_seconds") or 0.0) / secs)))
    held = np.full((len(keys), len(buckets)), np.nan)
    for row, col, frac in cells:
        if 0 <= col < len(buckets):
            held[row, col] = frac
    order = sorted(keys, key=lambda k: k)
    held = held[[keys[k] for k in order]] if order else held
    return build_history(HourlyHeld(start, order, held), built_at=now)


def first_take_in(snap: FleetSnap) -> Any:
    """``online.FirstTake`` from one look at the live state: a GPU held now was taken when
    its oldest process started, if that is after the answer, else (a take not seen start)
    now; a free one has not been seen taken (a hold that started and ended between two looks
    is missed: they are ``recommend.settle_seconds`` apart)."""
    state = {(h.name, g.index): g for h in snap.hosts for g in h.gpus}

    def first_take(host: str, gpu: int, after: float) -> float | None:
        g = state.get((host, gpu))
        if g is None or g.state in ("free", "reserved"):
            return None
        return g.held_since if g.held_since is not None and g.held_since > after else snap.now

    return first_take


class RecommendService:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        cfg = ctx.settings.recommend
        self.days = cfg.history_days
        self.snapshot_seconds = cfg.snapshot_seconds
        self.weights = Weights(copy_gbit_per_second=cfg.copy_gbit_per_second)
        self.tz = ctx.settings.warehouse.timezone
        self.history: FleetHistory | None = None
        self.history_error: str | None = None
        self._snap: tuple[float, FleetSnap, FleetIndex] | None = None
        self._hosts: dict[str, tuple[Any, str, HostSnap]] = {}
        self._lock = threading.Lock()
        self.recent = RecentAnswers()
        # calibration from the fleet's own past answers (recommend.online)
        self.online = cfg.calibrate_online
        self.chance = ChanceLedger()
        self.etas = EtaLedger()
        self.eta_requests: dict[str, RecommendRequest] = {}
        self.map = Recalibrated(calibrate.DEFAULT)
        self.db: OutcomeDB | None = None
        # written at the next settling (or at close), not in the answer's path
        self._unsaved: list[Said] = []
        self._unsaved_etas: list[tuple[str, float, float, str]] = []
        if self.online:
            data_dir = getattr(getattr(ctx.settings, "server", None), "data_dir", None)
            self.db = OutcomeDB(Path(data_dir) / DB_FILE if data_dir else ":memory:")
            for key, body in self.db.load(self.chance, self.etas).items():
                try:
                    self.eta_requests[key] = RecommendRequest.model_validate_json(body)
                except ValueError:
                    continue
            self.map = self.chance.recalibration(time.time(), calibrate.DEFAULT)

    def close(self) -> None:
        """Write what is not written yet and close the file (once; later calls do nothing)."""
        if self.db is not None:
            self._save([], [])
            self.db.close()
            self.db = None

    def _save(self, settled: list[Said], etas_settled: list[tuple[str, float]]) -> None:
        assert self.db is not None
        with self._lock:
            new, self._unsaved = self._unsaved, []
            new_etas, self._unsaved_etas = self._unsaved_etas, []
        self.db.save_answers(new + settled)
        for row in new_etas:
            self.db.save_eta(*row)
        self.db.settle_etas(etas_settled)
        self.db.trim(self.chance.params.max_answers, self.etas.params.max_kept)

    def settle(self, now: float | None = None) -> dict[str, int]:
        """Settle what the live state shows now, refit the stated chance's map, and save."""
        if not self.online:
            return {}
        now = time.time() if now is None else now
        # its own look at the live state (not the answers' cached snapshot: a look taken here
        # must not be what the next asker gets for a second)
        snap = snapshot_from_live(self.ctx.live, now, cache=self._hosts)
        with self._lock:
            done = self.chance.settle(now, first_take_in(snap))
            waiting = list(self.eta_requests.items())
        freed: list[tuple[str, float | None]] = []
        index = FleetIndex(snap, self.history or self.refresh_history(now)) if waiting else None
        for key, req in waiting:
            if key not in self.etas.estimates:
                freed.append((key, None))
            elif index is not None and recommend(req, snap, index.history, weights=self.weights,
                                                 reasons=False, index=index).choices:  # fmt: skip
                freed.append((key, now))
        with self._lock:
            settled: list[tuple[str, float]] = []
            for key, at in freed:
                self.eta_requests.pop(key, None)
                if at is not None and (e := self.etas.settle(key, at)) is not None:
                    settled.append((key, e.actual or 0.0))
            self.map = self.chance.recalibration(now, calibrate.DEFAULT)
        if self.db is not None:
            self._save(done, settled)
        return {"answers_settled": len(done), "estimates_settled": len(settled),
                "calibrated_on": self.map.answers}  # fmt: skip

    def refresh_history(self, now: float | None = None) -> FleetHistory:
        now = time.time() if now is None else now
        try:
            hist = load_history(self.ctx.store, now, self.days)
            self.history_error = None
        except StoreError as exc:
            if self.history_error is None:
                log.warning("recommend: no history (%s); using the fleet's defaults", exc)
            self.history_error = str(exc)
            hist = FleetHistory(built_at=now)
        with self._lock:
            self.history = hist
            self._snap = None
        return hist

    def current(self, now: float) -> tuple[FleetSnap, FleetIndex]:
        hist = self.history or self.refresh_history(now)
        with self._lock:
            cached = self._snap
            if cached is not None and 0 <= now - cached[0] <= self.snapshot_seconds:
                return cached[1], cached[2]
        snap = snapshot_from_live(self.ctx.live, now, cache=self._hosts)
        index = FleetIndex(snap, hist)
        with self._lock:
            self._snap = (now, snap, index)
        return snap, index

    def parse(
        self, body: Any, now: float | None = None
    ) -> tuple[RecommendRequest, FleetSnap, FleetIndex]:
        snap, index = self.current(time.time() if now is None else now)
        return request_from_any(body, snap), snap, index

    def answer(self, req: RecommendRequest, snap: FleetSnap, index: FleetIndex) -> dict[str, Any]:
        t = time.perf_counter()
        with self._lock:
            reserved = self.recent.active(snap.now)
        ix = index.with_reserved(reserved)
        w = dataclasses.replace(self.weights, calibration=self.map) if self.online else self.weights
        ans = recommend(req, snap, index.history, weights=w, tz=self.tz, index=ix)
        if self.online:
            ans = self._remember_outcomes(req, snap, ans)
        if ans.choices and not ans.choices[0].parts:
            top = ans.choices[0]
            until = (
                snap.now + REMEMBER_ANSWERS_SECONDS + copy_hours(req, top.host, self.weights) * 3600
            )
            with self._lock:
                self.recent.add(top.host, top.gpus, until)
        out = ans.as_json()
        out["request"] = req.model_dump()
        out["history_hours"] = index.history.hours_known
        # how many of this fleet's past answers the stated chance was recalibrated on (0: the
        # offline map alone)
        out["calibrated_on_answers"] = self.map.answers if self.online else 0
        out["answered_in_ms"] = round((time.perf_counter() - t) * 1000, 2)
        return out


    def _remember_outcomes(self, req: RecommendRequest, snap: FleetSnap, ans: Any) -> Any:
        """Record the answers (to settle later); a "nothing fits" estimate gets its range
        from this fleet's past estimates once there are enough of them."""
        new = []
        for rank_, c in enumerate(ans.choices):
            if c.parts or not c.features:
                continue
            p0 = float(self.map.base.apply(np.asarray([c.features]))[0])
            follow = FOLLOW_SECONDS + copy_hours(req, c.host, self.weights) * 3600
            new.append(Said(uuid.uuid4().hex, snap.now, c.host, c.gpus, req.hours, p0,
                            rank_ == 0, follow))  # fmt: skip
        eta = ans.eta
        key = uuid.uuid4().hex
        with self._lock:
            for s in new:
                self.chance.record(s)
            self._unsaved += new
            if eta is not None:
                lo, hi, n = self.etas.range(eta.in_hours, eta.low_hours, eta.high_hours, snap.now)
                if n:
                    eta = eta.with_range(lo, hi, n)
                self.etas.record(key, snap.now, eta.in_hours)
                self.eta_requests[key] = req
                self._unsaved_etas.append((key, snap.now, eta.in_hours, req.model_dump_json()))
        return dataclasses.replace(ans, eta=eta) if eta is not ans.eta else ans


async def _every(app: Any, what: str, work: Callable[[RecommendService], object],
                 interval: Callable[[Any], float | None]) -> None:  # fmt: skip
    """Run ``work`` on the app's service in a thread, again ``interval(settings)`` seconds later
    (None: not now, look again in a second); a failure is logged and retried."""
    while True:
        ctx = getattr(app.state, "ctx", None)
        seconds = interval(ctx.settings) if ctx is not None else None
        if seconds is None:
            await asyncio.sleep(1.0)
            continue
        try:
            await asyncio.to_thread(work, service_of(app))
        except Exception:
            log.exception("recommend: %s failed; will try again", what)
        await asyncio.sleep(seconds)


async def settle_forever(app: Any) -> None:
    """Settle the recommender's past answers against the live state every
    ``recommend.settle_seconds`` (and refit what it states)."""
    await _every(app, "settling past answers", RecommendService.settle,
                 lambda s: s.recommend.settle_seconds if s.recommend.calibrate_online else None)


async def refresh_forever(app: Any) -> None:
    """Rebuild the history features every ``recommend.history_refresh_seconds``."""
    await _every(app, "history refresh", RecommendService.refresh_history,
                 lambda s: s.recommend.history_refresh_seconds)


def service_of(app: Any) -> RecommendService:
    svc = getattr(app.state, "recommend", None)
    if svc is None or svc.ctx is not app.state.ctx:
        svc = RecommendService(app.state.ctx)
        app.state.recommend = svc
    return svc
