"""Run a fleet of simulated hosts in one process, pushing to a gpufleet server.

Each host collects on its own phase of the interval (the fleet's requests are spread out, as
real agents' are), writes the batch to its own :class:`Spool` and delivers it with its own
:class:`Sender` (keep-alive connection, token auth, gzip), exactly as ``gpufleet agent`` does;
a batch the server does not take stays in the spool and goes with the next round. One thread
keeps time and moves the trace replay forward; a small pool of workers does the rounds.

    engine = FleetEngine(build_fleet(500), load_trace(), "http://127.0.0.1:8000", token,
                         spool_root=Path("/tmp/fleet-spool"))
    engine.start()
    ...
    engine.stop()
"""

from __future__ import annotations

import heapq
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpufleet import __version__
from gpufleet.agent.push import Sender
from gpufleet.agent.spool import Spool
from gpufleet.demo.faults import FaultInjector
from gpufleet.demo.fleet import HostSpec
from gpufleet.demo.replay import Replay
from gpufleet.demo.simhost import SimHost
from gpufleet.demo.trace import TraceJob
from gpufleet.wire import Batch, Source

log = logging.getLogger("gpufleet.demo")

OFFLINE_PERIOD = 420.0  # the offline-prone host is down 100 s of every 7 minutes
OFFLINE_FOR = 100.0
OFFLINE_FIRST = 90.0  # first outage this long after the start


def is_offline(elapsed: float) -> bool:
    """Whether the offline-prone host is down ``elapsed`` seconds after the fleet started."""
    age = elapsed - OFFLINE_FIRST
    return age >= 0 and age % OFFLINE_PERIOD < OFFLINE_FOR


@dataclass
class _Slot:
    sim: SimHost
    spool: Spool
    sender: Sender
    seq: int = 0
    busy: bool = False
    offline: bool = False
    sent: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class EngineStats:
    rounds: int = 0
    skipped_rounds: int = 0  # a host's previous round was still running
    batches_sent: int = 0
    send_failures: int = 0


