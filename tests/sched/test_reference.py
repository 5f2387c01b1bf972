"""The baselines reproduce the reference simulator's published results
(../shared/data/tiresias/README.md: SymbioticLab/Tiresias's own simulator on two Philly VCs)."""

from __future__ import annotations

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.runner import run_policies
from gpufleet.sched.sim import SimConfig
from gpufleet.sched.trace import read_tiresias_trace
from tests.sched.conftest import TIRESIAS, need_data

# avg JCT (s) of the reference simulator, from ../shared/data/tiresias/README.md
REFERENCE_AVG_JCT = {
    ("trace_6214e9_2000.csv", 64): {"fifo": 29_732, "tiresias": 29_614, "dlas": 29_614},
    ("trace_6214e9_2000.csv", 32): {"fifo": 86_170, "tiresias": 30_395, "dlas": 30_395},
    ("trace_0e4a51.csv", 64): {"fifo": 595_733, "tiresias": 199_205, "dlas": 200_905},
    ("trace_0e4a51.csv", 32): {"fifo": 3_179_904, "tiresias": 800_817, "dlas": 812_094},
}


@pytest.mark.parametrize(("trace", "gpus"), list(REFERENCE_AVG_JCT))
def test_fifo_and_tiresias_reproduce_the_reference(trace: str, gpus: int) -> None:
    jobs = read_tiresias_trace(need_data(TIRESIAS / trace))
    expected = REFERENCE_AVG_JCT[(trace, gpus)]
    spec = parse_cluster(f"v100:{gpus}x4")
    out = run_policies(spec, jobs, list(expected), SimConfig(cost_model="reference"))
    for name, reference in expected.items():
        summary, result = out[name]
        assert summary["unfinished_jobs"] == 0 and result.preemptions >= 0
        if name == "fifo":
            assert summary["avg_jct_s"] == pytest.approx(reference, abs=1.0), name
        else:
            assert summary["avg_jct_s"] == pytest.approx(reference, rel=0.05), name


def test_tiresias_trace_errors_name_the_line(tmp_path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text(
        "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"
        "0,1,0,1,resnet,100,1\n1,x,5,1,resnet,100,1\n"
    )
    with pytest.raises(ValueError, match=r"t.csv:3: num_gpu: must be a number"):
        read_tiresias_trace(bad)
