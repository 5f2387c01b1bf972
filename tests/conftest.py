"""Shared fixtures: a real gpufleet server process on loopback, sample builders, tokens."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gpufleet.wire import Batch, Disk, Gpu, GpuProcess, HostMetrics, Sample

REQUIRE_SERVICES = os.environ.get("GPUFLEET_REQUIRE_SERVICES") == "1"

# The tests read English output: a developer's Chinese locale (LANG=zh_CN.UTF-8) must not turn
# the `gpufleet` processes they start Chinese. tests/i18n sets the language it tests.
os.environ["GPUFLEET_LANG"] = "en"


# -- the order of the files: the longest first -------------------------------------------------
# `make test` runs whole files on two workers (-n 2 --dist loadfile). xdist's own order (the
# files with the most tests first) leaves the long end-to-end files, each a test or two, for
# the end, where one worker runs them alone while the other is idle. So (with
# --no-loadscope-reorder in pyproject's addopts) the files run in this order: the longest
# measured ones, then the other files with slow tests, then the rest, as collected. Only the
# order changes, never what runs. The figures: `pytest --durations=0` (docs/testing.md).
LONGEST_FIRST = (
    "tests/web/test_first_hour.py",
    "tests/test_reliability.py",
    "tests/queue/test_cli.py",
    "tests/queue/test_dispatch_slurm.py",
    "tests/alerts/test_server.py",
    "tests/test_ingest_workers.py",
    "tests/recommend/test_server.py",
    "tests/accounts/test_browser.py",
    "tests/demo/test_demo_e2e.py",
)


def pytest_collection_modifyitems(config, items):
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path))
        return (1, 0) if path in slow_files else (2, 0)

    items.sort(key=rank)  # stable: the collection's order within each rank


def need_binary(path: str, what: str) -> str:
    """The path of a binary a test needs; in CI a missing one fails the test, else it skips."""
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if found:
        return found
    message = f"{what} ({path}) is not installed; `make setup` installs it"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def need_file(path: Path, what: str) -> Path:
    """A data file a test needs (the shared traces beside the checkout); in CI a missing one
    fails the test, else it skips."""
    if path.is_file():
        return path
    message = f"{what} is not at {path} (set GPUFLEET_TRACE, or put ../shared beside the checkout)"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (GPUFLEET_REQUIRE_SERVICES=1: tests on shared data must run)")
    pytest.skip(message)


def wait_for(check, timeout: float = 20.0, what: str = "condition", step: float = 0.2):
    """``check()``'s first truthy value, asked every ``step`` s; HTTP errors (a server still
    starting) count as "not yet". A generous deadline, never a speed claim."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def stop_demo(proc: subprocess.Popen, wait: float = 30.0) -> int | str:
    """Ctrl-C a ``gpufleet demo`` process as a user would; kill it if it does not stop in
    ``wait`` s. Its exit code, or ``"killed"``."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpufleet(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60, **kw,
    )  # fmt: skip


def gpufleet_here(
    *args: str, env: dict | None = None, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``gpufleet ARGS`` in this process, as ``main()`` runs it (the language from the
    environment and the config, click's help translated), through click's runner: for tests of
    what a command says and does, where the process boundary is not what is tested (a process
    of its own costs a second of imports each time). Same result shape as ``gpufleet``; an
    exception the command let escape is appended to stderr as a traceback would be."""
    import contextlib
    import traceback

    from click.testing import CliRunner

    from gpufleet import i18n
    from gpufleet.cli import cli, configured_language
    from gpufleet.i18n import clickhelp

    environ = {**os.environ, **(env or {})}
    token = i18n.current.set(i18n.cli_language(environ, configured_language(args, environ)))
    try:
        clickhelp.install()
        with contextlib.chdir(cwd) if cwd else contextlib.nullcontext():
            r = CliRunner(env=env).invoke(cli, list(args), prog_name="gpufleet", input=input)
    finally:
        i18n.current.reset(token)
    stderr = r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        stderr += "".join(traceback.format_exception(r.exception))
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, stderr)


def make_sample(
    host: str = "gpu01", ts: float | None = None, gpus: int = 8, procs: int = 8
) -> Sample:
    ts = time.time() if ts is None else ts
    return Sample(
        host=host,
        ts=ts,
        host_metrics=HostMetrics(
            cpu_percent=42.0,
            load1=3.2,
            load5=2.9,
            load15=2.5,
            memory_total_bytes=512 * 2**30,
            memory_used_bytes=100 * 2**30,
            disks=[Disk(mount="/", total_bytes=2**40, used_bytes=2**39)],
            net_rx_bytes_per_second=1e6,
            net_tx_bytes_per_second=2e5,
            uptime_seconds=1e5,
            users=["alice", "bob"],
        ),
        gpus=[
            Gpu(
                index=i,
                uuid=f"GPU-{host}-{i}",
                name="NVIDIA A100-SXM4-80GB",
                utilization_gpu_percent=float(10 * i % 100),
                memory_used_bytes=(i + 1) * 2**30,
                memory_total_bytes=80 * 2**30,
                temperature_celsius=50.0 + i,
                power_watts=250.0,
                power_limit_watts=400.0,
                fan_percent=None,
                sm_clock_hertz=1.41e9,
                pstate=0,
                ecc_uncorrected_volatile=0,
            )
            for i in range(gpus)
        ],
        processes=[
            GpuProcess(
                pid=1000 + i,
                gpu_index=i % gpus,
                user=f"user{i % 3}",
                uid=1000 + i % 3,
                command="python train.py --lr 0.1",
                started_at=ts - 3600,
                gpu_memory_bytes=2**30,
            )
            for i in range(procs if gpus else 0)
        ],
    )


