"""Dispatch latency benchmark (issue 20): submit-to-start on loopback sshd servers. Prints
tables; asserts nothing.

    nice -n 10 .venv/bin/python bench/dispatch_bench.py                  # 60 launches x 3 repeats
    nice -n 10 .venv/bin/python bench/dispatch_bench.py --launches 50 --repeats 1

Every run starts its own sshd servers (``--hosts``, real OpenSSH on 127.0.0.1, as in the tests)
and stops them. The job is ``bash -c 'echo $EPOCHREALTIME > FILE'``: its first instruction
stamps the moment the process actually runs. Rows:

- ``gpufleet ssh, idle``: one launch at a time on an idle fleet (the previous job has ended),
  hosts in turn, through :class:`SshDispatcher` (agent session already open: the steady state).
- ``gpufleet ssh, burst``: ``--launches`` launches at once, spread over the hosts.
- ``gpufleet local, idle``: :class:`LocalDispatcher`, no SSH (the supervisor's own cost).
- ``baseline: ssh per launch``: the naive dispatcher a shell script makes, a new SSH
  connection per launch running ``setsid nohup CMD &`` (asyncssh connect + exec, sequential).
  It tracks nothing after the start, so it has no STARTED event.

Columns (milliseconds from the launch call): ``launch()`` returned, ``STARTED`` seen by an
event consumer, the job process running; p50 / p95 / max over all launches of all repeats,
and the range of the per-repeat p95. Target (issue 20): p95 < 1 s to STARTED, SSH, idle fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.poller.conftest import Sshd, start_sshd, stop_sshd  # noqa: E402

from gpufleet.poller.service import SshHostConfig  # noqa: E402
from gpufleet.queue.dispatch.base import (  # noqa: E402
    Dispatcher,
    EventKind,
    HostGpus,
    Launch,
)
from gpufleet.queue.dispatch.local import LocalDispatcher  # noqa: E402
from gpufleet.queue.dispatch.ssh import SshDispatcher  # noqa: E402

Sample = tuple[float, float | None, float]  # returned, started event, running (seconds)


class Watch:
    """Times every event as a consumer sees it."""

    def __init__(self, d: Dispatcher) -> None:
        self.seen: dict[tuple[str, EventKind], float] = {}
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run(d))

    async def _run(self, d: Dispatcher) -> None:
        async for event in d.events():
            self.seen[(event.job_id, event.kind)] = time.time()
            self.arrived.set()

    async def wait(self, job_id: str, ended: bool) -> float:
        while True:
            for kind in (EventKind.EXITED, EventKind.FAILED) if ended else (EventKind.STARTED,):
                if (job_id, kind) in self.seen:
                    return self.seen[(job_id, kind)]
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 60)


def stamp_job(job_id: str, host: str, stamp: Path) -> Launch:
    script = f"echo $EPOCHREALTIME > {shlex.quote(str(stamp))}"
    return Launch(job_id, "bench", "bench", (HostGpus(host, (0,)),), ("bash", "-c", script))


async def read_stamp(stamp: Path) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = stamp.read_text().strip() if stamp.exists() else ""
        if "." in text:  # one small write: whole once it is there
            return float(text)
        await asyncio.sleep(0.005)
    raise RuntimeError(f"{stamp} never written")


async def run_dispatcher(
    d: Dispatcher, hosts: list[str], n: int, tmp: Path, tag: str, burst: bool
) -> list[Sample]:
    await d.start()
    watch = Watch(d)
    samples: list[Sample] = []

    async def one(i: int) -> Sample:
        stamp = tmp / f"{tag}-{i}.stamp"
        job = stamp_job(f"{tag}-{i}", hosts[i % len(hosts)], stamp)
        t0 = time.time()
        await d.launch(job)
        returned = time.time()
        started = await watch.wait(job.job_id, ended=False)
        running = await read_stamp(stamp)
        await watch.wait(job.job_id, ended=True)
        return returned - t0, started - t0, running - t0

    try:
        await one(-1)  # warm: the agent session is open in the steady state
        if burst:
            samples = list(await asyncio.gather(*(one(i) for i in range(n))))
        else:
            for i in range(n):
                samples.append(await one(i))
    finally:
        watch.task.cancel()
        await d.close()
    return samples


async def run_baseline(servers: dict[str, Sshd], n: int, tmp: Path, tag: str) -> list[Sample]:
    names = list(servers)
    samples: list[Sample] = []
    for i in range(n):
        s = servers[names[i % len(names)]]
        stamp = tmp / f"{tag}-{i}.stamp"
        inner = shlex.quote(f"echo $EPOCHREALTIME > {shlex.quote(str(stamp))}")
        t0 = time.time()
        async with asyncssh.connect(
            "127.0.0.1",
            s.port,
            username=s.user,
            client_keys=[str(s.key_file)],
            known_hosts=None,
            agent_path=None,
            config=[],
        ) as conn:
            # Without the session's SSH_* variables, as the supervisor does (bash would
            # source ~/.bashrc otherwise): the comparison is of dispatch, not of bashrc.
            await conn.run(
                "env -u SSH_CLIENT -u SSH_CONNECTION setsid nohup"
                f" bash -c {inner} >/dev/null 2>&1 </dev/null &"
            )
        returned = time.time()
        running = await read_stamp(stamp)
        samples.append((returned - t0, None, running - t0))
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def column(rep: list[Sample], col: int) -> list[float]:
    return [v for v in (s[col] for s in rep) if v is not None]


def row(name: str, reps: list[list[Sample]]) -> tuple[str, float | None]:
    cells = [name]
    p95_started: float | None = None
    for col in range(3):
        per_rep = [column(rep, col) for rep in reps]
        values = [v for rep in per_rep for v in rep]
        if not values:
            cells.append("-")
            continue
        p95s = [pct(rep, 0.95) * 1000 for rep in per_rep if rep]
        p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
        cells.append(
            f"{p50:6.1f} / {p95:6.1f} / {max(values) * 1000:6.1f}"
            f"  [{min(p95s):.0f}-{max(p95s):.0f}]"
        )
        if col == 1:
            p95_started = p95
    return " | ".join(cells), p95_started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=60, help="launches per repeat (>= 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=4, help="sshd servers on loopback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmpdir:
        tmp = Path(tmpdir)
        procs, servers = [], {}
        try:
            for i in range(args.hosts):
                proc, sshd = start_sshd(tmp / f"sshd{i}", smi=False)
                procs.append(proc)
                servers[f"gpu-{i:02d}"] = sshd
            configs = [
                SshHostConfig(
                    name=n, host="127.0.0.1", port=s.port, user=s.user, key_file=s.key_file
                )
                for n, s in servers.items()
            ]
            names = list(servers)
            results: dict[str, list[list[Sample]]] = {}
            for rep in range(args.repeats):
                state = {n: str(tmp / f"state-{rep}-{n}") for n in names}
                for label, burst in (("gpufleet ssh, idle", False), ("gpufleet ssh, burst", True)):
                    d = SshDispatcher(configs, state_dirs=state)
                    tag = f"r{rep}-{'b' if burst else 's'}"
                    samples = await run_dispatcher(d, names, args.launches, tmp, tag, burst)
                    results.setdefault(label, []).append(samples)
                local = LocalDispatcher(tmp / f"local-{rep}")
                samples = await run_dispatcher(
                    local, ["localhost"], args.launches, tmp, f"r{rep}-l", False
                )
                results.setdefault("gpufleet local, idle", []).append(samples)
                base = await run_baseline(servers, args.launches, tmp, f"r{rep}-n")
                results.setdefault("baseline: ssh per launch", []).append(base)
        finally:
            for proc in procs:
                stop_sshd(proc)
    print(
        f"\nDispatch latency, {args.launches} launches x {args.repeats} repeats,"
        f" {args.hosts} loopback sshd servers (ms from the launch call:"
        " p50 / p95 / max  [range of the per-repeat p95])\n"
    )
    print("| dispatcher | launch() returned | STARTED event | process running |")
    print("|---|---|---|---|")
    p95 = {}
    for label, reps in results.items():
        line, p95[label] = row(label, reps)
        print(f"| {line} |")
    running = {
        label: pct([v for rep in reps for v in column(rep, 2)], 0.95)
        for label, reps in results.items()
    }
    idle = "gpufleet ssh, idle"
    print(
        f"\nprocess running p95, baseline / gpufleet ssh idle:"
        f" {running['baseline: ssh per launch'] / running[idle]:.2f}x"
    )
    verdict = "met" if (p95[idle] or 1e9) < 1000 else "NOT met"
    print(
        f"target p95 < 1000 ms (launch -> STARTED, SSH, idle fleet): {p95[idle]:.1f} ms, {verdict}"
    )


if __name__ == "__main__":
    asyncio.run(main())
