"""The live driver: the simulator's policy objects, a live fleet, memory and quotas."""

from __future__ import annotations

import pytest

from gpufleet.queue.driver import QueueDriver
from gpufleet.queue.fleet import FleetGpu, FleetHost
from gpufleet.queue.policies import policy_factory
from gpufleet.queue.quota import Limit, QuotaRules, Usage
from gpufleet.queue.store import JobStore
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.job import parse_job

GIB = 2**30


def host(name: str, gpus: int = 4, busy: tuple[int, ...] = (), online: bool = True) -> FleetHost:
    return FleetHost(
        name, "a100",
        tuple(FleetGpu(i, 80 * GIB, 0, i in busy) for i in range(gpus)), online,
    )  # fmt: skip


def submit(store: JobStore, gpus: int = 1, user: str = "alice", memory: str | None = None,
           extra: str = ""):  # fmt: skip
    text = f"name: j\nuser: {user}\ngpus: {gpus}\nmodel_name: m\nepochs: 1\ncommand: sleep 5\n"
    if memory:
        text += f"gpu_memory: {memory}\n"
    text += extra
    return store.submit(parse_job(text))


def driver(**kw) -> QueueDriver:
    return QueueDriver(policy_factory("gpufleet"), **kw)


def test_the_policy_is_the_simulators_and_places_on_free_gpus(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver()
    d.set_fleet([host("h1", busy=(0, 1)), host("h2", online=False)])
    assert isinstance(d.policy, GpufleetPolicy)
    jobs = [submit(store, 2), submit(store, 2)]
    for r in jobs:
        d.add(r, 100.0)
    out = d.schedule(100.0)
    # h1's GPUs 0 and 1 are busy with outside work; h2 is offline: one job fits
    assert [(s.job_id, s.hosts) for s in out.starts] == [(jobs[0].id, (("h1", (2, 3)),))]
    assert "resources" in d.waiting_reason(jobs[1].id)
    d.finished(jobs[0].id, 160.0, 60.0)
    d.set_fleet([host("h1"), host("h2", online=False)])
    out = d.schedule(160.0)
    assert [s.job_id for s in out.starts] == [jobs[1].id]
    assert d.predictor.observed == 1  # the finished job taught the predictor


def test_memory_beyond_every_gpu_is_refused_with_the_field(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver(memory_margin=0.1)
    d.set_fleet([host("h1")])
    ok = submit(store, memory="70GiB")
    too_big = submit(store, memory="75GiB")  # + 10% margin > 80 GiB
    assert d.refusal(ok) is None
    assert d.refusal(too_big).startswith("gpu_memory: needs 82.5 GiB")
    assert d.refusal(submit(store, gpus=8)) == "gpus: asks for 8; the largest usable GPU pool has 4"


def test_quota_keeps_a_job_from_the_policy_and_names_the_quota(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver(quotas=QuotaRules(users={"alice": Limit(gpus_at_once=2)}))
    d.set_fleet([host("h1")])
    a, b, c = submit(store, 2), submit(store, 1), submit(store, 1, user="bob")
    for r in (a, b, c):
        d.add(r, 10.0)
    out = d.schedule(10.0)
    assert sorted(s.job_id for s in out.starts) == [a.id, c.id]
    assert d.waiting_reason(b.id) == (
        "quota: user alice may hold 2 GPUs at once; holds 2, this job needs 1"
    )
    hours = Usage(gpu_hours={("user", "bob"): 5.0})
    d2 = driver(quotas=QuotaRules(users={"bob": Limit(gpu_hours_per_week=5)}))
    d2.set_fleet([host("h1")])
    d2.add(c, 10.0)
    assert d2.schedule(10.0, hours).starts == []
    assert "used 5.0 of 5 GPU-hours" in d2.waiting_reason(c.id)


def test_withdrawn_jobs_never_start(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver()
    d.set_fleet([host("h1", gpus=1)])
    a, b = submit(store), submit(store)
    d.add(a, 1.0)
    d.add(b, 2.0)
    assert [s.job_id for s in d.schedule(2.0).starts] == [a.id]
    d.withdraw(b.id, 3.0)
    d.finished(a.id, 4.0, 3.0)
    d.set_fleet([host("h1", gpus=1)])
    assert d.schedule(4.0).starts == []


def test_priority_counts_as_an_earlier_submission(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = QueueDriver(policy_factory("fifo"))
    d.set_fleet([host("h1", gpus=1, busy=(0,))])
    a, b = submit(store), submit(store)
    d.add(a, 1.0)
    d.add(b, 1.0)
    d.schedule(1.0)
    d.set_priority(store.set_priority(b.id, 2, "admin"), 2.0)
    d.set_fleet([host("h1", gpus=1)])
    assert [s.job_id for s in d.schedule(3.0).starts] == [b.id]


def test_a_preempted_runs_gpus_stay_taken_until_it_has_stopped(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver()
    d.set_fleet([host("h1", gpus=1)])
    a = submit(store)
    d.add(a, 0.0)
    assert [s.job_id for s in d.schedule(0.0).starts] == [a.id]
    b = submit(store)
    d.add(b, 100.0)
    out = d.schedule(100.0)  # least attained service first: b outranks a, which is preempted
    assert [p.job_id for p in out.preempts] == [a.id] and out.starts == []
    assert d.schedule(101.0).starts == []  # a's run has not stopped yet: its GPU stays taken
    assert d.waiting_reason(a.id) == "preempted: waiting for its previous run to stop"
    assert d.stopped(a.id) is None
    assert [s.job_id for s in d.schedule(102.0).starts] == [b.id]


@pytest.mark.parametrize("preemptible", [True, False])
@pytest.mark.parametrize(("policy", "later"), [("gpufleet", 100.0), ("tiresias", 5000.0),
                                               ("dlas", 5000.0)])  # fmt: skip
def test_a_job_that_is_not_preemptible_keeps_its_gpus(tmp_path, policy, later, preemptible):
    store = JobStore(tmp_path / "q.sqlite3")
    d = QueueDriver(policy_factory(policy))
    d.set_fleet([host("h1", gpus=1)])
    a = submit(store, extra=f"preemptible: {str(preemptible).lower()}\n")
    d.add(a, 0.0)
    assert [s.job_id for s in d.schedule(0.0).starts] == [a.id]
    assert d.jobs[a.id].preemptible is preemptible
    b = submit(store, extra="priority: 2\n")  # more urgent, and less served
    d.add(b, later)
    out = d.schedule(later)
    if preemptible:
        assert [p.job_id for p in out.preempts] == [a.id]
        return
    assert out.preempts == [] and out.starts == []
    assert a.id in d.running and "resources" in d.waiting_reason(b.id)
    with pytest.raises(RuntimeError, match=f"job {a.id} is not preemptible"):
        assert d.context is not None
        d.context.preempt(d.jobs[a.id])
    assert d.schedule(later + 1000.0).preempts == []
    d.finished(a.id, later + 2000.0, later + 2000.0)
    assert [s.job_id for s in d.schedule(later + 2000.0).starts] == [b.id]


def test_preempted_again_before_the_first_stop_is_confirmed(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = QueueDriver(policy_factory("tiresias"))
    d.set_fleet([host("h1", gpus=2)])
    a = submit(store)
    d.add(a, 0.0)
    d.schedule(0.0)
    b, c = submit(store, 2), submit(store)
    d.add(b, 1.0)
    d.add(c, 1.0)
    for t in range(2, 40):  # whatever the policy does, a run is never launched twice
        out = d.schedule(float(t))
        assert len({s.job_id for s in out.starts}) == len(out.starts)
        for p in out.preempts:
            d.stopped(p.job_id)


def test_jobs_adopted_before_their_hosts_report_keep_their_gpus(tmp_path):
    """After a restart the live state fills host by host: a running job whose host had not
    reported yet keeps its GPUs once the host reports (nothing is started on them)."""
    store = JobStore(tmp_path / "q.sqlite3")
    d = QueueDriver(policy_factory("fifo"))
    d.set_fleet([host("h1", gpus=2)])  # h2 has not reported yet
    running = submit(store, 2)
    running = store.transition(running.id, "dispatching", "placed", placement=[
        {"host": "h2", "gpu_indices": [0, 1]}], gpu_model="a100")  # fmt: skip
    from gpufleet.queue.service import start_of

    d.adopt_running(running, start_of(running), 0.0)
    waiting = [submit(store, 2), submit(store, 2)]
    for r in waiting:
        d.add(r, 1.0)
    d.set_fleet([host("h1", gpus=2), host("h2", gpus=2)])
    out = d.schedule(2.0)
    assert [s.job_id for s in out.starts] == [waiting[0].id]  # on h1; h2 is the adopted job's
    assert out.starts[0].hosts == (("h1", (0, 1)),)
    d.set_fleet([host("h1", gpus=2)])  # h2 drops out of the live state and comes back
    d.set_fleet([host("h1", gpus=2), host("h2", gpus=2)])
    assert d.schedule(3.0).starts == []


def test_a_stopping_runs_gpus_stay_taken_across_a_fleet_change(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver()
    d.set_fleet([host("h1", gpus=1)])
    a = submit(store)
    d.add(a, 0.0)
    assert [s.job_id for s in d.schedule(0.0).starts] == [a.id]
    b = submit(store)
    d.add(b, 100.0)
    assert [p.job_id for p in d.schedule(100.0).preempts] == [a.id]
    d.set_fleet([host("h0", gpus=1, busy=(0,)), host("h1", gpus=1)])  # a new spec
    assert d.schedule(101.0).starts == []  # a's run has not stopped: h1's GPU stays taken
    d.stopped(a.id)
    out = d.schedule(102.0)
    assert [(s.job_id, s.hosts) for s in out.starts] == [(b.id, (("h1", (0,)),))]


def test_a_running_jobs_memory_seen_in_live_state_keeps_it_off_smaller_gpus(tmp_path):
    """What agents report as used on a GPU a job has to itself is the job's measured memory
    (as in the simulator): once seen, the policy no longer counts GPU models too small for it
    (a restart after a preemption goes to one that holds it)."""
    store = JobStore(tmp_path / "q.sqlite3")
    d = driver()

    def fleet(used: int) -> list[FleetHost]:
        return [
            FleetHost("big", "a100", (FleetGpu(0, 80 * GIB, used),)),
            FleetHost("small", "t4", (FleetGpu(0, 16 * GIB, 0),)),
        ]

    d.set_fleet(fleet(0))
    r = submit(store, 1)  # says nothing of its memory
    d.add(r, 100.0)
    out = d.schedule(100.0)
    assert [(s.job_id, s.gpu_model) for s in out.starts] == [(r.id, "a100")]
    job = d.jobs[r.id]
    assert set(d.policy.usable_models(job)) == {"a100", "t4"}
    d.set_fleet(fleet(40 * GIB))  # the next pass's live state: 40 GiB in use on its GPU
    d.schedule(101.0)
    assert job.measured_gpu_memory_bytes == 40 * GIB
    assert d.policy.usable_models(job) == ["a100"]
