"""The simple rules the recommender is measured against (what people do without it). Each
picks one host among the feasible ones and, like someone reading ``nvidia-smi``, the lowest
free GPU indices there.

- ``most_free``: the host with the most free GPUs that fit now;
- ``most_free_highest``: the same host, but its *highest* free GPU indices (the rule a
  reviewer wrote against a lowest-index habit: one line, no history);
- ``best_fit``: the host with the fewest free fitting GPUs that still hold the request (a
  packer: keeps the emptiest hosts for big jobs);
- ``least_loaded``: the host with the smallest share of its GPUs held now;
- ``random_feasible``: any host that fits, uniformly (seeded);
- ``most_popular``: the host people use most (its share of held GPU-hours in the history):
  habit.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gpufleet.recommend.fleet import FleetSnap, HostSnap, RecentAnswers, with_reserved
from gpufleet.recommend.history import FleetHistory
from gpufleet.recommend.rank import (
    Answer,
    Choice,
    Weights,
    copy_hours,
    disk_ok,
    recommend,
    usable,
)
from gpufleet.recommend.request import RecommendRequest

Recommender = Callable[[RecommendRequest, FleetSnap, FleetHistory], Choice | None]


def _feasible(req: RecommendRequest, fleet: FleetSnap) -> list[tuple[HostSnap, list[int]]]:
    out = []
    for h in fleet.hosts:
        if not h.online or not disk_ok(req, h):
            continue
        free = sorted(g.index for g in h.gpus if usable(req, g))
        if len(free) >= req.gpus:
            out.append((h, free))
    return out


def _choice(host: HostSnap, gpus: list[int], why: str) -> Choice:
    return Choice(host.name, tuple(gpus), 0.0, 0.0, (why,))


def most_free(req: RecommendRequest, fleet: FleetSnap, history: FleetHistory) -> Choice | None:
    feas = _feasible(req, fleet)
    if not feas:
        return None
    h, free = min(feas, key=lambda hf: (-len(hf[1]), hf[0].name))
    return _choice(h, free[: req.gpus], f"{len(free)} GPUs free")


def most_free_highest(
    req: RecommendRequest, fleet: FleetSnap, history: FleetHistory
) -> Choice | None:
    feas = _feasible(req, fleet)
    if not feas:
        return None
    h, free = min(feas, key=lambda hf: (-len(hf[1]), hf[0].name))
    return _choice(h, free[-req.gpus :], f"{len(free)} GPUs free, the highest indices")


def best_fit(req: RecommendRequest, fleet: FleetSnap, history: FleetHistory) -> Choice | None:
    feas = _feasible(req, fleet)
    if not feas:
        return None
    h, free = min(feas, key=lambda hf: (len(hf[1]), hf[0].name))
    return _choice(h, free[: req.gpus], "the tightest fit")


def least_loaded(req: RecommendRequest, fleet: FleetSnap, history: FleetHistory) -> Choice | None:
    feas = _feasible(req, fleet)
    if not feas:
        return None

    def load(hf: tuple[HostSnap, list[int]]) -> tuple[float, float, str]:
        h = hf[0]
        held = sum(1 for g in h.gpus if g.state != "free") / max(1, len(h.gpus))
        util = sum(g.util_percent or 0 for g in h.gpus) / max(1, len(h.gpus))
        return (held, util, h.name)

    h, free = min(feas, key=load)
    return _choice(h, free[: req.gpus], "least loaded now")


def most_popular(req: RecommendRequest, fleet: FleetSnap, history: FleetHistory) -> Choice | None:
    feas = _feasible(req, fleet)
    if not feas:
        return None
    h, free = min(feas, key=lambda hf: (-history.host(hf[0].name).held_share, hf[0].name))
    return _choice(h, free[: req.gpus], "the most used host")


class RandomFeasible:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def __call__(
        self, req: RecommendRequest, fleet: FleetSnap, history: FleetHistory
    ) -> Choice | None:
        feas = _feasible(req, fleet)
        if not feas:
            return None
        h, free = feas[self.rng.randrange(len(feas))]
        return _choice(h, sorted(self.rng.sample(free, req.gpus)), "random")


class GpufleetTop:
    """gpufleet's best answer (the ranking without the reasons' text). With
    ``remember_seconds``, it keeps its own answers in mind as the server does
    (``RecentAnswers``): a set it just gave someone is not offered again until that job had
    ``remember_seconds`` plus its data copy to start."""

    def __init__(self, weights: Weights | None = None, remember_seconds: float = 0.0) -> None:
        self.weights = weights
        self.remember_seconds = remember_seconds
        self.recent = RecentAnswers()

    def __call__(
        self, req: RecommendRequest, fleet: FleetSnap, history: FleetHistory
    ) -> Choice | None:
        if self.remember_seconds > 0:
            fleet = with_reserved(fleet, self.recent.active(fleet.now))
        ans: Answer = recommend(req, fleet, history, weights=self.weights, reasons=False)
        if not ans.choices:
            return None
        top = ans.choices[0]
        if self.remember_seconds > 0:
            copy_s = copy_hours(req, top.host, self.weights or Weights()) * 3600
            self.recent.add(top.host, top.gpus, fleet.now + self.remember_seconds + copy_s)
        return top


REMEMBER_SECONDS = 900.0  # the server's recommend.remember_answers_seconds default


def all_recommenders(seed: int = 0, weights: Weights | None = None) -> dict[str, Recommender]:
    return {
        "gpufleet": GpufleetTop(weights, REMEMBER_SECONDS),
        "most free GPUs now": most_free,
        "most free, highest indices": most_free_highest,
        "least loaded now": least_loaded,
        "random feasible": RandomFeasible(seed),
        "most popular host": most_popular,
        "best-fit packer": best_fit,
    }
