"""The alert engine: rules evaluated as data arrives, and each alert's life cycle.

Pure: no I/O, no clock of its own (every call takes ``now``). The service feeds it each host's
newest sample as it is stored (:meth:`AlertEngine.observe`: only that host's series are
evaluated, nothing is read back from the store) and calls :meth:`AlertEngine.tick` every few
seconds for what only the clock can tell (silence, held-back resolves, user and fleet sums).

Life cycle of one alert (one rule on one series, e.g. ``gpu_too_hot`` on ``dgx-03`` GPU 5)::

    (condition true) -> pending --for_seconds--> firing --(false for resolve_hold)--> resolved
                        pending --(false)--> dropped (never notified)

A firing alert whose condition clears is kept firing for ``resolve_hold_seconds``; if the
condition comes back in that time it is the same incident (``flaps`` counts it), so a flapping
metric does not page on every flap. Every state change is appended to ``events`` (history).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gpufleet.alerts.columns import METRIC_POS, SPOS, Present, SeriesIndex, layer_rows, present_has
from gpufleet.alerts.metrics import Labels, Thresholds, labels_of
from gpufleet.alerts.rules import Rule, render, render_message
from gpufleet.alerts.window import MetricPlan, Window, WindowTable, compile_plans
from gpufleet.wire import Sample, gpu_is_free

USER_METRICS = ("user_gpus_held", "user_gpus_held_idle")
CLOCK_METRICS = ("silent_seconds", "host_down", "agent_down")
FLEET_METRICS = ("fleet_hosts_silent_ratio", "fleet_gpus_free")


# op -> the rule's condition on an array of values
_VOPS: dict[str, Any] = {">": np.greater, ">=": np.greater_equal, "<": np.less,
                         "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}  # fmt: skip


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    text = rule + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Alert:
    fingerprint: str
    rule: str
    labels: dict[str, str]
    severity: str
    state: str  # pending | firing | resolved
    active_since: float  # condition first true
    value: float | None
    summary: str
    runbook: str
    fired_at: float | None = None
    resolved_at: float | None = None
    clear_since: float | None = None  # firing, but the condition is false since then
    flaps: int = 0
    acked_by: str | None = None
    acked_at: float | None = None
    notify_user: bool = False
    series: dict[str, str] = field(default_factory=dict)  # the labels that identify the series
    # summary and runbook as messages each reader renders in their language (i18n.Msg JSON),
    # where they are a built-in rule's own text; None: show ``summary`` / ``runbook`` as is
    summary_i18n: dict[str, Any] | None = None
    runbook_i18n: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class _Queued(Alert):
    """An alert of a host with samples queued in its engine (see :meth:`AlertEngine.observe`):
    reading any of its fields evaluates the queue first, so an alert someone holds is never
    seen out of date. The engine makes it a plain :class:`Alert` again when it evaluates."""

    def __getattribute__(self, name: str) -> Any:
        engine = object.__getattribute__(self, "__dict__").get("_engine")
        if engine is not None:
            engine.flush()
        return object.__getattribute__(self, name)


def _set_texts(a: Alert, rule: Rule, value: float | None) -> None:
    a.summary = render(rule.summary, a.labels, value)
    a.runbook = render(rule.runbook, a.labels, value)
    summary, runbook = (render_message(t, a.labels, value) for t in (rule.summary, rule.runbook))
    a.summary_i18n = summary.as_json() if summary else None
    a.runbook_i18n = runbook.as_json() if runbook else None


@dataclass
class HostSeen:
    """What the server knows about a host's contact (for silence)."""

    name: str
    last_received: float
    interval_seconds: float
    reachable: bool | None = None  # a probe's (or the SSH poller's) answer; None: no probe
    group: str | None = None


@dataclass
class EngineConfig:
    offline_after_seconds: float = 60.0
    stale_after_intervals: float = 3.0
    resolve_hold_seconds: float = 120.0
    thresholds: Thresholds = field(default_factory=Thresholds)


