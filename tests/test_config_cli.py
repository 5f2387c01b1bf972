"""Config validation, the CLI's errors and help, the documented settings, /metrics via promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from gpufleet.cli import COMMANDS
from gpufleet.config import ENV_VARS, Settings, load_settings
from gpufleet.errors import ConfigError
from gpufleet.wire import Sample
from tests.conftest import gpufleet_here, make_batch, make_sample, need_binary

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_env_and_flags_layer(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("server:\n  port: 9000\nretention:\n  raw_days: 14\n")
    s = load_settings(cfg, environ={"GPUFLEET_PORT": "9100", "GPUFLEET_DATA_DIR": str(tmp_path)})
    assert s.server.port == 9100  # env over file
    assert s.retention.raw_days == 14
    assert s.database_url == str(tmp_path / "gpufleet.duckdb")
    s = load_settings(cfg, overrides={"server": {"port": 9200}}, environ={"GPUFLEET_PORT": "9100"})
    assert s.server.port == 9200  # flag over env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "server:\n  port: 70000\n",
            "g.yaml: server.port: Input should be less than or equal to 65535",
        ),
        ("server:\n  prot: 80\n", "g.yaml: server.prot: unknown setting"),
        (
            "retention:\n  raw_days: -1\n",
            "g.yaml: retention.raw_days: Input should be greater than 0",
        ),
        (
            "ssh:\n  hosts:\n    - {name: a, host: h, user: u}\n",
            "g.yaml: ssh.hosts: Value error, [0].key_file: Field required",
        ),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path, text, expected):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert expected.replace("g.yaml", str(cfg)) in str(err.value.message)


def test_bad_env_var_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings(None, environ={"GPUFLEET_PORT": "eighty"})


def test_every_setting_is_documented():
    import runpy

    doc = (ROOT / "docs" / "configuration.md").read_text()
    generator = runpy.run_path(str(ROOT / "scripts" / "gen_config_docs.py"))
    assert doc == generator["render"](), "run: .venv/bin/python scripts/gen_config_docs.py"
    for section_name, section in Settings.model_fields.items():
        for key in section.annotation.model_fields:
            assert f"`{section_name}.{key}`" in doc, (
                f"{section_name}.{key} is not in docs/configuration.md"
            )
    for var in ENV_VARS:
        assert f"`{var}`" in doc


def test_every_command_has_help():
    top = gpufleet_here("--help")  # the installed entry point, as a process
    assert top.returncode == 0
    assert gpufleet_here("--version").stdout.startswith("gpufleet, version ")
    from click.testing import CliRunner

    from gpufleet.cli import cli

    for name in COMMANDS:  # each command's help in this process (a process each: 1 s apiece)
        assert name in top.stdout
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0, (r.output, r.exception)
        assert "Usage:" in r.stdout


def test_cli_errors_say_error_and_hint(tmp_path):
    r = gpufleet_here("agent", "--server", "http://127.0.0.1:1", env={"GPUFLEET_TOKEN": ""})
    assert r.returncode == 2
    assert r.stderr.startswith("error: no agent token given")
    assert "hint: create one on the server with `gpufleet token create NAME`" in r.stderr
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ingest:\n  max_batch_bytes: 10\n")
    r = gpufleet_here("server", "--config", str(cfg))
    assert r.returncode == 2
    assert f"error: {cfg}: ingest.max_batch_bytes" in r.stderr
    assert "hint:" in r.stderr
    r = gpufleet_here("token", "create", "no spaces please", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "invalid token name" in r.stderr


def test_token_cli_offline(tmp_path):
    data = str(tmp_path / "d")
    token = gpufleet_here("token", "create", "rack1", "--data-dir", data)
    assert token.returncode == 0 and token.stdout.startswith("gft_")
    again = gpufleet_here("token", "create", "rack1", "--data-dir", data)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert gpufleet_here("token", "revoke", "rack1", "--data-dir", data).returncode == 0
    listed = json.loads(gpufleet_here("token", "list", "--json", "--data-dir", data).stdout)
    assert listed[0]["name"] == "rack1" and listed[0]["revoked_at"]
    assert token.stdout.strip() not in (tmp_path / "d" / "gpufleet.duckdb").read_bytes().decode(
        errors="ignore"
    )


def test_token_cli_talks_to_running_server(server):
    r = gpufleet_here("token", "create", "while-running", "--data-dir", str(server.data_dir))
    assert r.returncode == 0, r.stderr
    assert (
        server.post(make_batch(make_sample("tok-host")), token=r.stdout.strip()).status_code == 200
    )
    assert (
        gpufleet_here(
            "token", "revoke", "while-running", "--data-dir", str(server.data_dir)
        ).returncode
        == 0
    )
    assert (
        server.post(make_batch(make_sample("tok-host")), token=r.stdout.strip()).status_code == 403
    )


def test_agent_once_json_prints_a_valid_sample():
    r = gpufleet_here(
        "agent", "--once", "--json", "--fake-gpus", "Tesla V100-SXM2-32GB:2", "--host-name", "n1"
    )
    assert r.returncode == 0, r.stderr
    sample = Sample.model_validate_json(r.stdout)
    assert sample.host == "n1" and len(sample.gpus) == 2
    assert sample.host_metrics.cpu_percent is not None
    assert sample.host_metrics.memory_total_bytes > 0


def test_server_metrics_pass_promtool(server):
    promtool = need_binary("promtool", "promtool (Debian package prometheus)")
    server.post_seen(make_batch(make_sample('we"ird\\host'.replace('"', "").replace("\\", ""))))
    text = httpx.get(server.url + "/metrics").text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r'gpufleet_host_free_gpus\{host="weirdhost"\} 0', text)
    assert 'pid="' not in text and "# TYPE gpufleet_gpu_xid_events_total counter" in text
    head = httpx.head(server.url + "/metrics")
    assert head.status_code == 200 and head.content == b""


def test_store_url_password_never_shown():
    from gpufleet.config import redact_url

    s = load_settings(
        None, overrides={"server": {"database": "postgresql://gf:s3cret@db:5432/x"}}, environ={}
    )
    assert s.database_url_redacted == "postgresql://gf:***@db:5432/x"
    assert redact_url("/var/lib/gpufleet/gpufleet.duckdb") == "/var/lib/gpufleet/gpufleet.duckdb"