def make_batch(
    *samples: Sample, batch_id: str | None = None, sent_at: float | None = None
) -> Batch:
    samples = samples or (make_sample(),)
    return Batch(
        batch_id=batch_id or f"test-{uuid.uuid4().hex}",
        sent_at=sent_at if sent_at is not None else max(s.ts for s in samples),
        samples=list(samples),
    )


@dataclass
class ServerProc:
    data_dir: Path
    port: int
    token: str
    proc: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gpufleet.duckdb"

    def start(self, wait: float = 180.0) -> None:  # generous: the suite runs on busy machines
        with open(self.data_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpufleet", "server", "--data-dir", str(self.data_dir),
                 "--port", str(self.port), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.data_dir / 'server.log').read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz within {wait:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a power cut of the process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_seen(self, latest: dict[str, float], timeout: float = 60.0) -> None:
        """Wait until live state shows each host's sample of time ``latest[host]``. An ingest
        worker acknowledges a batch once it is in its log; the server moves the log into live
        state and the store a few times a second (server/workers/pool.py), so a page opened
        straight after the acknowledgement may not list the batch yet."""

        def seen() -> bool:
            hosts = httpx.get(self.url + "/api/v1/hosts", timeout=30).json()["hosts"]
            got = {h["name"]: h["last_seen"] for h in hosts}
            return all(got.get(h, float("-inf")) >= ts - 1e-3 for h, ts in latest.items())

        wait_for(seen, timeout, f"the server to show {sorted(latest)}")

    def post_seen(self, batch: Batch) -> httpx.Response:
        """``post`` a batch that must be stored, then ``wait_seen`` its samples."""
        r = self.post(batch)
        assert r.status_code == 200, r.text
        latest: dict[str, float] = {}
        for s in batch.samples:
            latest[s.host] = max(latest.get(s.host, float("-inf")), s.ts)
        self.wait_seen(latest)
        return r

    def post(self, batch: Batch | bytes | str, token: str | None = None, **kw) -> httpx.Response:
        body = batch.model_dump_json() if isinstance(batch, Batch) else batch
        headers = {"Content-Type": "application/json"}
        if token != "":
            headers["Authorization"] = f"Bearer {token or self.token}"
        headers.update(kw.pop("headers", {}))
        return httpx.post(
            self.url + "/api/v1/ingest", content=body, headers=headers, timeout=30, **kw
        )


def create_token(data_dir: Path, name: str) -> str:
    """``gpufleet token create NAME --data-dir DATA_DIR``, run in this process (click's runner:
    the same command and environment; a process of its own cost a second of imports for every
    server a test starts). tests/test_config_cli.py runs the command as a process."""
    from click.testing import CliRunner

    from gpufleet.cli import cli

    r = CliRunner().invoke(cli, ["token", "create", name, "--data-dir", str(data_dir)])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout.strip()


@pytest.fixture
def server_factory(tmp_path):
    made: list[ServerProc] = []

    def make(*extra_args: str, start: bool = True) -> ServerProc:
        data = tmp_path / f"data{len(made)}"
        data.mkdir(parents=True, exist_ok=True)  # a PostgreSQL store makes no file in it
        token = create_token(data, "test-agent")
        srv = ServerProc(data, free_port(), token, extra_args=extra_args)
        if start:
            srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def server(server_factory) -> ServerProc:
    return server_factory()


# -- the browser: one Chromium per test module ------------------------------------------------
# Playwright's sync API runs an event loop in this thread while it is started: one instance at
# a time, stopped at the end of the module, so later tests (asyncio.run) find no running loop.

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """The system's Chromium (Debian package) driven by Playwright; never a downloaded one."""
    path = need_binary(CHROMIUM, "Chromium (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need_binary("playwright-python-package-missing", "the Python package playwright")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


# -- PostgreSQL: the real server on this machine -------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get(
    "GPUFLEET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def need_postgres() -> str:
    """The admin URL of a reachable PostgreSQL ($GPUFLEET_TEST_POSTGRES); in CI an unreachable
    one fails the test, else it skips."""
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:  # the driver missing or the server down: same answer
        message = (
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({type(exc).__name__}: "
            f"{str(exc).strip()[:200]}); start it or set GPUFLEET_TEST_POSTGRES"
        )
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database for one test (dropped after it)."""
    import urllib.parse

    import psycopg

    admin_url = need_postgres()
    name = f"gpufleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
