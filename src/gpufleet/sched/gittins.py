"""The job-size distribution a scheduler can learn online, and the Gittins index over it (pure).

What is known at a decision time is the attained service of the jobs that finished (their sizes)
and of the jobs still in the system (a lower bound on theirs: right-censored observations).
Learning from the finished jobs alone is biased short, most of all early on, when the long jobs
have not finished yet; the product-limit (Kaplan-Meier) estimate counts the unfinished ones as
"at least this big" (``kaplan_meier``). A distribution here is a set of atoms (sizes, with
probability masses) plus a ``tail`` mass: jobs known to be bigger than every finished one, size
unknown. ``mixture`` pools two of them (a job class's and the global one, for shrinkage).

``gittins_table`` turns a distribution into the Gittins index of a job that has attained ``a``:
``max_D P(S - a <= D | S > a) / E[min(S - a, D) | S > a]``, on a grid of attained values; the
tail counts as never finishing within any quantum considered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SizeDistribution:
    """Atoms ``sizes`` (sorted, distinct) with masses ``mass``, and ``tail``: the mass of sizes
    beyond every atom. The masses and the tail sum to 1 (or all are 0: nothing known)."""

    sizes: np.ndarray
    mass: np.ndarray
    tail: float = 0.0

    @property
    def empty(self) -> bool:
        return self.sizes.size == 0


def empirical(samples: np.ndarray | Sequence[float]) -> SizeDistribution:
    """The empirical distribution of finished jobs' sizes (no censoring)."""
    x = np.sort(np.asarray(samples, dtype=float))
    if not x.size:
        return SizeDistribution(np.zeros(0), np.zeros(0))
    sizes, counts = np.unique(x, return_counts=True)
    return SizeDistribution(sizes, counts / x.size)


def kaplan_meier(
    finished: np.ndarray | Sequence[float], censored: np.ndarray | Sequence[float] = ()
) -> SizeDistribution:
    """Product-limit estimate from finished sizes and right-censored ones (jobs that have had
    this much service and are not done). A censored value equal to a finished one is taken as
    still at risk there (the job may finish at exactly that size). What survives past the last
    finished size is the ``tail``."""
    done = np.sort(np.asarray(finished, dtype=float))
    if not done.size:
        return SizeDistribution(np.zeros(0), np.zeros(0))
    cens = np.sort(np.asarray(censored, dtype=float))
    sizes, deaths = np.unique(done, return_counts=True)
    # at risk at t: every observation (finished or censored) >= t
    at_risk = (done.size - np.searchsorted(done, sizes, side="left")) + (
        cens.size - np.searchsorted(cens, sizes, side="left")
    )
    survive = np.cumprod(1.0 - deaths / at_risk)
    before = np.concatenate(([1.0], survive[:-1]))
    mass = before - survive
    return SizeDistribution(sizes, mass, float(survive[-1]))


def mixture(a: SizeDistribution, wa: float, b: SizeDistribution, wb: float) -> SizeDistribution:
    """``(wa * a + wb * b) / (wa + wb)``; an empty side drops out."""
    if a.empty or wa <= 0:
        return b
    if b.empty or wb <= 0:
        return a
    total = wa + wb
    sizes = np.concatenate((a.sizes, b.sizes))
    mass = np.concatenate((a.mass * wa, b.mass * wb)) / total
    order = np.argsort(sizes, kind="stable")
    sizes, mass = sizes[order], mass[order]
    uniq, first = np.unique(sizes, return_index=True)
    return SizeDistribution(uniq, np.add.reduceat(mass, first), (a.tail * wa + b.tail * wb) / total)


def _grid(dist: SizeDistribution, grid_points: int) -> np.ndarray:
    """0 and ``grid_points`` quantiles of the atoms (the lower inverse of their CDF)."""
    if dist.empty:
        return np.zeros(1)
    cdf = np.cumsum(dist.mass)
    cdf /= cdf[-1]
    levels = np.linspace(0.0, 1.0, grid_points)
    at = np.minimum(np.searchsorted(cdf, levels - 1e-12, side="left"), dist.sizes.size - 1)
    return np.unique(np.concatenate(([0.0], dist.sizes[at])))


