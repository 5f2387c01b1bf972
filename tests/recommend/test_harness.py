"""The evaluation harness in --quick mode: every recommender in the table (figures go to docs,
targets are not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from gpufleet.demo.trace import default_trace_path
from tests.conftest import need_file


def gpufleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpufleet", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


NAMES = [
    "gpufleet",
    "most free GPUs now",
    "least loaded now",
    "random feasible",
    "most popular host",
]


def test_evaluate_recommender_quick_prints_the_table_and_json() -> None:
    need_file(default_trace_path(), "the Philly trace")
    r = gpufleet("evaluate-recommender", "--quick")
    assert r.returncode == 0, r.stderr
    for name in NAMES:
        assert f"| {name}" in r.stdout
    for col in (
        "hit rate",
        "wait mean (min)",
        "Gini per-host GPU-h",
        "busiest 20% share",
        "p99 ms",
    ):
        assert col in r.stdout
    assert "fleet: 16 hosts" in r.stdout

    r = gpufleet("evaluate-recommender", "--quick", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [row["recommender"] for row in data["rows"]] == NAMES
    for row in data["rows"]:
        assert 0 <= row["hit_rate"] <= 1 and row["requests"] > 20
        assert 0 <= row["gini"] <= 1 and 0 < row["busiest_20pct_share"] <= 1
        assert row["latency_p99_ms"] >= row["latency_p50_ms"] > 0
    assert data["requests_scored"] > 20


def test_evaluate_recommender_says_when_the_trace_is_missing(tmp_path) -> None:
    r = gpufleet("evaluate-recommender", "--quick", "--trace", str(tmp_path / "none.csv"))
    assert r.returncode != 0
    assert "error:" in r.stderr and "none.csv" in r.stderr and "hint:" in r.stderr
