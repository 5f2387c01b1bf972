"""A heterogeneity-aware max-min fair policy in the spirit of Gavel (Narayanan et al., OSDI'20).

No LP: every round (``round_seconds``) the jobs in play -- those running plus the oldest waiting
ones, at most ``window_factor`` x GPUs -- are ranked by the normalised service they have received
per second in the system (normalised: a second on a GPU model counts as that model's throughput
for the job over the job's best throughput). The least-served job picks first, taking the GPU
model where its normalised throughput is highest among those with room. Jobs that keep their GPU
model keep running; others are preempted. Between rounds, free GPUs are filled in the same order
without preemption.

**Incremental, vectorised re-plan.** What a job brings to the ranking changes only when the job
arrives, stops or fails, so it is kept in per-job numpy rows (a *slot* per job: service so far,
arrival, GPU count, usable GPU models, normalised speed per GPU model), written at those events
and never recomputed in between. A re-plan gathers the rows of the jobs in play and ranks them
with one vectorised division and a stable ``lexsort``; between rounds it ranks only the waiting
jobs that fit the free GPUs (the others cannot be chosen whatever their rank) and does nothing
when none does. The result is the same as ranking every job in play with Python keys, float for
float and tie for tie (``lexsort`` is stable and the window is in arrival order), which the
tests check against a straightforward reference implementation.
"""

from __future__ import annotations

import numpy as np

from gpufleet.sched.cluster import ClusterSpec, ClusterState
from gpufleet.sched.policy import Policy, SchedulerContext, allowed_models
from gpufleet.sched.queue import BlockList
from gpufleet.sched.simjob import SimJob


