"""Windows of rate / increase / sum rules, and the per-metric evaluation plan.

A window keeps *buckets* of ``span / BUCKETS`` seconds (first value, sum), not every sample:
adding a sample is a comparison and an addition, and the memory per series is bounded. The
window it reports covers the buckets that start inside the last ``span`` seconds, so it is
between ``span - span / BUCKETS`` and ``span`` long (an increase or sum is never counted from
older data than the rule says). Several rules on the same metric and span share one window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gpufleet.alerts.rules import Rule

BUCKETS = 16
Cond = Callable[[float], bool]


class Window:
    __slots__ = ("buckets", "span", "total", "width")

    def __init__(self, span: float) -> None:
        self.span = span
        self.width = span / BUCKETS
        self.buckets: deque[list[float]] = deque()  # [start, first value, sum]
        self.total = 0.0

    def add(self, t: float, v: float) -> None:
        b = self.buckets
        if b and t - b[-1][0] < self.width:
            b[-1][2] += v
        else:
            b.append([t, v, v])
        self.total += v
        horizon = t - self.span
        while b[0][0] < horizon:
            self.total -= b.popleft()[2]

    def value(self, kind: str, t: float, v: float) -> float:
        """The rule's value now (``v``: the newest sample's value, already added)."""
        if kind == "sum":
            return self.total
        start, first, _ = self.buckets[0]
        change = max(0.0, v - first)  # a counter reset (driver reload) is not a drop
        if kind == "increase":
            return change
        return change / (t - start) if t > start else 0.0


@dataclass
class MetricPlan:
    """The rules on one metric, compiled: ``quiet`` tells in a few comparisons that no plain
    threshold rule can hold (the common case, skipped without looking at the rules)."""

    plain: list[tuple[str, Cond, Cond | None, Rule]] = field(default_factory=list)
    # (index in spans, kind) -> the rules on that value (a plan of their own, for its shortcut)
    windowed: dict[tuple[int, str], MetricPlan] = field(default_factory=dict)
    spans: tuple[float, ...] = ()
    gt: float = math.inf  # the lowest threshold of the '>' rules
    ge: float = math.inf
    lt: float = -math.inf  # the highest threshold of the '<' rules
    le: float = -math.inf
    exact: bool = False  # an '==' or '!=' rule: no shortcut

    def add(self, rule: Rule) -> None:
        if rule.kind in ("threshold", "absent"):
            self.plain.append((rule.name, rule.condition(), rule.still_firing(), rule))
            t = rule.threshold
            if rule.op == ">":
                self.gt = min(self.gt, t)
            elif rule.op == ">=":
                self.ge = min(self.ge, t)
            elif rule.op == "<":
                self.lt = max(self.lt, t)
            elif rule.op == "<=":
                self.le = max(self.le, t)
            elif rule.op == "==":  # holds only at t, so never below it
                self.ge = min(self.ge, t)
            else:
                self.exact = True
        else:
            if rule.window_seconds not in self.spans:
                self.spans += (rule.window_seconds,)
            i = self.spans.index(rule.window_seconds)
            sub = self.windowed.setdefault((i, rule.kind), MetricPlan())
            sub.add(rule.model_copy(update={"kind": "threshold"}))
            sub.plain[-1] = (*sub.plain[-1][:3], rule)

    def quiet(self, v: float) -> bool:
        """No plain rule can hold at ``v`` (an ``== t`` rule counts as ``>= t``, so a flag's
        0 is quiet; past the shortcut the rules themselves decide)."""
        return not (
            self.exact or v > self.gt or v >= self.ge or v < self.lt or v <= self.le
        )  # fmt: skip


def compile_plans(rules: list[Rule]) -> dict[str, MetricPlan]:
    plans: dict[str, MetricPlan] = {}
    for r in rules:
        plans.setdefault(r.metric, MetricPlan()).add(r)
    return plans


class WindowTable:
    """The :class:`Window` of every series on one metric and span, as arrays (one row per
    series id): the same buckets, the same arithmetic in the same order per series, so the
    values are the same to the bit; :meth:`add` and :meth:`value` take many series at once
    (each at most once per call). Each row is a ring of buckets; the newest bucket's start
    and the oldest's start and first value are kept apart too, so that the common add (into
    the newest bucket, nothing to drop) reads no ring."""

    RING = BUCKETS + 3  # a window holds at most BUCKETS + 2 buckets between add and pop

    def __init__(self, span: float) -> None:
        self.span = span
        self.width = span / BUCKETS
        # series id -> its row here (-1: none yet): rows only for the series of this metric
        self.row_of = np.full(0, -1, np.int64)
        self.rows = 0
        self.n = np.zeros(0, np.int64)
        self.head = np.zeros(0, np.int64)  # the oldest bucket's place in the ring
        self.tail = np.zeros(0, np.int64)  # the newest's
        self.last_start = np.zeros(0)
        self.head_start = np.zeros(0)
        self.head_first = np.zeros(0)
        self.total = np.zeros(0)
        self.start = np.zeros((0, self.RING))
        self.first = np.zeros((0, self.RING))
        self.sums = np.zeros((0, self.RING))

    _ROWS = ("n", "head", "tail", "last_start", "head_start", "head_first", "total")

    def _rows_of(self, sids: np.ndarray) -> np.ndarray:
        """The rows of these series, made for the ones new here."""
        if len(sids) and sids.max() >= len(self.row_of):
            size = max(int(sids.max()) + 1, 2 * len(self.row_of))
            self.row_of = np.concatenate(
                [self.row_of, np.full(size - len(self.row_of), -1, np.int64)]
            )
        rows = self.row_of[sids]
        new = rows < 0
        if new.any():
            fresh = np.arange(self.rows, self.rows + int(new.sum()))
            self.row_of[sids[new]] = fresh
            rows[new] = fresh
            self.rows += len(fresh)
            if self.rows > len(self.n):
                self._grow(max(self.rows, 2 * len(self.n), 64))
        return rows

    def _grow(self, capacity: int) -> None:
        extra = capacity - len(self.n)
        for name in self._ROWS:
            a = getattr(self, name)
            setattr(self, name, np.concatenate([a, np.zeros(extra, a.dtype)]))
        pad = np.zeros((extra, self.RING))
        self.start = np.concatenate([self.start, pad])
        self.first = np.concatenate([self.first, pad])
        self.sums = np.concatenate([self.sums, pad])

    def reset(self, sids: np.ndarray) -> None:
        sids = sids[sids < len(self.row_of)]
        rows = self.row_of[sids]
        rows = rows[rows >= 0]
        self.n[rows] = 0
        self.head[rows] = 0
        self.total[rows] = 0.0

    def add(self, sids: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        """:meth:`Window.add` for each series ``sids[i]`` at ``t[i]`` with ``v[i]``."""
        ring = self.RING
        sids = self._rows_of(sids)  # (rows from here on)
        n = self.n[sids]
        same = (n > 0) & ((t - self.last_start[sids]) < self.width)
        if same.all():
            self.sums[sids, self.tail[sids]] += v
        else:
            if same.any():
                s = sids[same]
                self.sums[s, self.tail[s]] += v[same]
            new = ~same
            s, vn, tn, nn = sids[new], v[new], t[new], n[new]
            empty = nn == 0
            pos = np.where(empty, self.head[s], (self.tail[s] + 1) % ring)
            self.start[s, pos] = tn
            self.first[s, pos] = vn
            self.sums[s, pos] = vn
            self.tail[s] = pos
            self.n[s] = nn + 1
            self.last_start[s] = tn
            if empty.any():
                e = s[empty]
                self.head_start[e] = tn[empty]
                self.head_first[e] = vn[empty]
        self.total[sids] += v
        horizon = t - self.span
        while len(sids):  # drop the buckets that start before the window (never the newest)
            pop = self.head_start[sids] < horizon
            if not pop.any():
                break
            sids, horizon = sids[pop], horizon[pop]
            h = self.head[sids]
            self.total[sids] -= self.sums[sids, h]
            h = (h + 1) % ring
            self.head[sids] = h
            self.n[sids] -= 1
            self.head_start[sids] = self.start[sids, h]
            self.head_first[sids] = self.first[sids, h]

    def value(self, kind: str, sids: np.ndarray, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        """:meth:`Window.value` for each series (``v``: its newest value, already added)."""
        sids = self.row_of[sids]  # (rows: the series were added first)
        if kind == "sum":
            return self.total[sids]
        d = v - self.head_first[sids]
        change = np.where(d > 0.0, d, 0.0)  # a counter reset (driver reload) is not a drop
        if kind == "increase":
            return change
        start = self.head_start[sids]
        later = t > start
        return np.where(later, change / np.where(later, t - start, 1.0), 0.0)
