"""Gavel's LPs (sched/gavel_lp.py): known optima on hand-made cases, feasibility on random ones,
the round mechanism's priority order, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.gavel_lp import GavelLP, model_orders, round_order, solve_allocation
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.runner import NON_ORACLE_BASELINES, POLICY_NAMES, make_policy
from gpufleet.sched.sim import SimConfig, Simulator
from tests.sched.conftest import make_job

REFERENCE = SimConfig(cost_model="reference")


# -- the LPs on hand-made cases ------------------------------------------------------------------
def test_max_min_gives_the_known_optimum_on_two_gpu_models() -> None:
    # one fast and one slow GPU; job A runs 3x faster on the fast one, job B only runs there.
    # Normalised throughputs (X_equal: half of each GPU): A [1.5, 0.5], B [2, 0]. With b of the
    # fast GPU for B: B = 2b, A = 1.5 (1 - b) + 0.5 b (A takes the slow GPU the rest of the
    # time); equal at b = 0.5, where both are 1.0.
    result = solve_allocation(np.array([[3.0, 1.0], [1.0, 0.0]]), np.ones(2), np.array([1.0, 1.0]))
    assert result.x == pytest.approx(np.array([[0.5, 0.5], [0.5, 0.0]]), abs=1e-6)
    assert result.value == pytest.approx(1.0, rel=1e-6)
    assert result.x[1, 1] == 0.0  # no throughput there: exactly nothing


def test_max_min_is_heterogeneity_aware() -> None:
    # the same two GPUs; A gains 4x from the fast GPU, B nothing: the fast GPU goes to A
    result = solve_allocation(np.array([[4.0, 1.0], [1.0, 1.0]]), np.ones(2), np.array([1.0, 1.0]))
    # A normalised [1.6, 0.4], B [1, 1]: A all fast (1.6) and B all slow (1.0) reaches min 1.0;
    # no allocation does better (B's row sums to at most 1)
    assert result.value == pytest.approx(1.0, rel=1e-6)
    a, b = result.x
    assert 1.6 * a[0] + 0.4 * a[1] >= 1.0 - 1e-6 and b.sum() == pytest.approx(1.0, abs=1e-6)


def test_max_min_gives_equal_gpu_time_to_a_multi_gpu_job() -> None:
    # 4 GPUs, three 1-GPU jobs and one 4-GPU job: Gavel's scale factor makes the 4-GPU job's
    # quarter of the time worth as much as a 1-GPU job's whole time
    result = solve_allocation(np.ones((4, 1)), np.array([1.0, 1.0, 1.0, 4.0]), np.array([4.0]))
    assert result.x[:, 0] == pytest.approx([1.0, 1.0, 1.0, 0.25], abs=1e-6)


def test_makespan_shares_one_gpu_in_proportion_to_the_remaining_work() -> None:
    result = solve_allocation(
        np.ones((2, 1)), np.ones(2), np.array([1.0]), "makespan", np.array([100.0, 300.0])
    )
    assert result.x[:, 0] == pytest.approx([0.25, 0.75], abs=1e-6)
    assert 1.0 / result.value == pytest.approx(400.0, rel=1e-6)  # the makespan: all the work


def test_min_jct_gives_the_fast_gpu_to_the_job_that_gains_most() -> None:
    # equal remaining work; A runs 2x faster on the fast GPU, B 1.1x: A fast, B slow
    result = solve_allocation(
        np.array([[2.0, 1.0], [1.1, 1.0]]),
        np.ones(2),
        np.array([1.0, 1.0]),
        "min_jct",
        np.array([100.0, 100.0]),
    )
    assert result.x == pytest.approx(np.array([[1.0, 0.0], [0.0, 1.0]]), abs=1e-6)


def test_min_jct_runs_the_shortest_predicted_job_first() -> None:
    result = solve_allocation(
        np.ones((3, 1)), np.ones(3), np.array([1.0]), "min_jct", np.array([500.0, 50.0, 200.0])
    )
    assert result.x[:, 0] == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


# -- feasibility on random cases -----------------------------------------------------------------
instance = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(
            st.lists(st.sampled_from([0.0, 0.3, 0.5, 1.0, 2.0, 3.5]), min_size=3, max_size=3),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.sampled_from([1, 1, 2, 4, 8]), min_size=n, max_size=n),
        st.lists(st.floats(10.0, 1e6), min_size=n, max_size=n),
        st.lists(st.sampled_from([1, 4, 8, 16]), min_size=3, max_size=3),
    )
)


@settings(max_examples=60, deadline=None)
@given(case=instance, objective=st.sampled_from(["max_min", "makespan", "min_jct"]))
def test_every_allocation_is_feasible(case, objective) -> None:
    rows, scales, remaining, capacity = case
    throughput = np.array(rows)
    scale = np.array(scales, dtype=float)
    cap = np.array(capacity, dtype=float)
    throughput[scale[:, None] > cap[None, :]] = 0.0  # as the policy does: too big for the model
    result = solve_allocation(throughput, scale, cap, objective, np.array(remaining))
    x = result.x
    assert np.all(x >= 0)
    assert np.all(x.sum(axis=1) <= 1 + 1e-7), "a job gets at most all of the time"
    assert np.all(scale @ x <= cap + 1e-6), "no GPU model holds more GPUs than it has"
    assert np.all(x[throughput == 0] == 0), "nothing where a job has no throughput"
    if objective == "max_min":
        # at least as fair as the time-sharing allocation X_equal scaled to fit
        equal = np.where(throughput > 0, cap[None, :], 0.0)
        equal = equal / max(1.0, (scale @ equal / cap).max(), equal.sum(axis=1).max())
        norm = throughput @ cap / cap.sum()
        runnable = norm > 0
        if runnable.any():
            value_equal = (scale * (throughput * equal).sum(axis=1) / np.where(runnable, norm, 1))[
                runnable
            ].min()
            value_lp = (scale * (throughput * x).sum(axis=1) / np.where(runnable, norm, 1))[
                runnable
            ].min()
            assert value_lp >= value_equal - 1e-6


# -- the round mechanism -------------------------------------------------------------------------
def test_round_order_follows_priority_then_deficit_then_allocation() -> None:
    alloc = np.array([[0.5, 0.5], [0.5, 0.0], [0.25, 0.75], [0.1, 0.0]])
    received = np.array([[180.0, 0.0], [60.0, 0.0], [0.0, 100.0], [0.0, 0.0]])
    usable = np.array([[True, True], [True, False], [True, True], [True, True]])
    orders = model_orders(alloc, received, 360.0, usable)
    # model 0: job 2 and 3 have received nothing (X x 1e9: 0.25e9, 0.1e9); job 1 0.5 / (60/360)
    # = 3 before job 0 0.5 / (180/360) = 1
    assert orders[0].tolist() == [2, 3, 1, 0]
    # model 1: job 0 has received nothing (0.5e9) before job 2 (0.75 / (100/360) = 2.7) before
    # job 3 (X = 0: priority 0); job 1 has no throughput there
    assert orders[1].tolist() == [0, 2, 3]
    assert round_order(alloc, received, 360.0, usable)[:4] == [(2, 0), (3, 0), (1, 0), (0, 0)]


def test_round_order_breaks_ties_by_deficit() -> None:
    alloc = np.array([[0.5], [0.5]])
    received = np.array([[90.0], [90.0]])  # same priority
    # same fraction received, so same priority; the deficits tie too: the allocation decides
    assert model_orders(np.array([[0.4], [0.6]]), received, 360.0, np.ones((2, 1), bool))[
        0
    ].tolist() == [1, 0]
    assert model_orders(alloc, received, 360.0, np.ones((2, 1), bool))[0].tolist() == [0, 1]


def test_two_jobs_on_one_gpu_take_turns_round_by_round() -> None:
    # max-min gives each half of the GPU; Gavel's priorities then alternate them every round
    spec = parse_cluster("v100:1x1")
    items = [make_job(0, 0.0, 3600.0), make_job(1, 0.0, 3600.0)]
    policy = GavelLP(spec)
    sim = Simulator(spec, items, policy, config=REFERENCE)
    result = sim.run()
    # job 0 runs the even rounds: its 10th at 18 x 360 s, done at 6840 s; job 1 runs the odd
    # ones, then alone from 6840 s for its last 360 s
    assert sim.jobs[0].finish_seconds == pytest.approx(6840.0)
    assert sim.jobs[1].finish_seconds == pytest.approx(7200.0)
    assert result.preemptions == 18
    assert policy.stats.solves == 2, "solved at the start and after the first finish only"
    assert policy.stats.rounds == 20


def test_the_fast_gpu_goes_to_the_job_that_gains_from_it() -> None:
    spec = parse_cluster("v100:1x1,k80:1x1")
    fast = make_job(0, 0.0, 3600.0, models=("v100", "k80"))
    fast.truth.duration_seconds["k80"] = 4 * 3600.0
    fast.job.runtime_ratio_by_model["k80"] = 4.0
    flat = make_job(1, 0.0, 3600.0, models=("v100", "k80"))
    sim = Simulator(spec, [fast, flat], GavelLP(spec), config=REFERENCE)
    sim.run()
    # the LP puts job 0 on the V100 (it loses 4x elsewhere) and job 1 on the K80 (it loses
    # nothing): both finish after an hour, never preempted
    assert sim.jobs[0].finish_seconds == pytest.approx(3600.0)
    assert sim.jobs[1].finish_seconds == pytest.approx(3600.0)
    assert sim.jobs[0].preemptions == 0 and sim.jobs[1].preemptions == 0


def test_a_job_waits_for_the_next_round_unless_filling_between_rounds() -> None:
    spec = parse_cluster("v100:2x2")
    items = [make_job(0, 0.0, 1000.0), make_job(1, 100.0, 1000.0)]
    sim = Simulator(spec, [i.fresh() for i in items], GavelLP(spec), config=REFERENCE)
    sim.run()
    assert sim.jobs[1].first_start_seconds == pytest.approx(360.0)  # Gavel: the next round
    eager = GavelLP(spec, fill_between_rounds=True)
    sim = Simulator(spec, [i.fresh() for i in items], eager, config=REFERENCE)
    sim.run()
    assert sim.jobs[1].first_start_seconds == pytest.approx(100.0)


def test_min_jct_learns_from_finished_jobs_and_never_reads_the_truth() -> None:
    spec = parse_cluster("v100:1x1")
    items = [make_job(i, 10.0 * i, 500.0 + 100 * i, vc="a") for i in range(6)]
    policy = GavelLP(spec, "min_jct", OnlineRuntimePredictor())
    sim = Simulator(spec, items, policy, config=SimConfig(cost_model="realistic"))
    result = sim.run()
    assert result.unfinished_jobs == 0
    assert policy.estimator is not None and policy.estimator.observed == 6  # type: ignore[attr-defined]


# -- registry and bad input ----------------------------------------------------------------------
def test_the_lp_policies_are_registered_as_non_oracle_baselines() -> None:
    spec = parse_cluster("v100:4x4")
    for name in ("gavel-lp", "gavel-lp-jct", "gavel-lp-makespan"):
        assert name in POLICY_NAMES and name in NON_ORACLE_BASELINES
        policy = make_policy(name, spec, REFERENCE)
        assert policy.name == name and not policy.oracle
    assert make_policy("gavel", spec, REFERENCE).name == "gavel"  # the heuristic stays


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"throughput": np.array([[1.0, -1.0]])}, "throughput is negative at [0, 1]"),
        ({"throughput": np.array([[1.0, np.nan]])}, "throughput has a value that is not finite"),
        ({"throughput": np.ones(2)}, "throughput must be jobs x GPU models"),
        ({"scale": np.ones(3)}, "scale has shape (3,), expected (1,)"),
        ({"scale": np.zeros(1)}, "scale (GPUs per job) must be positive"),
        ({"capacity": np.ones(3)}, "capacity has shape (3,), expected (2,)"),
        ({"objective": "fastest"}, "objective 'fastest' is not one of"),
        ({"objective": "makespan"}, "makespan needs the remaining work"),
        ({"objective": "min_jct", "remaining": np.zeros(1)}, "remaining work must be positive"),
    ],
)
def test_bad_input_is_named(kwargs, message) -> None:
    args = {
        "throughput": np.array([[1.0, 2.0]]),
        "scale": np.ones(1),
        "capacity": np.array([4.0, 4.0]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match="gavel LP") as info:
        solve_allocation(**args)
    assert message in str(info.value)


def test_bad_policy_arguments_are_named() -> None:
    spec = parse_cluster("v100:4x4")
    with pytest.raises(ValueError, match="objective 'fair' is not one of"):
        GavelLP(spec, "fair")
    with pytest.raises(ValueError, match="min_jct needs a runtime estimator"):
        GavelLP(spec, "min_jct")
    with pytest.raises(ValueError, match=r"allocation .* must have the same shape"):
        model_orders(np.ones((2, 1)), np.ones((3, 1)), 1.0, np.ones((2, 1), bool))
    with pytest.raises(ValueError, match="elapsed seconds must be >= 0"):
        model_orders(np.ones((2, 1)), np.ones((2, 1)), -1.0, np.ones((2, 1), bool))