class GavelMaxMin(Policy):
    name = "gavel"
    round_seconds = 360.0
    window_factor = 2

    def __init__(self, spec: ClusterSpec) -> None:
        # waiting jobs in arrival order: (arrival_seconds, job_id, slot)
        self._waiting = BlockList()
        self._slot_of: dict[int, int] = {}
        self._jobs: list[SimJob] = []
        self._capacity = 0
        self._models: list[str] = list(spec.gpu_models)
        self._model_index = {m: i for i, m in enumerate(self._models)}
        # per slot: normalised service received up to the last stop, arrival, GPUs, usable GPU
        # models, normalised speed on each GPU model (0 where unusable), and the usable GPU
        # models best first (the order a job picks in; ties in cluster order)
        self._service = np.zeros(0)
        self._arrival = np.zeros(0)
        self._gpus = np.zeros(0, dtype=np.int64)
        self._job_id = np.zeros(0, dtype=np.int64)
        self._need: list[int] = []  # GPUs wanted, per slot (a list: read one at a time)
        self._usable = np.zeros((0, len(self._models)), dtype=bool)
        self._speed = np.zeros((0, len(self._models)))
        self._prefer: list[list[int]] = []
        # the waiting jobs again, split by kind (GPUs wanted, usable GPU models): whether any
        # waiting job fits the free GPUs is asked per kind, not per job
        self._by_kind: dict[tuple[int, tuple[int, ...]], BlockList] = {}
        self._kind_of: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.next_round = 0.0
        self._has_waiting = False

    # -- per-job rows -------------------------------------------------------------------------
    def _grow(self) -> None:
        size = max(1024, 2 * self._capacity)
        for name in ("_service", "_arrival", "_gpus", "_job_id"):
            old = getattr(self, name)
            new = np.zeros(size, dtype=old.dtype)
            new[: self._capacity] = old[: self._capacity]
            setattr(self, name, new)
        usable = np.zeros((size, len(self._models)), dtype=bool)
        speed = np.zeros((size, len(self._models)))
        usable[: self._capacity] = self._usable[: self._capacity]
        speed[: self._capacity] = self._speed[: self._capacity]
        self._usable, self._speed = usable, speed
        self._capacity = size

    def _describe(self, slot: int, job: SimJob) -> None:
        """(Re)write what a job brings to the ranking: its usable GPU models and speeds there."""
        usable = allowed_models(job, self._models)
        best = min((job.runtime_ratio_by_model[m] for m in usable), default=1.0)
        row_use = self._usable[slot]
        row_speed = self._speed[slot]
        row_use[:] = False
        row_speed[:] = 0.0
        for m in usable:
            i = self._model_index[m]
            row_use[i] = True
            row_speed[i] = best / job.runtime_ratio_by_model[m]
        self._prefer[slot] = sorted(
            (self._model_index[m] for m in usable), key=lambda i: (-row_speed[i], i)
        )

    def _queue(self, job: SimJob) -> None:
        slot = self._slot_of[job.job_id]
        entry = (job.arrival_seconds, job.job_id, slot)
        self._waiting.add(entry)
        kind = (job.num_gpus, tuple(i for i in range(len(self._models)) if self._usable[slot, i]))
        self._kind_of[slot] = kind
        self._by_kind.setdefault(kind, BlockList()).add(entry)
        self._has_waiting = True

    def _unqueue(self, job: SimJob) -> None:
        slot = self._slot_of[job.job_id]
        entry = (job.arrival_seconds, job.job_id, slot)
        self._waiting.remove(entry)
        self._by_kind[self._kind_of.pop(slot)].remove(entry)

    # -- events -------------------------------------------------------------------------------
    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        slot = len(self._jobs)
        self._slot_of[job.job_id] = slot
        self._jobs.append(job)
        self._prefer.append([])
        if slot >= self._capacity:
            self._grow()
        self._service[slot] = 0.0
        self._arrival[slot] = job.arrival_seconds
        self._gpus[slot] = job.num_gpus
        self._job_id[slot] = job.job_id
        self._need.append(job.num_gpus)
        self._describe(slot, job)
        self._queue(job)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        # its usable GPU models may have changed (the simulator excludes those too small for it)
        self._describe(self._slot_of[job.job_id], job)
        self._queue(job)

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        self._jobs[self._slot_of.pop(job.job_id)] = job  # the slot is not reused

    def _preempt(self, ctx: SchedulerContext, job: SimJob) -> None:
        slot = self._slot_of[job.job_id]
        assert job.placement is not None
        model = self._model_index[job.placement.gpu_model]
        self._service[slot] = (
            self._service[slot]
            + (ctx.now_seconds - job.run_started_seconds) * self._speed[slot, model]
        )
        ctx.preempt(job)
        self._queue(job)

    # -- the plan -------------------------------------------------------------------------------
    def _rank(
        self, slots: np.ndarray, now: float, served: np.ndarray, first: np.ndarray | None
    ) -> list[int]:
        """Positions of ``slots`` least served per second in the system first (ties: arrival,
        then as below); ``first`` (True sorts later) ranks before everything."""
        arrival = self._arrival[slots]
        priority = served / np.maximum(1.0, now - arrival)
        if first is None:  # waiting jobs only: ties in window order, (arrival, job id)
            order: list[int] = np.lexsort((self._job_id[slots], arrival, priority)).tolist()
        else:  # running then waiting: ties in the order given
            order = np.lexsort((arrival, priority, first)).tolist()
        return order

    def schedule(self, ctx: SchedulerContext) -> None:
        now = ctx.now_seconds
        cluster = ctx.cluster
        full_round = now >= self.next_round
        free = [cluster.free_by_model[m] for m in self._models]
        if not full_round and not any(free):
            self._has_waiting = len(self._waiting) > 0
            return
        if full_round:
            self.next_round = now + self.round_seconds
            window = [
                e[2] for e in self._waiting.head(self.window_factor * cluster.spec.total_gpus)
            ]
            # jobs that may not be preempted keep their GPUs, out of the plan
            running = [j for j in ctx.running.values() if j.preemptible]
            pinned = [j for j in ctx.running.values() if not j.preemptible]
            n_run = len(running)
            run_slots: list[int] = []
            current: list[int] = []  # each running job's GPU model
            held: list[float] = []
            leased: list[bool] = []
            for j in running:
                run_slots.append(self._slot_of[j.job_id])
                current.append(self._model_index[j.placement.gpu_model])  # type: ignore[union-attr]
                held.append(j.run_started_seconds)
                leased.append(j.computing_since_seconds + self.round_seconds > now)
            slots = np.array(run_slots + window, dtype=np.intp)
            served = self._service[slots]
            if n_run:
                served[:n_run] = (
                    served[:n_run]
                    + (now - np.array(held))
                    * self._speed[slots[:n_run], np.array(current, dtype=np.intp)]
                )
            # leased jobs (still within their first round of progress) go first
            later = np.ones(len(slots), dtype=bool)
            later[:n_run] = ~np.array(leased, dtype=bool)
            order = self._rank(slots, now, served, later)
            capacity = [cluster.spec.gpus_of(m) for m in self._models]
            for j in pinned:
                capacity[self._model_index[j.placement.gpu_model]] -= j.num_gpus  # type: ignore[union-attr]
        else:
            fitting = self._between_rounds(cluster, free)
            if fitting is None:
                self._has_waiting = len(self._waiting) > 0
                return
            slots = fitting
            order = self._rank(slots, now, self._service[slots], None)
            capacity = free
            n_run = 0
            current = []
        chosen = self._choose(slots, order, capacity, current, n_run)
        if full_round:
            keep = {self._jobs[slots[p]].job_id for p, m in chosen if p < n_run and current[p] == m}
            for job, lease in zip(running, leased, strict=True):
                # a job keeps its lease for at least one round of real progress
                if not lease and job.job_id not in keep:
                    self._preempt(ctx, job)
        for p, m in chosen:
            job = self._jobs[slots[p]]
            if job.placement is not None:
                continue
            placement = cluster.find_whole(job.num_gpus, self._models[m])
            if placement is None:
                for other in self._prefer_all(slots[p]):
                    placement = cluster.find_whole(job.num_gpus, other)
                    if placement is not None:
                        break
            if placement is None:
                continue
            self._unqueue(job)
            ctx.start(job, placement)
        self._has_waiting = len(self._waiting) > 0

    def _between_rounds(self, cluster: ClusterState, free: list[int]) -> np.ndarray | None:
        """The waiting jobs in the window that fit the free GPUs (the others cannot be chosen
        whatever their rank); None when none of them could start now, so the
        re-plan would change nothing."""
        window = self.window_factor * cluster.spec.total_gpus
        cutoff = self._waiting.at(window - 1) if len(self._waiting) >= window else None
        picked: list[int] = []
        could_start = False
        for (need, usable), entries in self._by_kind.items():
            if not len(entries) or (cutoff is not None and entries.first() > cutoff):
                continue
            if not any(free[m] >= need for m in usable):
                continue
            count = len(entries) if cutoff is None else entries.count_upto(cutoff)
            picked.extend(e[2] for e in entries.head(count))
            could_start = could_start or any(
                cluster.can_place(need, self._models[m]) for m in usable
            )
        if not could_start:
            return None
        return np.array(picked, dtype=np.intp)

    def _prefer_all(self, slot: int) -> list[str]:
        """The job's usable GPU models in cluster order (where it goes when its pick is
        fragmented)."""
        row = self._usable[slot]
        return [m for i, m in enumerate(self._models) if row[i]]

    def _choose(
        self,
        slots: np.ndarray,
        order: list[int],
        capacity: list[int],
        current: list[int],
        n_run: int,
    ) -> list[tuple[int, int]]:
        """Least served first, each job takes the GPU model with room where its normalised
        speed is highest (its current one on a tie, then cluster order)."""
        chosen: list[tuple[int, int]] = []
        left = sum(capacity)
        needs = self._need
        speed = self._speed
        prefer = self._prefer
        slot_of: list[int] = slots.tolist()
        for p in order:
            if left == 0:
                break
            slot = slot_of[p]
            need = needs[slot]
            pick = -1
            for m in prefer[slot]:
                if capacity[m] >= need:
                    pick = m
                    break
            if pick < 0:
                continue
            if p < n_run:
                c = current[p]
                if (
                    c != pick
                    and capacity[c] >= need
                    and speed[slot, c] == speed[slot, pick]
                    and self._usable[slot, c]
                ):
                    pick = c
            capacity[pick] -= need
            left -= need
            chosen.append((p, pick))
        return chosen

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return self.next_round if self._has_waiting else None
