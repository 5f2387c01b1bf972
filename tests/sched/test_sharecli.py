"""``gpufleet simulate`` on Alibaba-format traces (and unknown GPU models on the Philly path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpufleet.sched.alibaba import generate_trace, write_nodes, write_pods
from gpufleet.sched.cli import simulate
from gpufleet.sched.share import POLICIES
from tests.conftest import REQUIRE_SERVICES
from tests.sched.conftest import PHILLY_CSV


def trace_files(tmp_path: Path) -> tuple[Path, Path]:
    nodes, pods = generate_trace(num_nodes=40, num_pods=300, seed=2)
    write_nodes(nodes, tmp_path / "nodes.csv")
    write_pods(pods, tmp_path / "pods.csv")
    return tmp_path / "nodes.csv", tmp_path / "pods.csv"


def test_simulate_alibaba_trace_files_prints_every_policy(tmp_path: Path) -> None:
    nodes, pods = trace_files(tmp_path)
    args = ["--trace", str(pods), "--nodes", str(nodes), "--plots", str(tmp_path / "p")]
    result = CliRunner().invoke(simulate, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["policies"]) == list(POLICIES)
    for m in data["policies"].values():
        assert 0 <= m["unallocated_share_at_full"] <= 1
        assert m["fragmentation_rate_at_full"] is not None
    assert (tmp_path / "p" / "allocation.png").read_bytes()[:4] == b"\x89PNG"
    assert "arrived_share" in (tmp_path / "p" / "allocation.csv").read_text()
    table = CliRunner().invoke(simulate, [*args, "--policies", "first-fit,fgd"])
    assert table.exit_code == 0, table.output
    assert "fgd" in table.stdout and "first-fit" in table.stdout and "none leaves" in table.stdout


def test_synthetic_trace_can_be_written_and_replayed(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        simulate,
        [
            "--synthetic",
            "30:200",
            "--write-trace",
            str(tmp_path),
            "--replay",
            "--policies",
            "best-fit,fgd",
            "--plots",
            str(tmp_path / "p"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "replay"
    m = data["policies"]["best-fit"]
    assert m["placed_pods"] + m["failed_pods"] == 200
    assert (tmp_path / "pods.csv").read_text().startswith("name,cpu_milli,memory_mib,num_gpu")
    assert (tmp_path / "p" / "allocation_over_time.png").read_bytes()[:4] == b"\x89PNG"
    over_time = (tmp_path / "p" / "allocation_over_time.csv").read_text().splitlines()
    assert over_time[0] == "policy,time_s,allocated_share" and len(over_time) > 200


def test_bad_trace_error_names_row_and_column(tmp_path: Path) -> None:
    nodes, pods = trace_files(tmp_path)
    lines = pods.read_text().splitlines()
    fields = lines[3].split(",")
    fields[4] = "1200"  # gpu_milli
    lines[3] = ",".join(fields)
    pods.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(simulate, ["--trace", str(pods), "--nodes", str(nodes)])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "row 3 (line 4), column 'gpu_milli'" in result.stderr
    assert "hint:" in result.stderr


def test_unknown_gpu_model_names_the_table_or_takes_the_fallback(tmp_path: Path) -> None:
    nodes, pods = trace_files(tmp_path)
    nodes.write_text(nodes.read_text().replace(",T4\n", ",G2\n"))
    result = CliRunner().invoke(simulate, ["--trace", str(pods), "--nodes", str(nodes)])
    assert result.exit_code == 2
    assert "unknown GPU model 'G2'" in result.stderr and "gpu_models.csv" in result.stderr
    assert "--unknown-gpu" in result.stderr
    ok = CliRunner().invoke(
        simulate,
        ["--trace", str(pods), "--nodes", str(nodes), "--unknown-gpu", "t4", "--json"],
    )
    assert ok.exit_code == 0, ok.output


def test_share_options_are_checked() -> None:
    result = CliRunner().invoke(simulate, ["--synthetic", "10:50", "--policies", "fifo"])
    assert result.exit_code == 2 and "unknown share policy fifo" in result.stderr
    result = CliRunner().invoke(simulate, ["--synthetic", "ten"])
    assert result.exit_code == 2 and "NODES:PODS" in result.stderr
    result = CliRunner().invoke(simulate, [])
    assert result.exit_code == 2 and "--trace or --vc is required" in result.stderr


def _need_philly() -> None:
    if not PHILLY_CSV.exists():
        if REQUIRE_SERVICES:
            pytest.fail(f"{PHILLY_CSV} missing")
        pytest.skip("shared Philly data not present")


def test_philly_runs_on_gpu_models_gavel_did_not_measure() -> None:
    _need_philly()
    args = ["--trace", str(PHILLY_CSV), "--vc", "2869ce", "--policies", "fifo", "--json"]
    result = CliRunner().invoke(simulate, [*args, "--cluster", "rtx3090:16,a100:16,T4:8"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["policies"]["fifo"]["unfinished_jobs"] >= 0
    result = CliRunner().invoke(simulate, [*args, "--cluster", "g9:8@24g"])
    assert result.exit_code == 2
    assert "unknown GPU model 'g9'" in result.stderr and "gpu_models.csv" in result.stderr
    result = CliRunner().invoke(simulate, [*args, "--cluster", "g9:8@24g", "--unknown-gpu", "v100"])
    assert result.exit_code == 0, result.output