class AlertEngine:
    def __init__(self, rules: Iterable[Rule], config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.rules: dict[str, Rule] = {}
        self.by_metric: dict[str, list[Rule]] = {}
        self._alerts: dict[str, Alert] = {}  # pending and firing, by fingerprint
        self.events: list[dict[str, Any]] = []  # state changes not yet taken by the service
        # series -> metric -> its windows (series evaluated one at a time: SSH polls, users,
        # the fleet), one per span of plan.spans (same order)
        self._windows: dict[Labels, dict[str, list[Window]]] = {}
        self._key_alerts: dict[Labels, int] = {}  # series -> its pending and firing alerts
        self._host_alerts: dict[str, set[str]] = {}  # host -> fingerprints
        self._user_share: dict[str, dict[str, tuple[int, int]]] = {}  # host -> user -> (held, idle)
        self._free_gpus: dict[str, int] = {}
        self._last_ts: dict[str, float] = {}
        self._unreachable_at: dict[str, float] = {}  # host -> when a probe last got no answer
        self._active: dict[tuple[str, Labels], str] = {}  # (rule, series) -> fingerprint
        self._evaluations = 0
        # samples observed since the last evaluation: layer k holds each host's k-th one
        self._layers: list[list[tuple[int, Sample, float, float | None, str | None]]] = []
        self._queued: dict[str, int] = {}  # host -> its samples in the layers
        self._seq = 0
        self._held: list[Alert] = []  # alerts made _Queued by observe
        self._index = SeriesIndex()
        self._present: dict[str, Present] = {}  # host -> the series its last sample had
        self._cap = 0
        self._act: dict[str, np.ndarray] = {}  # rule -> series id -> has a pending/firing alert
        self._tables: dict[tuple[str, float], WindowTable] = {}  # (metric, span) -> windows
        self._host_sid: dict[tuple[str, str | None], int] = {}
        # while a batch is evaluated: its events and new alerts, put in arrival order after it
        self._order: tuple[Any, ...] | None = None
        self._ordered_events: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._ordered_new: list[tuple[tuple[Any, ...], str]] = []
        self.set_rules(rules)

    @property
    def alerts(self) -> dict[str, Alert]:
        """Pending and firing alerts, by fingerprint (samples observed so far evaluated)."""
        self.flush()
        return self._alerts

    @property
    def evaluations(self) -> int:
        """Rule conditions evaluated (a rule on a series with a value, once per sample)."""
        self.flush()
        return self._evaluations

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self.flush()
        self.rules = {r.name: r for r in rules if r.enabled}
        self.by_metric = {}
        for r in self.rules.values():
            self.by_metric.setdefault(r.metric, []).append(r)
        self._plan: dict[str, MetricPlan] = compile_plans(list(self.rules.values()))
        self.metrics = frozenset(self._plan)  # what samples are turned into (nothing else)
        self._users_wanted = any(m in self._plan for m in USER_METRICS + FLEET_METRICS)
        for name in self.rules:
            if name not in self._act:
                self._act[name] = np.zeros(self._cap, bool)
                for (rule, key), _fp in self._active.items():
                    if rule == name:
                        self._act[name][self._sid(key)] = True
        for fp in [fp for fp, a in self._alerts.items() if a.rule not in self.rules]:
            self._drop(fp)

    # -- series ids -----------------------------------------------------------------------

    def _sid(self, key: Labels) -> int:
        sid = self._index.sid(key)
        if sid >= self._cap:
            self._grow(sid + 1)
        return sid

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap, 1024)
        for name, a in self._act.items():
            self._act[name] = np.concatenate([a, np.zeros(cap - len(a), bool)])
        self._cap = cap

    # -- input --------------------------------------------------------------------------

    def observe(
        self, sample: Sample, *, now: float, skew_seconds: float | None = None,
        group: str | None = None,
    ) -> None:  # fmt: skip
        """A host's newest sample arrived (``now``: server clock). Older samples (a spool
        catching up) are ignored: they say nothing about now.

        O(1): the sample is queued; the queue is evaluated, in arrival order and each sample
        at its own ``now``, by the next :meth:`tick` or read of the engine's state (alerts,
        events, evaluations, snapshot), with numpy across all hosts and GPUs at once."""
        host = sample.host
        if sample.ts < self._last_ts.get(host, float("-inf")):
            return
        self._last_ts[host] = sample.ts
        k = self._queued.get(host, 0)
        self._queued[host] = k + 1
        if k == len(self._layers):
            self._layers.append([])
        self._seq += 1
        self._layers[k].append((self._seq, sample, now, skew_seconds, group))
        for fp in self._host_alerts.get(host, ()):  # their state may change: reading them waits
            a = self._alerts.get(fp)
            if a is not None and type(a) is Alert:
                a.__class__ = _Queued
                a.__dict__["_engine"] = self
                self._held.append(a)

    def flush(self) -> None:
        """Evaluate the samples queued by :meth:`observe` (a no-op when there are none)."""
        if not self._layers:
            return
        layers, self._layers, self._queued = self._layers, [], {}
        for a in self._held:
            a.__class__ = Alert
            a.__dict__.pop("_engine", None)
        self._held = []
        self._begin_ordered()
        for layer in layers:
            self._evaluate_layer(layer)
        self._end_ordered()

    def _evaluate_layer(
        self, layer: list[tuple[int, Sample, float, float | None, str | None]]
    ) -> None:
        rows, present = layer_rows(layer, self._index, self.metrics, self.config.thresholds)
        if len(self._index.keys) > self._cap:
            self._grow(len(self._index.keys))
        for metric, (sids, vals, t, order) in rows.items():
            if metric == "held_idle@user":
                metric = "held_idle"
            self._evaluate_rows(metric, sids, vals, t, order)
        for (seq, sample, now, _skew, _group), here in zip(layer, present, strict=True):
            host = sample.host
            before = self._present.get(host)
            self._present[host] = here
            if (
                before is not None and self._host_alerts.get(host)
                and (before[0] is not here[0] or before[1] != here[1])
            ):  # fmt: skip
                # a process ended, a mount went: its series' alerts clear (in a fixed order)
                for fp in sorted(self._host_alerts[host]):
                    a = self._alerts.get(fp)
                    if a is None:
                        continue
                    sid = self._index.sids.get(labels_of(**a.series))
                    if sid is not None and present_has(before, sid) and not present_has(here, sid):
                        self._order = (seq * SPOS + SPOS - 1, 0, 0)
                        self._condition_false(a, now)
            if self._users_wanted:
                self._account_users(sample)

    def _evaluate_rows(self, metric: str, sids: np.ndarray, vals: np.ndarray, t: np.ndarray,
                       order: np.ndarray) -> None:  # fmt: skip
        """The hot path: one metric's rules on many series at once (each series once). Only
        the rows where a rule holds, or where it has an alert, go on to the life cycle."""
        plan = self._plan.get(metric)
        if plan is None:
            return
        mpos = METRIC_POS.get(metric, 0)
        if plan.plain:
            self._evaluations += len(plan.plain) * len(sids)
            self._apply(plan.plain, sids, vals, t, order, mpos, 0)
        if plan.windowed:
            for span in plan.spans:
                table = self._tables.get((metric, span))
                if table is None:
                    table = self._tables[(metric, span)] = WindowTable(span)
                table.add(sids, t, vals)
            for n, ((i, kind), sub) in enumerate(plan.windowed.items(), 1):
                self._evaluations += len(sub.plain) * len(sids)
                value = self._tables[(metric, plan.spans[i])].value(kind, sids, t, vals)
                self._apply(sub.plain, sids, value, t, order, mpos, n)

    def _apply(self, rules: list[tuple[str, Any, Any, Rule]], sids: np.ndarray,
               vals: np.ndarray, t: np.ndarray, order: np.ndarray, mpos: int,
               sub: int) -> None:  # fmt: skip
        keys = self._index.keys
        for r, (name, holds, still, rule) in enumerate(rules):
            hit = _VOPS[rule.op](vals, rule.threshold) | self._act[name][sids]
            idx = np.flatnonzero(hit)
            if not len(idx):
                continue
            for s, v, at, o in zip(sids[idx].tolist(), vals[idx].tolist(), t[idx].tolist(),
                                   order[idx].tolist(), strict=True):  # fmt: skip
                self._order = (o, mpos, sub, r)
                self._check(name, holds, still, rule, keys[s], v, at, None)
        self._order = None

    def observe_poll(self, host: str, status: dict[str, Any], *, now: float,
                     group: str | None = None) -> None:  # fmt: skip
        """The SSH poller's status of an agent-less host (``ok``, ``kind``, ``reachable``)."""
        self.flush()
        if status.get("last_poll") is None:
            return
        failed = not status.get("ok") and status.get("kind") not in (None, "partial")
        key = labels_of(host=host, group=group)
        self._evaluate_series(
            key, {"ssh_failed": float(failed)}, now,
            extra={"failure": str(status.get("kind") or "")} if failed else None,
        )  # fmt: skip

    def tick(self, now: float, hosts: Iterable[HostSeen]) -> None:
        """What the clock tells: silent hosts, held-back resolves, user and fleet sums (the
        samples observed since the last tick are evaluated first, each at its own time)."""
        self.flush()
        cfg = self.config
        hosts = list(hosts)
        silent_stale = 0
        if hosts:
            silent_stale = self._silence(now, hosts)
        users: dict[str, list[int]] = {}
        for shares in self._user_share.values():
            for user, (held, idle) in shares.items():
                u = users.setdefault(user, [0, 0])
                u[0] += held
                u[1] += idle
        for user, (held, idle) in users.items():
            self._evaluate_series(
                labels_of(user=user),
                {"user_gpus_held": float(held), "user_gpus_held_idle": float(idle)}, now,
            )  # fmt: skip
        for fp in [fp for fp, a in self._alerts.items() if a.labels.get("user") and
                   "host" not in a.labels and a.labels["user"] not in users]:  # fmt: skip
            self._condition_false(self._alerts[fp], now)
        fleet = {"fleet_gpus_free": float(sum(self._free_gpus.values()))}
        if hosts:
            fleet["fleet_hosts_silent_ratio"] = silent_stale / len(hosts)
        self._evaluate_series((), fleet, now)
        hold = cfg.resolve_hold_seconds
        for a in list(self._alerts.values()):
            if a.state == "firing" and a.clear_since is not None and now - a.clear_since >= hold:
                self._resolve(a, now)

    def _silence(self, now: float, hosts: list[HostSeen]) -> int:
        """Every host's silence metrics as arrays; returns the hosts silent past stale."""
        cfg = self.config
        n = len(hosts)
        names = [h.name for h in hosts]
        silent = np.maximum(0.0, now - np.fromiter((h.last_received for h in hosts), float, n))
        interval = np.fromiter((h.interval_seconds for h in hosts), float, n)
        stale_after = np.maximum(cfg.stale_after_intervals * interval, 10.0)
        offline_after = np.maximum(cfg.offline_after_seconds, 2 * stale_after)
        stale = int(np.count_nonzero(silent > stale_after))
        offline = silent > offline_after
        reach = [h.reachable for h in hosts]
        for i in [i for i, r in enumerate(reach) if r is False]:
            self._unreachable_at[names[i]] = now
        # a host that answers again after it did not (powered on, network back) is given
        # the stale time for its agent's first sample before "agent down" (else every
        # host back from a power cut pages once more, between its probe and its sample)
        ua = self._unreachable_at
        since = now - np.fromiter((ua.get(x, -math.inf) for x in names), float, n)
        back = since < stale_after
        yes = np.fromiter((r is True for r in reach), bool, n)
        values = {
            "silent_seconds": silent,
            "host_down": (offline & ~yes).astype(float),
            "agent_down": (offline & yes & ~back).astype(float),
        }
        if not any(m in self._plan for m in values):
            return stale
        sids = np.empty(n, np.int64)
        cache = self._host_sid
        for i, h in enumerate(hosts):
            sid = cache.get((h.name, h.group))
            if sid is None:
                sid = cache[(h.name, h.group)] = self._sid(labels_of(host=h.name, group=h.group))
            sids[i] = sid
        t = np.full(n, now)
        order = np.arange(n, dtype=np.int64)
        self._begin_ordered()
        for metric, vals in values.items():
            self._evaluate_rows(metric, sids, vals, t, order)
        self._end_ordered()
        return stale

    def _begin_ordered(self) -> None:
        self._ordered_events, self._ordered_new = [], []

    def _end_ordered(self) -> None:
        """Events and new alerts of a batch in the order one sample at a time made them."""
        self._order = None
        evs, self._ordered_events = self._ordered_events, []
        new, self._ordered_new = self._ordered_new, []
        if evs:
            evs.sort(key=lambda x: x[0])
            self.events += [e for _, e in evs]
        if len(new) > 1:
            new.sort(key=lambda x: x[0])
            for _, fp in new:
                a = self._alerts.pop(fp, None)
                if a is not None:
                    self._alerts[fp] = a

    def forget_host(self, host: str, now: float) -> None:
        """A host removed from the fleet: its alerts resolve."""
        self.flush()
        for fp in list(self._host_alerts.get(host, ())):
            a = self._alerts.get(fp)
            if a is not None:
                self._resolve(a, now) if a.state == "firing" else self._drop(fp)
        for d in (self._present, self._user_share, self._free_gpus, self._last_ts,
                  self._index.layouts):  # fmt: skip
            d.pop(host, None)  # type: ignore[attr-defined]
        for key in [k for k in self._windows if ("host", host) in k]:
            del self._windows[key]
        gone = np.array([sid for key, sid in self._index.sids.items() if ("host", host) in key],
                        np.int64)  # fmt: skip
        for table in self._tables.values():
            table.reset(gone)

    # -- evaluation ---------------------------------------------------------------------

    def _evaluate_series(
        self, key: Labels, values: dict[str, float], now: float,
        extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """One series at a time (SSH polls, users, the fleet): per metric, its compiled plan.
        A series without alerts whose value no plain rule can hold costs a few comparisons;
        windows are shared by the rules on the same metric and span."""
        plans = self._plan
        has_alerts = key in self._key_alerts
        series_windows = None
        for metric, raw in values.items():
            plan = plans.get(metric)
            if plan is None:
                continue
            if plan.plain and (has_alerts or not plan.quiet(raw)):
                self._evaluations += len(plan.plain)
                for name, holds, still, rule in plan.plain:
                    self._check(name, holds, still, rule, key, raw, now, extra)
            if plan.windowed:
                if series_windows is None:
                    series_windows = self._windows.setdefault(key, {})
                ws = series_windows.get(metric)
                if ws is None:
                    ws = series_windows[metric] = [Window(span) for span in plan.spans]
                for w in ws:
                    w.add(now, raw)
                for (i, kind), sub in plan.windowed.items():
                    value = ws[i].value(kind, now, raw)
                    if has_alerts or not sub.quiet(value):
                        self._evaluations += len(sub.plain)
                        for name, holds, still, rule in sub.plain:
                            self._check(name, holds, still, rule, key, value, now, extra)

    def _check(
        self, name: str, holds: Any, still: Any, rule: Rule, key: Labels, value: float,
        now: float, extra: dict[str, str] | None,
    ) -> None:  # fmt: skip
        fp = self._active.get((name, key))
        if holds(value) or (
            still is not None and fp is not None and still(value)
            and self._alerts[fp].state == "firing"
        ):  # fmt: skip
            if fp is None:
                labels = dict(key)
                if extra:
                    labels.update(extra)
                labels["rule"] = name
                labels.update(rule.labels)
                self._new_alert(rule, key, labels, value, now)
            else:
                self._condition_true(self._alerts[fp], rule, value, now)
        elif fp is not None:
            a = self._alerts[fp]
            a.value = value
            self._condition_false(a, now)

    def _new_alert(
        self, rule: Rule, key: Labels, labels: dict[str, str], value: float, now: float
    ) -> None:
        fp = fingerprint(rule.name, dict(key))
        a = Alert(
            fp, rule.name, labels, rule.severity, "pending", now, value,
            render(rule.summary, labels, value), render(rule.runbook, labels, value),
            notify_user=rule.notify_user, series=dict(key),
        )  # fmt: skip
        _set_texts(a, rule, value)
        self._alerts[fp] = a
        self._mark(rule.name, key, fp, labels.get("host"))
        if self._order is not None:
            self._ordered_new.append((self._order, fp))
        self._event(a, "pending", now)
        self._condition_true(a, rule, value, now)

    def _mark(self, rule: str, key: Labels, fp: str, host: str | None) -> None:
        if (rule, key) not in self._active:
            self._key_alerts[key] = self._key_alerts.get(key, 0) + 1
        self._active[(rule, key)] = fp
        if host is not None:
            self._host_alerts.setdefault(host, set()).add(fp)
        sid = self._sid(key)  # (may grow the arrays)
        act = self._act.get(rule)
        if act is not None:
            act[sid] = True

    def _condition_true(self, a: Alert, rule: Rule, value: float, now: float) -> None:
        a.value = value
        if a.state == "firing" and a.clear_since is not None:
            a.clear_since = None
            a.flaps += 1
        if a.state == "pending" and now - a.active_since >= rule.for_seconds:
            a.state, a.fired_at = "firing", now
            _set_texts(a, rule, value)  # the value it fired with
            self._event(a, "firing", now)

    def _condition_false(self, a: Alert, now: float) -> None:
        if a.state == "pending":
            self._drop(a.fingerprint)
            self._event(a, "dropped", now)
        elif a.state == "firing" and a.clear_since is None:
            a.clear_since = now
            if self.config.resolve_hold_seconds <= 0:
                self._resolve(a, now)

    def _resolve(self, a: Alert, now: float) -> None:
        a.state, a.resolved_at = "resolved", now
        self._drop(a.fingerprint)
        self._event(a, "resolved", now)

    def _drop(self, fp: str) -> None:
        a = self._alerts.pop(fp, None)
        if a is None:
            return
        key = labels_of(**a.series)
        if self._active.pop((a.rule, key), None) is not None:
            n = self._key_alerts.pop(key, 0) - 1
            if n > 0:
                self._key_alerts[key] = n
            sid = self._index.sids.get(key)
            act = self._act.get(a.rule)
            if sid is not None and act is not None and sid < len(act):
                act[sid] = False
        if "host" in a.labels:
            self._host_alerts.get(a.labels["host"], set()).discard(fp)

    def _event(self, a: Alert, what: str, now: float) -> None:
        e = {"at": now, "event": what, "alert": a.to_dict()}
        if self._order is not None:
            self._ordered_events.append((self._order, e))
        else:
            self.events.append(e)

    def _account_users(self, sample: Sample) -> None:
        shares: dict[str, tuple[int, int]] = {}
        idle_below = self.config.thresholds.idle_util_percent
        for g in sample.gpus:
            users = {p.user for p in sample.processes if p.gpu_index == g.index and p.user}
            idle = g.utilization_gpu_percent is not None and g.utilization_gpu_percent < idle_below
            for u in users:
                held, n_idle = shares.get(u, (0, 0))
                shares[u] = (held + 1, n_idle + int(idle))
        self._user_share[sample.host] = shares
        self._free_gpus[sample.host] = sum(
            1 for g in sample.gpus if gpu_is_free(g, sample.processes)
        )

    # -- actions and persistence ---------------------------------------------------------

    def acknowledge(self, fp: str, who: str, now: float) -> Alert | None:
        a = self.alerts.get(fp)
        if a is None:
            return None
        a.acked_by, a.acked_at = who, now
        self._event(a, "acknowledged", now)
        return a

    def take_events(self) -> list[dict[str, Any]]:
        self.flush()
        out, self.events = self.events, []
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.alerts.values()]

    def restore(self, alerts: Iterable[dict[str, Any]]) -> None:
        """Alerts saved by :meth:`snapshot` before a restart (rules since removed are left out)."""
        self.flush()
        for d in alerts:
            a = Alert.from_dict(d)
            if a.rule not in self.rules:
                continue
            self._alerts[a.fingerprint] = a
            self._mark(a.rule, labels_of(**a.series), a.fingerprint, a.labels.get("host"))