def index_table(
    dist: SizeDistribution,
    grid_points: int = 64,
    min_quantum: float = 60.0,
    monotone: bool = True,
    hold_tail: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid of attained-service values and the Gittins index at each, for a distribution.

    ``index[i]`` is for attained service in ``[grid[i], grid[i+1])``. A job is served at least
    until the next grid point (decisions are only revisited there), so the quanta ``D``
    considered are at least that step (and ``min_quantum``); where no atom is left beyond the
    attained service the index is 0 (nothing is known there), or with ``hold_tail`` the last
    index that is not 0 (see ``hold_beyond_sizes``). ``monotone``: made non-increasing in the
    attained service (a job never outranks a newer one for having run longer)."""
    grid = _grid(dist, grid_points)
    index = _index_on(dist, grid, min_quantum, monotone)
    return grid, hold_beyond_sizes(index) if hold_tail else index


def hold_beyond_sizes(index: np.ndarray) -> np.ndarray:
    """The index past the last cell where it is positive (a job that has had more service than
    every size the distribution holds) set to that last positive value, instead of 0.

    Index 0 says "this job never finishes within any quantum", which is what the empirical
    distribution of *finished* jobs says of a job longer than all of them. Where the queue is
    deep, the long jobs finish last, so for hundreds of hours the sample holds only the shorter
    ones: every job that reached the largest finished size dropped to 0 and was parked behind
    every newer job until that newer one had had as much service (on VC 2869ce, 56-105 8-GPU
    jobs parked at exactly the largest finished size for hundreds of hours). Holding the last
    value ranks such a job with the longest jobs known (behind new jobs whose index is higher,
    level with the jobs of the lowest positive index, where ties go to the running job, then
    the earlier arrival) instead of behind everything."""
    positive = np.nonzero(index > 0)[0]
    if not positive.size or positive[-1] == index.size - 1:
        return index
    out = index.copy()
    out[positive[-1] + 1 :] = index[positive[-1]]
    return out


def _index_on(
    dist: SizeDistribution, grid: np.ndarray, min_quantum: float, monotone: bool
) -> np.ndarray:
    x, w = dist.sizes, dist.mass
    index = np.zeros(grid.size)
    for i, a in enumerate(grid):
        first_left = int(np.searchsorted(x, a, side="right"))
        rest = x[first_left:] - a
        if rest.size == 0:
            continue
        weight = w[first_left:]
        total = float(weight.sum()) + dist.tail  # P(S > a), unnormalised
        if total <= 0:
            continue
        step = max(min_quantum, (grid[i + 1] - a) if i + 1 < grid.size else 0.0)
        done = np.cumsum(weight)  # P(S - a <= r_k)
        spent = np.cumsum(weight * rest) + (total - done) * rest  # E[min(S - a, r_k)]
        ok = rest >= step
        best = float(np.max(done[ok] / spent[ok])) if ok.any() else 0.0
        c = int(np.searchsorted(rest, step, side="right"))  # done within one step
        within = float(done[c - 1]) if c else 0.0
        first = (float(np.dot(weight[:c], rest[:c])) if c else 0.0) + (total - within) * step
        index[i] = max(best, within / first if first > 0 else 0.0)
    if monotone:
        index = np.minimum.accumulate(index)
    return index


def gittins_table(
    samples: np.ndarray | Sequence[float],
    grid_points: int = 64,
    min_quantum: float = 60.0,
    monotone: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``index_table`` of the empirical distribution of ``samples`` (finished jobs' sizes), on a
    grid of 0 and the samples' ``grid_points`` quantiles (interpolated, ``numpy.quantile``)."""
    x = np.sort(np.asarray(samples, dtype=float))
    qs = np.quantile(x, np.linspace(0.0, 1.0, grid_points)) if x.size else np.zeros(1)
    grid = np.unique(np.concatenate(([0.0], qs)))
    return grid, _index_on(empirical(x), grid, min_quantum, monotone)


def mean_residual(dist: SizeDistribution, grid: np.ndarray | Sequence[float]) -> np.ndarray:
    """``E[S - a | S > a]`` over the atoms, at each grid value ``a`` (the tail left out: its
    sizes are unknown); NaN where no atom is left beyond ``a``."""
    x, w = dist.sizes, dist.mass
    a = np.asarray(grid, dtype=float)
    # suffix sums of mass and of mass x size, from the first atom beyond each a
    mass_after = np.concatenate((np.cumsum(w[::-1])[::-1], [0.0]))
    size_after = np.concatenate((np.cumsum((w * x)[::-1])[::-1], [0.0]))
    first = np.searchsorted(x, a, side="right")
    m = mass_after[first]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, size_after[first] / m - a, np.nan)
