"""The Philly trace shipped with the package, and the one reader of it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gpufleet.errors import GpufleetError
from gpufleet.philly import PACKAGED_TRACE, default_trace_path, load_trace, read_rows
from gpufleet.sched.trace import read_philly
from tests.conftest import gpufleet_here, need_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "philly_jobs.csv"


def test_packaged_trace_is_the_default_and_complete(monkeypatch) -> None:
    monkeypatch.delenv("GPUFLEET_TRACE", raising=False)
    assert default_trace_path() == PACKAGED_TRACE
    assert PACKAGED_TRACE.stat().st_size < 3 * 2**20  # "a few MB at most"
    rows = list(read_rows())
    assert len(rows) == 62_637  # every job of data/README.md's philly_jobs.csv
    assert {r.cluster for r in rows} >= {"6214e9", "11cb48", "2869ce"}
    assert sum(r.cluster == "2869ce" for r in rows) == 422
    # the simulator's reader reads the same file by default
    assert len(read_philly(None, ["2869ce"])) == 422


def test_packaged_trace_matches_the_shared_csv() -> None:
    need_file(SHARED, "the shared Philly trace (the packaged one is checked on its own above)")
    assert list(read_rows(SHARED)) == list(read_rows(PACKAGED_TRACE))


def test_plain_and_gzip_read_alike(tmp_path, monkeypatch) -> None:
    text = (
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-02 10:00:00,3600,2,7200,zz\n"
        "2017-10-02 09:00:00,0,1,0,zz\n"
        "2017-10-02 08:00:00,60,1,60,yy\n"
    )
    plain, packed = tmp_path / "t.csv", tmp_path / "t.csv.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert list(read_rows(plain)) == list(read_rows(packed))
    jobs = load_trace(packed)  # the zero-length job is dropped, the rest sorted by time
    assert [(j.row, j.cluster) for j in jobs] == [(4, "yy"), (2, "zz")]
    monkeypatch.setenv("GPUFLEET_TRACE", str(plain))
    assert default_trace_path() == plain


def test_bad_row_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-02,x,1,1,a\n")
    with pytest.raises(GpufleetError, match=r"bad\.csv:2"):
        load_trace(bad)
    with pytest.raises(GpufleetError, match="missing column"):
        (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
        load_trace(tmp_path / "cols.csv")


@pytest.mark.parametrize(
    "duration, gpus, words",
    [
        ("-5", "1", "duration: '-5' is not a number of seconds >= 0"),
        ("inf", "1", "duration: 'inf' is not a number"),
        ("nan", "1", "duration: 'nan' is not a number"),
        ("60", "1.5", "num_gpus: '1.5' is not a whole number >= 0"),
        ("60", "-2", "num_gpus: '-2' is not a whole number"),
    ],
)
def test_impossible_values_are_refused_naming_line_and_column(tmp_path, duration, gpus, words):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-02 10:00:00,60,1,60,a\n"
        f"2017-10-02 11:00:00,{duration},{gpus},60,a\n"
    )
    with pytest.raises(GpufleetError, match=r"bad\.csv:3: ") as err:
        read_philly(bad)
    assert words in str(err.value)


def test_simulate_runs_from_anywhere_with_what_the_package_ships(tmp_path, monkeypatch):
    """No ../shared beside it: the shipped trace and Gavel table; a trace of one's own with no
    gavel_throughputs.json beside it uses the shipped table too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPUFLEET_TRACE", raising=False)
    r = gpufleet_here("simulate", "--vc", "23dbec", "--policies", "fifo,gpufleet", "--json")
    assert r.returncode == 0, r.stderr
    shipped = r.stdout
    own = tmp_path / "mine.csv"
    with gzip.open(PACKAGED_TRACE, "rt") as fh:
        own.write_text("".join(line for k, line in enumerate(fh) if k == 0 or "23dbec" in line))
    r = gpufleet_here("simulate", "--trace", str(own), "--policies", "fifo,gpufleet", "--json")
    assert r.returncode == 0, r.stderr
    a, b = json.loads(shipped), json.loads(r.stdout)
    assert a["policies"]["fifo"]["jobs"] == b["policies"]["fifo"]["jobs"] == 8
    assert a["policies"]["gpufleet"]["avg_jct_s"] == b["policies"]["gpufleet"]["avg_jct_s"]
