"""Host groups from the config (hosts.groups: group -> host name patterns): reports
by=host_group add up their hosts, the first matching group wins, other hosts are
'(ungrouped)'; a bad setting is refused naming the key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpufleet.config import load_settings
from gpufleet.errors import ConfigError
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 5, 6, tzinfo=UTC).timestamp()
END = START + 24 * 3600
GROUPS = {"even": ["node[02]"], "odd": ["node1", "node[13]"], "all": ["node*"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store = open_store(d / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=11, hosts=4))
    store.rollup(now=END + 3600, tz="UTC", busy_util_percent=5.0)
    store.close()
    settings = load_settings(
        None, overrides={"server": {"data_dir": d}, "hosts": {"groups": GROUPS}}, environ={}
    )
    with TestClient(create_app(settings)) as c:
        yield c


def figures(client, by):
    r = client.get(f"/api/v1/reports?period=custom&by={by}&from=2024-05-06&to=2024-05-06")
    assert r.status_code == 200, r.text
    return {row["key"]: row for row in r.json()["rows"]}, r.json()["totals"]


def test_host_groups_add_up_their_hosts(client):
    hosts, totals = figures(client, "host")
    groups, group_totals = figures(client, "host_group")
    assert set(groups) == {"even", "odd"}  # 'all' matches everything but comes last
    for name, members in (("even", ["node0", "node2"]), ("odd", ["node1", "node3"])):
        for m in ("gpu_hours", "busy_gpu_hours", "energy_kwh", "availability_hours"):
            assert groups[name][m] == pytest.approx(sum(hosts[h][m] for h in members)), m
        assert groups[name]["max_util"] == max(hosts[h]["max_util"] for h in members)
    assert group_totals == pytest.approx(totals)


def test_hosts_without_a_group_are_ungrouped(tmp_path):
    from gpufleet.reports.core import host_group_of

    assert host_group_of("gpu-a1", {"v": ["gpu-v*"]}) == "(ungrouped)"
    assert host_group_of("gpu-v1", {"v": ["gpu-v*"], "w": ["gpu-*"]}) == "v"


def test_bad_groups_are_refused_naming_the_key(tmp_path):
    cfg = tmp_path / "gpufleet.yaml"
    cfg.write_text("hosts:\n  groups:\n    vision: []\n")
    with pytest.raises(ConfigError, match=r"hosts\.groups: .*vision: give at least one host"):
        load_settings(cfg, environ={})
    cfg.write_text("hosts:\n  groups:\n    vision: gpu-v*\n")
    with pytest.raises(ConfigError, match=r"hosts\.groups\.vision"):
        load_settings(cfg, environ={})
