"""The SSH poller against a real OpenSSH server on loopback (see conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpufleet.poller.service import SshHostConfig, SshPoller
from gpufleet.poller.ssh import SshHostClient, poll_script
from gpufleet.wire import Batch, Sample

from .conftest import Sshd, free_port, new_key

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

Factory = Callable[..., Sshd]


@pytest.fixture
def gpu_job() -> Iterator[subprocess.Popen[bytes]]:
    """A real process for the fake nvidia-smi to report as a GPU process."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def config(sshd: Sshd, **overrides: object) -> SshHostConfig:
    values: dict[str, object] = {
        "name": "gpu-test-01",
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "key_file": sshd.key_file,
        "interval_seconds": 0.5,
        "timeout_seconds": 5,
    }
    values.update(overrides)
    return SshHostConfig.model_validate(values)


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[Batch] = []
        self.fail_first = fail_first
        self.calls = 0

    async def __call__(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("store is down")
        self.batches.append(Batch.model_validate_json(batch.model_dump_json()))


def poll_once(cfg: SshHostConfig) -> tuple[Sample | None, dict[str, object], Recorder]:
    sink = Recorder()

    async def main() -> tuple[Sample | None, dict[str, object]]:
        poller = SshPoller([cfg], sink)
        try:
            sample = await poller.poll_once(cfg.name)
            return sample, poller.status()[cfg.name]
        finally:
            await poller.stop()

    sample, status = asyncio.run(main())
    return sample, status, sink


def test_good_poll(sshd_factory: Factory, gpu_job: subprocess.Popen[bytes]) -> None:
    sshd = sshd_factory(pids=(gpu_job.pid, 1))
    before = time.time()
    sample, status, sink = poll_once(config(sshd))
    assert sample is not None, status
    assert status["ok"] is True and status["reason"] is None, status
    assert status["reachable"] is True and status["last_ok"] == status["last_poll"]
    assert 0 < float(status["latency_seconds"]) < 5  # type: ignore[arg-type]

    (batch,) = sink.batches
    assert batch.source == "ssh" and batch.samples[0] == sample
    assert sample.host == "gpu-test-01"
    assert sample.errors == []
    assert len(sample.gpus) == 8 and sample.facts.driver_version == "535.129.03"
    hm = sample.host_metrics
    assert hm.memory_total_bytes and hm.memory_available_bytes and hm.cpu_count
    assert hm.load1 is not None and hm.uptime_seconds and hm.disks
    assert hm.cpu_percent is None  # first poll
    assert sample.facts.hostname == socket.gethostname()
    assert sample.facts.kernel and sample.facts.boot_time

    job = next(p for p in sample.processes if p.pid == gpu_job.pid)
    assert job.gpu_index == 0 and job.gpu_memory_bytes == 40536 * 2**20
    assert job.user == sshd.user and job.command == "sleep 120"
    assert job.started_at is not None and before - 5 <= job.started_at <= time.time()
    assert next(p for p in sample.processes if p.pid == 1).gpu_index == 1


def test_connection_reused_and_rates_on_second_poll(sshd_factory: Factory) -> None:
    sshd = sshd_factory()
    cfg = config(sshd)
    sink = Recorder(fail_first=1)  # a failing sink must not stop the polling

    async def main() -> tuple[SshPoller, int]:
        poller = SshPoller([cfg], sink)
        await poller.start()
        deadline = time.monotonic() + 15
        while len(sink.batches) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        connects = poller._hosts[cfg.name].client.connects
        await poller.stop()
        return poller, connects

    poller, connects = asyncio.run(main())
    assert sink.calls >= 3 and len(sink.batches) >= 2
    assert connects == 1
    assert poller.status()[cfg.name]["sink_error"] is None
    assert sink.batches[-1].samples[0].host_metrics.cpu_percent is not None
    ids = [b.batch_id for b in sink.batches]
    assert len(set(ids)) == len(ids)


def test_reconnects_after_connection_drops(sshd_factory: Factory) -> None:
    sshd = sshd_factory()
    client = SshHostClient(
        host="127.0.0.1", port=sshd.port, user=sshd.user, key_file=sshd.key_file,
        timeout_seconds=5,
    )  # fmt: skip

    async def main() -> None:
        first = await client.poll()
        assert first.reconnected and client.connects == 1
        assert client._conn is not None
        client._conn.abort()  # the network dropped it
        await asyncio.sleep(0.05)
        second = await client.poll()
        assert second.reconnected and client.connects == 2
        third = await client.poll()
        assert not third.reconnected and client.connects == 2
        await client.close()

    asyncio.run(main())


def test_wrong_key_is_auth(sshd_factory: Factory, tmp_path: Path) -> None:
    sshd = sshd_factory()
    sample, status, sink = poll_once(config(sshd, key_file=new_key(tmp_path / "other")))
    assert sample is None and sink.calls == 0
    assert status["kind"] == "auth" and status["ok"] is False and status["reachable"] is False
    assert "auth failed" in str(status["reason"])


def test_wrong_user_is_auth(sshd_factory: Factory) -> None:
    sshd = sshd_factory()
    _, status, _ = poll_once(config(sshd, user="nobody-here"))
    assert status["kind"] == "auth", status


def test_closed_port_is_refused() -> None:
    cfg = SshHostConfig(name="h", host="127.0.0.1", port=free_port(), user="u", key_file="/k")
    client = cfg.client()
    client._key = new_key_object()
    _, status, _ = poll_with_client(cfg, client)
    assert status["kind"] == "refused", status
    assert "connection refused" in str(status["reason"])


def test_unresolvable_name_is_dns() -> None:
    cfg = SshHostConfig(name="h", host="no-such-host.invalid", user="u", key_file="/k")
    client = cfg.client()
    client._key = new_key_object()
    _, status, _ = poll_with_client(cfg, client)
    assert status["kind"] == "dns", status
    assert "DNS lookup failed" in str(status["reason"])


def test_silent_host_is_timeout() -> None:
    with socket.socket() as blackhole:  # accepts TCP (backlog) but never speaks SSH
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        cfg = SshHostConfig(
            name="h", host="127.0.0.1", port=port, user="u", key_file="/k", timeout_seconds=1
        )
        client = cfg.client()
        client._key = new_key_object()
        _, status, _ = poll_with_client(cfg, client)
    assert status["kind"] == "timeout", status
    assert str(status["reason"]).startswith("timeout")


def test_missing_key_file_is_reported(tmp_path: Path) -> None:
    cfg = SshHostConfig(name="h", host="127.0.0.1", user="u", key_file=tmp_path / "nope")
    _, status, _ = poll_once(cfg)
    assert status["kind"] == "key" and "cannot read SSH key file" in str(status["reason"])


def test_host_key_mismatch(sshd_factory: Factory, tmp_path: Path) -> None:
    sshd = sshd_factory()
    good = tmp_path / "known_hosts_good"
    good.write_text(sshd.known_hosts_line())
    sample, status, _ = poll_once(config(sshd, known_hosts=good))
    assert sample is not None and status["ok"], status
    bad = tmp_path / "known_hosts_bad"
    bad.write_text(sshd.known_hosts_line(new_key(tmp_path / "impostor")))
    sample, status, _ = poll_once(config(sshd, known_hosts=bad))
    assert sample is None and status["kind"] == "host_key", status
    assert "host key mismatch" in str(status["reason"])


def test_nvidia_smi_missing_still_reports_host(sshd_factory: Factory) -> None:
    sshd = sshd_factory(smi=False)
    sample, status, sink = poll_once(config(sshd))
    assert sample is not None and len(sink.batches) == 1
    assert sample.gpus == [] and sample.host_metrics.memory_total_bytes
    assert sample.errors == ["nvidia-smi missing: not found in PATH on the host; no GPU data"]
    assert status["ok"] is False and status["reachable"] is True
    assert status["kind"] == "nvidia-smi" and "nvidia-smi missing" in str(status["reason"])


def test_nvidia_smi_hung_still_reports_host(sshd_factory: Factory) -> None:
    sshd = sshd_factory(mode="hang")
    sample, status, _ = poll_once(config(sshd, timeout_seconds=3))  # nvidia-smi gets 1 s
    assert sample is not None and sample.gpus == []
    assert sample.host_metrics.memory_total_bytes and sample.host_metrics.load1 is not None
    assert sample.errors == ["nvidia-smi hung: --query-gpu gave no answer (killed after 1 s)"]
    assert "nvidia-smi hung" in str(status["reason"])


def test_poll_timeout_mid_command_keeps_what_arrived(sshd_factory: Factory) -> None:
    # nvidia-smi's own limit (10 s) is longer than the poll's (1.5 s): the poll is cut off,
    # the host metrics printed before nvidia-smi still make a sample.
    sshd = sshd_factory(mode="hang")
    client = SshHostClient(
        host="127.0.0.1", port=sshd.port, user=sshd.user, key_file=sshd.key_file,
        timeout_seconds=1.5, smi_timeout_seconds=10,
    )  # fmt: skip
    cfg = config(sshd)
    sample, status, _ = poll_with_client(cfg, client)
    assert sample is not None
    assert "nvidia-smi hung: no answer before the poll timed out" in sample.errors
    assert status["kind"] == "nvidia-smi" and status["reachable"] is True
    assert sample.host_metrics.memory_total_bytes


def test_nvidia_smi_failing(sshd_factory: Factory) -> None:
    sshd = sshd_factory(mode="fail")
    sample, status, _ = poll_once(config(sshd))
    assert sample is not None and sample.gpus == []
    assert status["kind"] == "nvidia-smi"
    assert sample.errors[0].startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")


def test_remote_command_failing_is_exit(sshd_factory: Factory) -> None:
    # what an account with a nologin shell, or a forced command, looks like
    sshd = sshd_factory(force_command="echo 'This account is currently not available.' >&2; exit 1")
    sample, status, sink = poll_once(config(sshd))
    assert sample is None and sink.calls == 0
    assert status["kind"] == "exit" and status["reachable"] is True
    assert "exit status 1" in str(status["reason"])
    assert "This account is currently not available." in str(status["reason"])


def test_status_before_first_poll() -> None:
    cfg = SshHostConfig(name="h", host="gpu1", user="u", key_file="/k")
    status = SshPoller([cfg], Recorder()).status()["h"]
    assert status["ok"] is False and status["reason"] == "not polled yet"
    assert status["last_poll"] is None and status["last_ok"] is None
    with pytest.raises(ValueError, match="listed twice"):
        SshPoller([cfg, cfg], Recorder())


def test_script_is_posix_sh() -> None:
    # dash is stricter than bash; a syntax error would break every poll
    subprocess.run(["sh", "-n"], input=poll_script(4).encode(), check=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "bad name", "not a valid host name"),
        ("host", "root@gpu1", "not a host address"),
        ("port", 70000, "between 1 and 65535"),
        ("user", "", "not a valid Unix user name"),
        ("interval_seconds", 0, "between 0.5 and 86400"),
        ("timeout_seconds", 0, "between 1 and 600"),
        ("extra", 1, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_are_clear(field: str, value: object, message: str) -> None:
    values: dict[str, object] = {"name": "h", "host": "gpu1", "user": "u", "key_file": "~/k"}
    values[field] = value
    with pytest.raises(ValidationError) as err:
        SshHostConfig.model_validate(values)
    assert err.value.errors()[0]["loc"] == (field,)
    assert message in str(err.value)


def test_config_defaults() -> None:
    cfg = SshHostConfig(name="h", host="gpu1", user="u", key_file="~/.ssh/id_ed25519")
    assert (cfg.port, cfg.interval_seconds, cfg.timeout_seconds) == (22, 5.0, 10.0)
    assert cfg.known_hosts is None and not str(cfg.key_file).startswith("~")


# ---- helpers


def new_key_object() -> object:
    import asyncssh

    return asyncssh.generate_private_key("ssh-ed25519")


def poll_with_client(
    cfg: SshHostConfig, client: SshHostClient
) -> tuple[Sample | None, dict[str, object], Recorder]:
    sink = Recorder()

    async def main() -> tuple[Sample | None, dict[str, object]]:
        poller = SshPoller([cfg], sink)
        poller._hosts[cfg.name].client = client
        try:
            sample = await poller.poll_once(cfg.name)
            return sample, poller.status()[cfg.name]
        finally:
            await poller.stop()

    sample, status = asyncio.run(main())
    return sample, status, sink
