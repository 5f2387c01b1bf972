"""The live driver: the simulator's policies, unchanged, fed by a real clock and the live fleet.

The driver does for the live queue what ``sched.sim.Simulator`` does for a trace, and nothing
more: it keeps each job's view (``SimJob``: the spec and what happened to it, never a truth) and
the cluster's occupancy (``ClusterState``), tells the policy what happened (``on_arrival``,
``on_finish``, ``on_failure``, ``on_withdraw``) and calls ``schedule(ctx)`` with a
``PolicyContext`` whose ``start`` becomes a :class:`Start` (a Launch on a dispatcher, by the
service) and whose ``preempt`` a :class:`Preempt`. No decision is made here: which job runs
where is the policy's.

What the driver adds around the policy, all of it bookkeeping:

- **Live cluster**: the spec is built from the fleet (``queue.fleet``); GPUs that are busy with
  work that is not the queue's, and every GPU of a host that is not online, are held by a
  *blocker* so no policy can place on them (nothing overcommits memory already in use).
- **Memory**: a job may run only on GPU models whose memory holds its known need (the user's
  ``gpu_memory`` plus ``memory_margin``); with no figure the job gets whole GPUs to itself.
  While a job runs alone on its GPUs, the memory live state shows on them is its measured
  memory (``SimJob.measured_gpu_memory_bytes``, as the simulator sets it), which the policy
  then counts when it places the job again (after a preemption).
  A job that ran out of GPU memory waits again for a GPU model with more memory than the one
  it ran out on, whole GPUs to itself (``oom_floor`` / ``retry_larger``; the store keeps that
  floor across restarts), as the simulator retries it; with no larger model it ends ``oom``.
- **Quotas** (``queue.quota``): a job reaches the policy only when its user and group have room
  for it (GPUs at once, GPU-hours this week); until then it waits with the quota's name.
- **Priority**: an admin's priority ``p`` counts as submitting ``p`` hours earlier (every policy
  orders ties and starvation by arrival).
- **Preemption**: a preempted job waits again at once (as in the simulator), but its GPUs stay
  held until the dispatcher confirms its run has stopped (``stopped``), so nothing is placed
  beside a run that is still exiting; if the policy starts it again before then, the new
  launch waits for that confirmation too, so one job never runs twice. A job whose spec says
  ``preemptible: false`` is never preempted: ``preempt`` raises on it (the policies keep it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gpufleet.i18n import ENGLISH, Msg, msg
from gpufleet.queue.fleet import FleetHost, cluster_spec, shape, speed_of
from gpufleet.queue.quota import QuotaRules, Usage
from gpufleet.queue.store import JobRecord
from gpufleet.sched.cluster import ClusterSpec, ClusterState, Host, Placement
from gpufleet.sched.policy import Policy, PolicyContext
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.simjob import RUNNING, WAITING, SimJob

PRIORITY_SECONDS = 3600.0  # one step of priority = submitted one hour earlier
STOPPING_HOLD = -(10**12)  # holder id (minus the job id) of a preempted run's GPUs


@dataclass(frozen=True)
class Start:
    job_id: int
    hosts: tuple[tuple[str, tuple[int, ...]], ...]  # (host name, GPU indices)
    gpu_model: str
    memory_bytes: int | None  # per GPU, the figure placement counted (None: whole GPUs)


@dataclass(frozen=True)
class Preempt:
    job_id: int


@dataclass
class Decisions:
    starts: list[Start] = field(default_factory=list)
    preempts: list[Preempt] = field(default_factory=list)


class QueueDriver:
    def __init__(
        self,
        policy_factory: Callable[[ClusterSpec, OnlineRuntimePredictor], Policy],
        *,
        predictor: OnlineRuntimePredictor | None = None,
        quotas: QuotaRules | None = None,
        memory_margin: float = 0.1,
        error_window: int = 50,
    ) -> None:
        self.policy_factory = policy_factory
        self.predictor = predictor or OnlineRuntimePredictor()
        self.quotas = quotas or QuotaRules()
        self.memory_margin = memory_margin
        self.error_window = error_window
        self.fleet: list[FleetHost] = []
        self._shape: tuple = ()
        self.spec = ClusterSpec(())
        self.cluster = ClusterState(self.spec)
        self.policy: Policy | None = None
        self.jobs: dict[int, SimJob] = {}
        self.records: dict[int, JobRecord] = {}
        self.running: dict[int, SimJob] = {}
        self.in_policy: set[int] = set()  # waiting jobs the policy holds
        self.blocked: dict[int, Msg] = {}  # waiting jobs kept from the policy, and why
        self.stopping: set[int] = set()  # preempted; the dispatcher has not confirmed the stop
        self.deferred: dict[int, Start] = {}  # started again while still stopping
        self.recent_errors: list[float] = []  # |predicted - true| / true of finished jobs
        self.now_seconds = 0.0
        self._decisions = Decisions()
        self._blockers: list[int] = []
        # every holder of GPUs (a job, a stopping run) by host name: the cluster's placements
        # are by host number, which a new fleet renumbers, and a host may report after a job
        # on it was adopted (a restart), so each new spec is filled again from these
        self._named: dict[int, tuple[tuple[tuple[str, int], ...], str, int]] = {}
        self._host_of: dict[str, Host] = {}  # the spec's hosts by name (made with the spec)
        self._model_memory: dict[str, int] = {}
        self._ratio_cache: dict[tuple[int | None, int], dict[str, float]] = {}
        self.context: PolicyContext | None = None

    # -- the fleet ----------------------------------------------------------------------------
    def set_fleet(self, fleet: list[FleetHost]) -> None:
        """The live fleet at this pass. A new host set means a new spec and a new policy (the
        waiting jobs are announced to it again; the runtime predictor keeps what it learnt)."""
        self.fleet = fleet
        if shape(fleet) != self._shape or self.policy is None:
            self._shape = shape(fleet)
            self._rebuild(cluster_spec(fleet))
        for blocker in self._blockers:
            self.cluster.release(blocker)
        self._blockers = []
        for host_id, host in enumerate(fleet):
            busy = [
                (host_id, g)
                for g, gpu in enumerate(host.gpus)
                if (not host.online or gpu.busy) and not self.cluster.occupants[host_id][g]
            ]
            if busy:
                blocker = -(host_id + 1)
                self.cluster.allocate(blocker, Placement(tuple(busy), host.gpu_model))
                self._blockers.append(blocker)
        self._measure(fleet)

    def _measure(self, fleet: list[FleetHost]) -> None:
        """Each running job's GPU memory as live state shows it (the most seen on a GPU it has
        to itself, as nvidia-smi would show it): the policy's view of the job then knows it, so
        a preempted job restarts only on GPU models that hold it, as in the simulator."""
        for job in self.running.values():
            if job.placement is None:
                continue
            seen = job.measured_gpu_memory_bytes or 0
            for h, g in job.placement.gpus:
                if h >= len(fleet) or g >= len(fleet[h].gpus):
                    continue
                used = fleet[h].gpus[g].memory_used_bytes
                if used and self.cluster.occupants[h][g] == [job.job_id]:
                    seen = max(seen, used)
            if seen:
                job.measured_gpu_memory_bytes = seen

    def _rebuild(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._host_of = {h.name: h for h in spec.hosts}
        self._model_memory = {}
        self._ratio_cache = {}
        self.cluster = ClusterState(spec)
        self._blockers = []
        for holder in self._named:  # keep what runs (or is stopping) where it runs
            placement = self._place(holder)
            if holder in self.running:
                self.running[holder].placement = placement
        self.policy = self.policy_factory(spec, self.predictor)
        self.context = PolicyContext(self.cluster, self.running, self._start, self._preempt)
        for job_id in sorted(self.in_policy, key=lambda j: self.jobs[j].arrival_seconds):
            job = self.jobs[job_id]
            job.runtime_ratio_by_model = self._ratios(self.records[job_id])
            self.policy.on_arrival(job, self.now_seconds)

    def _hold(
        self, holder: int, gpus: tuple[tuple[str, int], ...], gpu_model: str, claimed: int = 0
    ) -> Placement | None:
        """``holder`` holds these GPUs (host name, index) from now until ``_unhold``; those on
        hosts the fleet has now are allocated (the cluster's placement, None if none is)."""
        self._named[holder] = (gpus, gpu_model, claimed)
        return self._place(holder)

    def _place(self, holder: int) -> Placement | None:
        gpus, gpu_model, claimed = self._named[holder]
        hosts = self._host_of
        here = tuple(
            (hosts[name].host_id, g)
            for name, g in gpus
            if name in hosts and g < hosts[name].num_gpus
        )
        if not here:
            return None
        placement = Placement(here, gpu_model)
        self.cluster.allocate(holder, placement, claimed)
        return placement

    def _unhold(self, holder: int) -> None:
        self._named.pop(holder, None)
        if holder in self.cluster.placements:
            self.cluster.release(holder)

    def _names(self, placement: Placement) -> tuple[tuple[str, int], ...]:
        return tuple((self.spec.hosts[h].name, g) for h, g in placement.gpus)

    # -- what a job may use -------------------------------------------------------------------
    def need_bytes(self, record: JobRecord) -> int | None:
        given = record.spec.get("gpu_memory_bytes")
        return int(given * (1 + self.memory_margin)) if given else None

    def _memories(self) -> dict[str, int]:
        """Each GPU model's memory per GPU (its largest host's), from the spec."""
        if not self._model_memory:
            for h in self.spec.hosts:
                memory = self._model_memory.get(h.gpu_model, 0)
                self._model_memory[h.gpu_model] = max(memory, h.gpu_memory_bytes)
        return self._model_memory

    def _ratios(self, record: JobRecord) -> dict[str, float]:
        """The GPU models whose memory holds the job's need (and is more than what it ran out
        of, after an OOM), with their runtime ratio."""
        need = self.need_bytes(record)
        floor = record.memory_floor_bytes or 0
        cached = self._ratio_cache.get((need, floor))
        if cached is None:
            cached = {
                model: 1.0 / speed_of(model)
                for model, memory in self._memories().items()
                if (need is None or need <= memory) and memory > floor
            }
            self._ratio_cache[need, floor] = cached
        return dict(cached)

    def oom_floor(self, record: JobRecord) -> tuple[int | None, list[str]]:
        """After a job ran out of GPU memory: the memory per GPU it now needs more than (that
        of the GPU model it ran on, or what it ran out of before) and the fleet's GPU models
        with more (empty: none, or the model it ran on is not known)."""
        memories = self._memories()
        ran_on = memories.get(record.gpu_model or "")
        if not ran_on:
            return None, []
        floor = max(ran_on, record.memory_floor_bytes or 0)
        return floor, sorted(m for m, memory in memories.items() if memory > floor)

    def refusal(self, record: JobRecord) -> str | None:
        """Why a job can never run on this fleet, in English (None: it can, some day)."""
        m = self.refusal_msg(record)
        return None if m is None else m.render(ENGLISH)

    def refusal_msg(self, record: JobRecord) -> Msg | None:
        """``refusal`` as a message (numbers formatted here: the pages' scripts fill plain
        ``{name}`` placeholders)."""
        if not self.spec.hosts:
            return None  # no fleet known yet: nothing to judge by
        gpus = num_gpus(record.gpus)
        ratios = self._ratios(record)
        if not ratios:
            need = self.need_bytes(record) or 0
            most = max(h.gpu_memory_bytes for h in self.spec.hosts)
            if record.memory_floor_bytes and record.memory_floor_bytes >= most:
                return msg("ran out of GPU memory on {floor} GiB GPUs; the largest GPU holds"
                           " {most} GiB", floor=f"{record.memory_floor_bytes / 2**30:.1f}",
                           most=f"{most / 2**30:.1f}")  # fmt: skip
            return msg("gpu_memory: needs {need} GiB per GPU with the {margin} margin; the"
                       " largest GPU holds {most} GiB", need=f"{need / 2**30:.1f}",
                       margin=f"{self.memory_margin:.0%}", most=f"{most / 2**30:.1f}")  # fmt: skip
        most = max(self.spec.gpus_of(m) for m in ratios)
        if gpus > most:
            return msg("gpus: asks for {gpus}; the largest usable GPU pool has {most}",
                       gpus=gpus, most=most)  # fmt: skip
        return None

    # -- events from the service --------------------------------------------------------------
    def add(self, record: JobRecord, now_seconds: float) -> None:
        """A job that waits (submitted, released, requeued after a restart of the server)."""
        self.now_seconds = now_seconds
        self.records[record.id] = record
        self.jobs[record.id] = SimJob(
            job_id=record.id,
            arrival_seconds=record.submit_seconds - record.priority * PRIORITY_SECONDS,
            num_gpus=num_gpus(record.gpus),
            job_type=str(record.spec.get("model_name") or ""),
            runtime_ratio_by_model=self._ratios(record),
            gpu_memory_bytes=self.need_bytes(record),
            data_size_bytes=int(record.spec.get("data_size_bytes") or 0),
            user=record.user,
            vc=record.group,
            synthetic=False,
            preemptible=record.spec.get("preemptible", True) is not False,
            exclusive=record.memory_floor_bytes is not None,  # it ran out of memory once
        )
        self.jobs[record.id].last_wait_from_seconds = self.jobs[record.id].arrival_seconds
        self.blocked[record.id] = msg("waiting for the scheduler")

    def adopt_running(self, record: JobRecord, start: Start, now_seconds: float) -> None:
        """A job the store says is dispatching or running (after a restart of the server)."""
        self.add(record, now_seconds)
        del self.blocked[record.id]
        job = self.jobs[record.id]
        gpus = tuple((h, g) for h, idx in start.hosts for g in idx)
        job.status = RUNNING
        job.run_started_seconds = record.start_seconds or now_seconds
        job.first_start_seconds = job.run_started_seconds
        job.computing_since_seconds = job.run_started_seconds
        job.placement = self._hold(job.job_id, gpus, start.gpu_model)
        self.running[job.job_id] = job

    def withdraw(self, job_id: int, now_seconds: float) -> None:
        """A waiting job was held or cancelled."""
        self.now_seconds = now_seconds
        job = self.jobs.pop(job_id, None)
        self.records.pop(job_id, None)
        self.blocked.pop(job_id, None)
        self.deferred.pop(job_id, None)
        if job is not None and job_id in self.in_policy and self.policy is not None:
            self.in_policy.discard(job_id)
            self.policy.on_withdraw(job, now_seconds)

    def set_priority(self, record: JobRecord, now_seconds: float) -> None:
        if record.id in self.jobs and self.jobs[record.id].status == WAITING:
            self.withdraw(record.id, now_seconds)
            self.add(record, now_seconds)

    def stopped(self, job_id: int) -> Start | None:
        """The dispatcher confirmed a preempted job stopped; its deferred launch, if any."""
        self.stopping.discard(job_id)
        self._unhold(STOPPING_HOLD - job_id)
        return self.deferred.pop(job_id, None)

    def finished(
        self, job_id: int, now_seconds: float, runtime_seconds: float | None = None
    ) -> None:
        """A running job ended (any way: success, failure, OOM, cancel, lost): it leaves."""
        self.now_seconds = now_seconds
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job.status == RUNNING:
            self._stop(job)
            job.status = "finished"
            job.finish_seconds = now_seconds
            if self.policy is not None:
                self.policy.on_finish(job, now_seconds)
            record = self.records.get(job_id)
            predicted = record.predicted_runtime_seconds if record else None
            if predicted and runtime_seconds and runtime_seconds > 0:
                self.recent_errors.append(abs(predicted - runtime_seconds) / runtime_seconds)
                del self.recent_errors[: -self.error_window]
        else:
            self.withdraw(job_id, now_seconds)
            return
        self.jobs.pop(job_id, None)
        self.records.pop(job_id, None)
        self.deferred.pop(job_id, None)

    def requeue(self, job_id: int, now_seconds: float, reason: str) -> None:
        """A running job goes back to waiting (its host went down early)."""
        self.now_seconds = now_seconds
        job = self.jobs.get(job_id)
        if job is None or job.status != RUNNING:
            return
        job.preemptions += 1
        self._stop(job)
        self.in_policy.add(job_id)  # the policy keeps it waiting (a new policy is told again)
        if self.policy is not None:
            self.policy.on_failure(job, now_seconds, reason)

    def retry_larger(self, record: JobRecord, now_seconds: float) -> None:
        """A running job ran out of GPU memory and waits again (``record``: as stored, with its
        ``memory_floor_bytes``): only on GPU models with more memory, whole GPUs to itself,
        from the beginning (what it did is lost), as ``sched.sim`` retries a job after an
        OOM."""
        self.now_seconds = now_seconds
        job = self.jobs.get(record.id)
        if job is None or job.status != RUNNING:
            return
        self.records[record.id] = record
        job.oom_failures += 1
        self._stop(job)
        job.work_seconds = 0.0
        job.exclusive = True
        job.runtime_ratio_by_model = self._ratios(record)  # as ``add`` makes it after a restart
        # and excluded, as the simulator does at an OOM: a growing exclusion set is what tells
        # the policy that what it remembered of the job's usable models is out of date
        job.excluded_gpu_models |= {
            m for m, memory in self._memories().items()
            if memory <= (record.memory_floor_bytes or 0)
        }  # fmt: skip
        self.in_policy.add(record.id)
        if self.policy is not None:
            self.policy.on_failure(job, now_seconds, "oom")

    # -- the policy's two actions -------------------------------------------------------------
    def _start(self, job: SimJob, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        if job.status != WAITING:
            raise RuntimeError(f"job {job.job_id} started while {job.status}")
        now = self.now_seconds
        self._named[job.job_id] = (self._names(placement), placement.gpu_model,
                                   claimed_memory_bytes)  # fmt: skip
        self.cluster.allocate(job.job_id, placement, claimed_memory_bytes)
        self.in_policy.discard(job.job_id)
        job.status = RUNNING
        job.placement = placement
        job.version += 1
        job.run_started_seconds = now
        job.computing_since_seconds = now
        if job.first_start_seconds is None:
            job.first_start_seconds = now
        self.running[job.job_id] = job
        by_host: dict[int, list[int]] = {}
        for h, g in placement.gpus:
            by_host.setdefault(h, []).append(g)
        start = Start(
            job.job_id,
            tuple((self.spec.hosts[h].name, tuple(sorted(g))) for h, g in sorted(by_host.items())),
            placement.gpu_model,
            job.gpu_memory_bytes,
        )
        if job.job_id in self.stopping:
            self.deferred[job.job_id] = start
        else:
            self._decisions.starts.append(start)

    def _preempt(self, job: SimJob) -> None:
        if job.status != RUNNING:
            raise RuntimeError(f"job {job.job_id} preempted while {job.status}")
        if not job.preemptible:
            raise RuntimeError(f"job {job.job_id} is not preemptible")
        job.preemptions += 1
        job.restart_pending = True
        placement = job.placement
        self._stop(job)
        self.in_policy.add(job.job_id)  # the policy keeps it waiting
        self.stopping.add(job.job_id)
        hold = STOPPING_HOLD - job.job_id
        if placement is not None and hold not in self._named:  # taken until the run stops
            self._hold(hold, self._names(placement), placement.gpu_model)
        deferred = self.deferred.pop(job.job_id, None)
        if deferred is None:
            self._decisions.starts = [s for s in self._decisions.starts if s.job_id != job.job_id]
            self._decisions.preempts.append(Preempt(job.job_id))

    def _stop(self, job: SimJob) -> None:
        now = self.now_seconds
        held = max(0.0, now - job.run_started_seconds)
        job.run_seconds += held
        job.attained_gpu_seconds += held * job.num_gpus
        if job.placement is not None:
            ratio = job.runtime_ratio_by_model.get(job.placement.gpu_model, 1.0)
            job.work_seconds += max(0.0, now - job.computing_since_seconds) / ratio
        self._unhold(job.job_id)
        self.running.pop(job.job_id, None)
        job.placement = None
        job.version += 1
        if job.status == RUNNING:
            job.status = WAITING
            job.last_wait_from_seconds = now

    # -- the pass -----------------------------------------------------------------------------
    def schedule(self, now_seconds: float, usage: Usage | None = None) -> Decisions:
        """Admit what quotas allow, run the policy once, return what to launch and stop."""
        self.now_seconds = now_seconds
        if self.policy is None or self.context is None:
            return Decisions()
        self._admit(usage or Usage())
        self._decisions = Decisions()
        self.context.now_seconds = now_seconds
        self.policy.schedule(self.context)
        out, self._decisions = self._decisions, Decisions()
        return out

    def _admit(self, usage: Usage) -> None:
        assert self.policy is not None
        if not self.blocked:
            return
        held = dict(usage.gpus)
        if self.quotas.any:
            holding = list(self.in_policy) + list(self.running)
            held = dict(
                usage.with_jobs(self._quota_key(j) for j in holding if j in self.records).gpus
            )
        for job_id in sorted(self.blocked, key=lambda j: self.jobs[j].arrival_seconds):
            record = self.records[job_id]
            job = self.jobs[job_id]
            reason = self.refusal_msg(record)
            if reason is None and not job.runtime_ratio_by_model:
                job.runtime_ratio_by_model = self._ratios(record)
            if reason is None and self.quotas.any:
                view = Usage(held, usage.gpu_hours)
                reason = self.quotas.blocks_msg(record.user, record.group, job.num_gpus, view)
            if reason is not None:
                self.blocked[job_id] = reason
                continue
            del self.blocked[job_id]
            if self.quotas.any:
                for key in (("user", record.user), ("group", record.group)):
                    held[key] = held.get(key, 0) + job.num_gpus
            self.in_policy.add(job_id)
            self.policy.on_arrival(job, self.now_seconds)

    def _quota_key(self, job_id: int) -> tuple[str, str, int]:
        record = self.records[job_id]
        return (record.user, record.group, self.jobs[job_id].num_gpus)

    def next_wakeup_seconds(self) -> float | None:
        if self.policy is None:
            return None
        wake = self.policy.next_wakeup_seconds(self.now_seconds)
        return wake if wake is not None and math.isfinite(wake) else None

    # -- what the page shows ------------------------------------------------------------------
    def predicted_seconds(self, record: JobRecord) -> float:
        """Predicted runtime on the fastest GPU model the job may use (reference seconds x the
        model's runtime ratio)."""
        view = self.jobs.get(record.id)
        gpus = num_gpus(record.gpus)
        probe = view or SimJob(record.id, 0.0, gpus, "", {}, user=record.user, vc=record.group)
        ratios = self._ratios(record)
        return self.predictor.predict_seconds(probe) * min(ratios.values(), default=1.0)

    def recent_error(self) -> float | None:
        if not self.recent_errors:
            return None
        return sum(self.recent_errors) / len(self.recent_errors)

    def attained_gpu_seconds(self, job_id: int) -> float:
        job = self.jobs.get(job_id)
        return job.attained_now(self.now_seconds) if job is not None else 0.0

    def waiting_reason(self, job_id: int) -> str:
        """Why a waiting job waits, in English ("": it does not wait)."""
        m = self.waiting_reason_msg(job_id)
        return "" if m is None else m.render(ENGLISH)

    def waiting_reason_msg(self, job_id: int) -> Msg | None:
        """``waiting_reason`` as a message: the queue page and ``gpufleet jobs`` render it in
        their reader's language (the API sends both)."""
        if job_id in self.blocked:
            return self.blocked[job_id]
        if job_id in self.stopping:
            return msg("preempted: waiting for its previous run to stop")
        job = self.jobs.get(job_id)
        if job is None or job.status != WAITING:
            return None
        free = self.cluster.free_by_model
        if any(free.get(m, 0) >= job.num_gpus for m in job.runtime_ratio_by_model):
            return msg("resources: {gpus} free GPUs exist but the policy ranks others first",
                       gpus=job.num_gpus)  # fmt: skip
        return msg("resources: {gpus} GPU(s) not free on a usable GPU model", gpus=job.num_gpus)

    def held_gpus(self) -> Mapping[str, list[int]]:
        """Host name -> GPU indices the queue's jobs hold."""
        out: dict[str, list[int]] = {}
        for job_id, placement in self.cluster.placements.items():
            if job_id < 0:
                continue
            for h, g in placement.gpus:
                out.setdefault(self.spec.hosts[h].name, []).append(g)
        return out


def num_gpus(gpus: float) -> int:
    """Whole GPUs a job is given (a fractional request gets one GPU to itself)."""
    return max(1, math.ceil(gpus))
