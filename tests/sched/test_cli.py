from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gpufleet.sched.cli import predictor, simulate
from tests.conftest import need_file
from tests.sched.conftest import GAVEL_JSON, PHILLY_CSV


@pytest.fixture(autouse=True)
def _shared_data() -> None:
    """Every test here reads the shared Philly trace: under CI a missing one fails them."""
    need_file(PHILLY_CSV, "the Philly trace")


def test_simulate_json() -> None:
    result = CliRunner().invoke(
        simulate,
        ["--trace", str(PHILLY_CSV), "--vc", "2869ce", "--policies", "fifo,gpufleet", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    keys = {
        "avg_jct_s",
        "p50_jct_s",
        "p99_jct_s",
        "makespan_s",
        "avg_queue_s",
        "p99_queue_s",
        "gpu_utilization",
        "ftf_rho",
        "max_wait_large_s",
        "oom_failures",
        "preemptions",
        "unfinished_jobs",
        "jobs",
        "sim_wall_s",
    }
    for name in ("fifo", "gpufleet"):
        assert keys <= set(data["policies"][name])
    assert data["cost_model"].startswith("realistic")
    assert data["policies"]["gpufleet"]["unfinished_jobs"] == 0
    assert data["policies"]["gpufleet"]["refused_jobs"] == 0


def test_simulate_table_is_whole_when_piped_and_folds_on_a_narrow_screen(monkeypatch) -> None:
    """Piped (no terminal, no COLUMNS): every column at its natural width; with COLUMNS=80
    the cells fold instead of ending in an ellipsis. Either way every figure is there."""
    args = ["--trace", str(PHILLY_CSV), "--vc", "23dbec", "--policies", "fifo,gpufleet"]
    monkeypatch.delenv("COLUMNS", raising=False)
    as_json = json.loads(CliRunner().invoke(simulate, [*args, "--json"]).stdout)
    avg_jct = f"{as_json['policies']['fifo']['avg_jct_s'] / 3600:.2f}"
    piped = CliRunner().invoke(simulate, args)
    assert piped.exit_code == 0, piped.output
    row = next(line for line in piped.stdout.splitlines() if line.startswith("│ fifo "))
    assert "…" not in piped.stdout and avg_jct in row and "wall s" in piped.stdout
    assert len(row) > 80
    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(simulate, args)
    assert narrow.exit_code == 0, narrow.output
    assert "…" not in narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80


def test_simulate_errors() -> None:
    result = CliRunner().invoke(simulate, ["--trace", str(PHILLY_CSV), "--policies", "lottery"])
    assert result.exit_code == 2
    assert "error: --policies: unknown policy lottery" in result.stderr
    assert "hint:" in result.stderr
    result = CliRunner().invoke(simulate, ["--trace", str(PHILLY_CSV), "--vc", "nope"])
    assert result.exit_code == 2 and "no jobs left" in result.stderr
    assert "virtual clusters: 6214e9 (" in result.stderr  # what the trace does hold
    assert "--vc 6214e9" in result.stderr


def test_simulate_says_a_trace_without_jobs_is_empty(tmp_path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("timestamp,duration,num_gpus,gpu_time,cluster\n")
    result = CliRunner().invoke(simulate, ["--trace", str(empty)])
    assert result.exit_code == 2
    assert f"{empty}: the trace holds no jobs" in result.stderr
    assert "no jobs left after filtering" not in result.stderr


def test_simulate_plots(tmp_path) -> None:
    result = CliRunner().invoke(
        simulate,
        [
            "--trace",
            str(PHILLY_CSV),
            "--vc",
            "2869ce",
            "--policies",
            "easy",
            "--plots",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "jct_cdf.csv").read_text().startswith("policy,jct_s,fraction")
    assert (tmp_path / "queue_length.svg").read_text().startswith("<svg")


def test_convert_and_evaluate(tmp_path) -> None:
    bench = tmp_path / "bench.csv"
    result = CliRunner().invoke(predictor, ["convert-gavel", str(GAVEL_JSON), "-o", str(bench)])
    assert result.exit_code == 0, result.output
    assert bench.read_text().startswith("gpu_model,model,colocated,step_time_s,gpu_mem_mib")
    result = CliRunner().invoke(
        predictor,
        [
            "evaluate",
            "--bench",
            str(bench),
            "--holdout",
            "gpu_model",
            "--methods",
            "additive",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["holdout"] == "gpu_model" and data["best_method"] == "additive"
    assert "model-mean" in data["methods"] and data["beats_baseline"] in (True, False, None)
    result = CliRunner().invoke(
        predictor,
        ["evaluate", "--bench", str(bench), "--holdout", "model", "--methods", "additive"],
    )
    assert result.exit_code == 0, result.output
    assert "not predicted" in result.output and "per-model mean" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("gpu_model,model,colocated,step_time_s\nv100,a,,fast\n")
    result = CliRunner().invoke(predictor, ["evaluate", "--bench", str(bad)])
    assert result.exit_code == 2 and "step_time_s: must be a positive number" in result.stderr