class FleetEngine:
    def __init__(
        self,
        hosts: list[HostSpec],
        trace: list[TraceJob],
        server_url: str,
        token: str,
        *,
        spool_root: str | Path,
        interval: float = 5.0,
        speed: float = 60.0,
        seed: int = 0,
        start: float | None = None,
        load: float = 0.6,
        workers: int | None = None,
        log_every: float = 30.0,
        source: Source = "replay",
        faults: FaultInjector | None = None,
    ) -> None:
        if interval <= 0 or speed <= 0:
            raise ValueError("interval and speed must be positive")
        self.interval = interval
        self.speed = speed
        self.source = source
        self.faults = faults  # fault injection (gpufleet.demo.faults), times from wall0
        self.log_every = log_every
        self.replay = Replay(hosts, trace, seed=seed, start=start, load=load)
        now = time.time()
        root = Path(spool_root)
        self.slots: list[_Slot] = []
        for spec in hosts:
            spool = Spool(root / spec.name, max_bytes=32 * 2**20, max_age_seconds=3600)
            sender = Sender(spool, server_url, token, timeout_seconds=10.0)
            self.slots.append(_Slot(SimHost(spec, seed=seed, interval=interval, now=now),
                                    spool, sender))  # fmt: skip
        self.stats = EngineStats()
        self._lock = threading.Lock()  # guards the replay
        self._stop = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(32, max(2, len(hosts) // 16)),
            thread_name_prefix="replay-host",
        )
        self._run_id = secrets.token_hex(4)
        self.queued: Callable[[], list[Any]] | None = None  # the live queue's replay runs
        self._queued_keys: set[str] = set()
        self.wall0 = now

    # -- time ---------------------------------------------------------------------------

    def trace_time(self, wall: float) -> float:
        return self.replay.start + (wall - self.wall0) * self.speed

    def wall_of(self, trace_time: float) -> float:
        return self.wall0 + (trace_time - self.replay.start) / self.speed

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        self.wall0 = time.time()
        self._thread = threading.Thread(target=self._loop, name="replay-clock", daemon=True)
        self._thread.start()
        r = self.replay
        models: dict[str, int] = {}
        for s in r.specs:
            key = f"{s.gpu_count}x {s.gpu.name}"
            models[key] = models.get(key, 0) + 1
        log.info(
            "replay fleet: %d hosts (%s), %d GPUs; trace from %s at %gx (1 s = %s of trace), "
            "each trace job played x%.2f for a %.0f%% load, %d GPUs busy now; a sample per "
            "host every %g s", len(self.slots),
            ", ".join(f"{n} with {k}" for k, n in sorted(models.items())),
            sum(s.gpu_count for s in r.specs), _fmt_time(r.start), self.speed,
            _fmt_span(self.speed), r.multiplicity, 100 * r.load, r.busy_gpus(), self.interval,
        )  # fmt: skip
        flaky = [s.name for s in r.specs if s.flaky_gpu is not None]
        offline = [s.name for s in r.specs if s.goes_offline]
        if flaky or offline:
            log.info("replay fleet: %s has a flaky GPU; %s goes offline now and then",
                     ", ".join(flaky) or "none", ", ".join(offline) or "none")  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """Stop collecting; rounds in flight finish. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for slot in self.slots:
            slot.sender.stop_event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for slot in self.slots:
            slot.sender.close()
            slot.sim.close()

    def _loop(self) -> None:
        n = len(self.slots)
        spread = min(self.interval, 1.0)  # the first round of every host within a second
        heap = [(self.wall0 + spread * i / n, i, 0) for i in range(n)]
        heapq.heapify(heap)
        next_log = self.wall0 + self.log_every
        while not self._stop.is_set():
            due, i, k = heap[0]
            delay = due - time.time()
            if delay > 0 and self._stop.wait(min(delay, 1.0)):
                break
            if due > time.time():
                continue
            heapq.heapreplace(heap, (self.wall0 + (k + 1 + i / n) * self.interval, i, k + 1))
            now = time.time()
            with self._lock:
                if self.queued is not None:
                    self._sync_queued()
                self.replay.advance(self.trace_time(now))
            slot = self.slots[i]
            with slot.lock:
                if slot.busy:
                    self.stats.skipped_rounds += 1
                    continue
                slot.busy = True
            self._pool.submit(self._round, slot, now)
            if now >= next_log:
                next_log = now + self.log_every
                self._log_progress()

    def _sync_queued(self) -> None:
        """Jobs of the live queue (the replay dispatcher's runs) hold GPUs of the replayed
        hosts like replayed jobs do, so the overview shows them (called under the lock)."""
        assert self.queued is not None
        now = self.trace_time(time.time())
        live = set()
        for run in self.queued():
            for rank, (host, gpus) in enumerate(run.hosts):
                key = f"queue-{run.job_id}-{rank}"
                live.add(key)
                if key not in self._queued_keys:
                    self._queued_keys.add(key)
                    self.replay.admit(key, host, gpus, run.user,
                                      self.trace_time(run.started_seconds),
                                      self.trace_time(run.ends_seconds))  # fmt: skip
        for key in self._queued_keys - live:
            self._queued_keys.discard(key)
            self.replay.withdraw(key, now)

    def _round(self, slot: _Slot, wall: float) -> None:
        try:
            spec = slot.sim.spec
            if spec.goes_offline:
                down = is_offline(wall - self.wall0)
                if down != slot.offline:
                    slot.offline = down
                    log.info("replay: %s %s", spec.name,
                             "goes offline (stops reporting)" if down else "is back")  # fmt: skip
                if down:
                    return
            faults, rel = self.faults, wall - self.wall0
            if faults is not None:
                faults.begin(slot.sim, rel)
                if not faults.sends(spec.name, rel):  # powered off, or the agent is dead
                    return
            with self._lock:
                jobs = self.replay.jobs_on(spec.index)
                t = self.trace_time(wall)
            slot.sim.apply(self.replay, jobs, t, wall, self.wall_of)
            if faults is not None:
                faults.hold(slot.sim, rel)
            sample = slot.sim.collect()
            skew = faults.clock_offset(spec.name, rel) if faults is not None else 0.0
            if skew:
                sample = sample.model_copy(update={"ts": sample.ts + skew})
            slot.seq += 1
            batch = Batch(
                batch_id=f"replay-{self._run_id}-{spec.index}-{slot.seq}", source=self.source,
                agent_version=__version__, sent_at=time.time() + skew, samples=[sample],
            )  # fmt: skip
            slot.spool.put(batch.batch_id, batch.model_dump_json().encode())
            self.stats.rounds += 1
            if faults is not None and not faults.delivers(spec.name, rel):
                return  # the network is cut: the spool keeps it for later
            while not self._stop.is_set():
                result = slot.sender.send_one()
                if result is None:
                    break
                if result is False:
                    self.stats.send_failures += 1
                    break
                self.stats.batches_sent += 1
        except Exception:
            log.exception("replay: round of %s failed", slot.sim.spec.name)
        finally:
            with slot.lock:
                slot.busy = False

    def _log_progress(self) -> None:
        r = self.replay
        with self._lock:
            running, busy, queued = len(r.jobs), r.busy_gpus(), r.waiting
            st = r.stats
            log.info(
                "replay: trace time %s, %d jobs on %d/%d GPUs, %d waiting; %d started, "
                "%d ended, %d skipped (too big), %d gave up waiting; %d batches sent%s",
                _fmt_time(r.now), running, busy, r.capacity, queued, st.started, st.ended,
                st.skipped_too_big, st.dropped_waiting, self.stats.batches_sent,
                f", {self.stats.send_failures} failed sends" if self.stats.send_failures else "",
            )  # fmt: skip


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _fmt_span(speed: float) -> str:
    if speed >= 3600:
        return f"{speed / 3600:g} h"
    if speed >= 60:
        return f"{speed / 60:g} min"
    return f"{speed:g} s"
