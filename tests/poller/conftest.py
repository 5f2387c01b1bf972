"""A real OpenSSH server on loopback for the SSH poller tests.

``sshd_factory(...)`` starts ``/usr/sbin/sshd -D -e`` on a free 127.0.0.1 port with a fresh
host key and client key under ``tmp_path``, logging in as the current user, with ``PATH``
pointing at a directory holding the fake ``nvidia-smi`` from ``fixtures/`` (or not). Without
sshd the tests skip, unless ``GPUFLEET_REQUIRE_SERVICES=1`` (CI), where they fail.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

SSHD = Path("/usr/sbin/sshd")
FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Sshd:
    port: int
    user: str
    key_file: Path
    host_key_file: Path
    tmp: Path
    log_file: Path

    def known_hosts_line(self, key_file: Path | None = None) -> str:
        key = asyncssh.read_private_key(key_file or self.host_key_file)
        public = key.export_public_key().decode().strip()
        return f"[127.0.0.1]:{self.port} {public}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_key(path: Path) -> Path:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(path)
    key.write_public_key(path.with_suffix(".pub"))
    path.chmod(0o600)
    return path


def _require_sshd() -> None:
    if SSHD.exists():
        return
    message = f"{SSHD} not found: install openssh-server"
    if os.environ.get("GPUFLEET_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (GPUFLEET_REQUIRE_SERVICES=1: service tests must run)")
    pytest.skip(message)


def start_sshd(
    root: Path,
    *,
    smi: bool = True,
    mode: str = "ok",
    pids: tuple[int, ...] = (),
    force_command: str | None = None,
) -> tuple[subprocess.Popen[bytes], Sshd]:
    """Start one sshd with its keys and config under ``root``; raise RuntimeError with its log
    when it does not listen (the fixture turns that into a test failure; bench/ uses it too)."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    if smi:
        shutil.copy(FIXTURES / "fake-nvidia-smi", bindir / "nvidia-smi")
        (bindir / "nvidia-smi").chmod(0o755)
    host_key = new_key(root / "host_ed25519")
    client_key = new_key(root / "client_ed25519")
    (root / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    port = free_port()
    env = f"PATH={bindir}:/usr/bin:/bin GPUFLEET_FAKE_SMI_DIR={FIXTURES}"
    env += (
        f" GPUFLEET_FAKE_SMI_MODE={mode} GPUFLEET_FAKE_SMI_PIDS={','.join(map(str, pids)) or '-'}"
    )
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\n"
        "MaxStartups 100\n"
        f"SetEnv {env}\n" + (f"ForceCommand {force_command}\n" if force_command else "")
    )
    log_file = root / "sshd.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log_file.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(
                    f"sshd did not listen on {port}: {log_file.read_text()}"
                ) from None
            time.sleep(0.02)
    return proc, Sshd(port, getpass.getuser(), client_key, host_key, root, log_file)


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[..., Sshd]]:
    _require_sshd()
    procs: list[subprocess.Popen[bytes]] = []

    def start(**kw: object) -> Sshd:
        try:
            proc, sshd = start_sshd(tmp_path / f"sshd{len(procs)}", **kw)  # type: ignore[arg-type]
        except RuntimeError as exc:
            pytest.fail(str(exc))
        procs.append(proc)
        return sshd

    yield start
    for proc in procs:
        stop_sshd(proc)
