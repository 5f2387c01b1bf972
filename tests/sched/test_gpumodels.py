from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpufleet.sched.gpumodels import (
    FAMILY_CSV,
    MODELS_CSV,
    GpuTableError,
    UnknownGpuModelError,
    default_table,
    load_table,
)
from tests.conftest import REQUIRE_SERVICES
from tests.sched.conftest import GAVEL_JSON

GIB = 2**30


def test_every_model_the_issue_names_is_in_the_table_with_a_source() -> None:
    table = default_table()
    for name in ("k80", "p100", "v100", "a100", "h100", "l40", "l4", "a10", "t4"):
        model = table.lookup(name)
        assert model.source and model.memory_bytes > 0 and model.speed_vs_v100 > 0
    for name in ("RTX 3090", "RTX 4090", "RTX A6000"):
        assert table.lookup(name).memory_bytes in (24 * GIB, 48 * GIB)


@pytest.mark.parametrize(
    ("label", "model"),
    [
        ("Tesla V100-SXM2-32GB", "v100"),
        ("V100M16", "v100-16gb"),
        ("V100M32", "v100"),
        ("NVIDIA GeForce RTX 3090", "rtx3090"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("nvidia a100-sxm4-40gb", "a100-40gb"),
        ("Tesla T4", "t4"),
        ("NVIDIA RTX A6000", "a6000"),
    ],
)
def test_vendor_and_trace_labels_resolve(label: str, model: str) -> None:
    assert default_table().lookup(label).name == model


def test_unknown_model_names_the_file_or_takes_the_chosen_fallback() -> None:
    table = default_table()
    with pytest.raises(UnknownGpuModelError) as err:
        table.lookup("G2")
    assert str(MODELS_CSV) in str(err.value) and "'G2'" in str(err.value)
    assert table.lookup("G2", fallback="t4").name == "t4"
    with pytest.raises(UnknownGpuModelError, match="fallback"):
        table.lookup("G2", fallback="g3")


def test_estimated_speed_follows_the_stated_datasheet_rule() -> None:
    table = default_table()
    v100, a100 = table.lookup("v100"), table.lookup("a100")
    assert a100.speed_basis == "estimated" and v100.speed_basis == "reference"
    expected = math.sqrt(
        a100.fp16_tensor_flops_per_second
        / v100.fp16_tensor_flops_per_second
        * a100.memory_bandwidth_bytes_per_second
        / v100.memory_bandwidth_bytes_per_second
    )
    assert a100.speed_vs_v100 == pytest.approx(expected, abs=1e-3)
    # newer is faster where the datasheets say so
    assert table.speed("h100") > table.speed("a100") > table.speed("v100") > table.speed("t4")


def test_measured_family_speed_wins_over_the_model_average() -> None:
    table = default_table()
    assert table.speed("k80", family="ResNet-50") == pytest.approx(0.16)
    assert table.speed("k80", family="Recommendation") > 1.0
    assert table.speed("a100", family="ResNet-50") == table.speed("a100")


def test_family_and_model_speeds_match_gavel() -> None:
    if not GAVEL_JSON.exists():
        if REQUIRE_SERVICES:
            pytest.fail(f"{GAVEL_JSON} missing")
        pytest.skip("shared Gavel data not present")
    from gpufleet.sched.gavel import load_gavel, split_job_type

    gavel = load_gavel(GAVEL_JSON)
    table = default_table()
    for gpu in ("k80", "p100"):
        ratios = [gavel.speed_ratio(gpu, t, 1) for t in gavel.job_types(1)]
        ratios = [r for r in ratios if r > 0]
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        assert table.speed(gpu) == pytest.approx(geo, abs=1e-3)
        by_family: dict[str, list[float]] = {}
        for t in gavel.job_types(1):
            by_family.setdefault(split_job_type(t)[0], []).append(gavel.speed_ratio(gpu, t, 1))
        for family, values in by_family.items():
            assert table.speed(gpu, family) == pytest.approx(sum(values) / len(values), abs=1e-3)


def _copy_with(tmp_path: Path, old: str, new: str) -> Path:
    path = tmp_path / "gpu_models.csv"
    text = MODELS_CSV.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_bad_table_names_line_and_column(tmp_path: Path) -> None:
    path = _copy_with(tmp_path, "t4,tesla-t4,16,65,", "t4,tesla-t4,sixteen,65,")
    with pytest.raises(GpuTableError, match=r"gpu_models.csv:6: column 'memory_gib'"):
        load_table(path, FAMILY_CSV)
    path = _copy_with(tmp_path, "a10,a10g|a10-24gb", "a10,t4")
    with pytest.raises(GpuTableError, match="used by t4 and a10"):
        load_table(path, FAMILY_CSV)


def test_a_lab_can_add_its_own_model(tmp_path: Path) -> None:
    path = tmp_path / "gpu_models.csv"
    path.write_text(
        MODELS_CSV.read_text() + 'b200,,192,2250,8000,7.5,"measured in our lab, 2026-11"\n'
    )
    table = load_table(path, FAMILY_CSV)
    model = table.lookup("B200")
    assert (model.memory_bytes, model.speed_vs_v100, model.speed_basis) == (
        192 * GIB,
        7.5,
        "measured",
    )
