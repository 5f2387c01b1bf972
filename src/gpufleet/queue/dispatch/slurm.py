"""The Slurm dispatcher: ``sbatch --gres=gpu:N`` on the placed node(s), state from the controller.

- **Launch** writes a small batch script (the ``GPUFLEET_*`` variables and the job's command)
  under ``log_dir`` and submits it with ``sbatch --parsable --job-name=gpufleet-<job id>
  --gres=gpu:N --nodelist=... --time=... --output=<log_dir>/gpufleet-<job id>.log --no-requeue``.
  Slurm picks the device indices on the node and sets ``CUDA_VISIBLE_DEVICES`` itself.
- **Idempotent by name**: a launch whose job name Slurm already knows (``squeue --name``, then
  ``sacct --name`` where accounting is on) returns that job's id and submits nothing.
- **State** comes from the controller: while jobs are watched, one ``squeue --json`` call for all
  of them per ``poll_interval_seconds`` (never one call per job), woken at once by a launch or
  a cancel. Slurm has no push channel a client can subscribe to (``strigger`` runs programs on
  the controller's host), so this one call per interval is the event source; docs say so.
  A job that aged out of the controller (``MinJobAge``) is looked up in ``sacct``.
- **Re-attach** finds each job again by its name; **logs** are the tail of the output file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from gpufleet.queue.dispatch.base import (
    DispatchError,
    DispatchEvent,
    EventChannel,
    EventKind,
    Launch,
)
from gpufleet.queue.dispatch.names import safe_name
from gpufleet.queue.dispatch.oom import looks_like_cuda_oom
from gpufleet.queue.dispatch.slurm_script import batch_script, sbatch_args
from gpufleet.queue.dispatch.slurm_state import (
    MAY_NOT_RUN,
    SlurmJob,
    from_sacct_line,
    from_squeue_record,
    outcome,
)

log = logging.getLogger(__name__)

_ALREADY_GONE = re.compile(r"already completing or completed|Invalid job id", re.IGNORECASE)
_LOST_AFTER_MISSES = 3  # consecutive polls in which neither squeue nor sacct knows a job


@dataclass
class _Watched:
    job_id: str
    handle: str  # the Slurm job id
    started: bool = False
    misses: int = 0


class SlurmDispatcher:
    """Runs jobs through ``sbatch`` on a Slurm cluster (the commands must be on ``PATH`` or in
    ``bin_dir``; ``env`` adds variables such as ``SLURM_CONF``). ``log_dir`` holds the batch
    scripts and output files and must be visible from the compute nodes (a shared file system,
    or the dispatcher on the single node)."""

    name = "slurm"

    def __init__(
        self,
        log_dir: Path,
        *,
        partition: str | None = None,
        account: str | None = None,
        env: Mapping[str, str] | None = None,
        bin_dir: Path | None = None,
        poll_interval_seconds: float = 2.0,
        name_prefix: str = "gpufleet-",
        command_timeout_seconds: float = 60.0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.partition = partition
        self.account = account
        self.env = {**os.environ, **(env or {})}
        self.bin_dir = bin_dir
        self.poll_interval_seconds = poll_interval_seconds
        self.name_prefix = name_prefix
        self.command_timeout_seconds = command_timeout_seconds
        self._channel = EventChannel()
        self._watched: dict[str, _Watched] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ended: set[str] = set()  # ending reported: a late cancel does nothing
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accounting = False

    # -- the commands ------------------------------------------------------------------------

    async def _run(self, program: str, *args: str, check: bool = True) -> tuple[int, str, str]:
        path = str(self.bin_dir / program) if self.bin_dir else program
        try:
            proc = await asyncio.create_subprocess_exec(
                path, *args, env=self.env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise DispatchError(f"slurm: cannot run {program}: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DispatchError(
                f"slurm: {program} did not answer within {self.command_timeout_seconds:.0f} s"
            ) from None
        code = proc.returncode or 0
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace").strip()
        if check and code != 0:
            raise DispatchError(f"slurm: {program} {' '.join(args[:1])} failed ({code}): {stderr}")
        return code, stdout, stderr

    async def _squeue_all(self) -> dict[str, SlurmJob]:
        """Every job the controller still holds, one call (22.05's ``--json`` ignores filters)."""
        _, out, _ = await self._run("squeue", "--json")
        try:
            records = orjson.loads(out).get("jobs") or []
        except orjson.JSONDecodeError as exc:
            raise DispatchError(f"slurm: squeue --json printed no JSON: {exc}") from None
        jobs = (from_squeue_record(r) for r in records)
        return {j.slurm_id: j for j in jobs if j.name.startswith(self.name_prefix)}

    async def _sacct(self, *selector: str) -> list[SlurmJob]:
        if not self._accounting:
            return []
        code, out, err = await self._run(
            "sacct", "--noheader", "--parsable2", "--allocations",
            "--format=JobID,JobName,State,ExitCode", "--starttime=now-30days", *selector,
            check=False,
        )  # fmt: skip
        if code != 0:
            log.warning("slurm: sacct failed (%s): %s", code, err)
            return []
        return [j for j in map(from_sacct_line, out.splitlines()) if j]

    async def _find_by_name(self, job_id: str) -> str | None:
        """The newest Slurm job named for ``job_id`` (controller first, then accounting)."""
        name = self.job_name(job_id)
        _, out, _ = await self._run(
            "squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"
        )
        ids = [line.strip() for line in out.splitlines() if line.strip()]
        if not ids:
            ids = [j.slurm_id for j in await self._sacct(f"--name={name}") if j.name == name]
        return max(ids, key=int) if ids else None

    # -- the Dispatcher interface ------------------------------------------------------------

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self._run("squeue", "--noheader", "--format=%i", "--states=all")  # reachable?
        code, _, err = await self._run("sacct", "--noheader", "--allocations", check=False)
        self._accounting = code == 0
        if not self._accounting:
            log.info("slurm: no accounting (%s); finished jobs are read from squeue", err)
        self._task = asyncio.create_task(self._watch(), name="slurm-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def events(self) -> AsyncIterator[DispatchEvent]:
        return self._channel.events()

    def job_name(self, job_id: str) -> str:
        """``gpufleet-<job id>`` (an id that ``--name`` lists could split gets a safe form)."""
        return self.name_prefix + safe_name(job_id, 200)

    def log_file(self, job_id: str) -> Path:
        return self.log_dir / f"{self.job_name(job_id)}.log"

    def _marker(self, job_id: str) -> Path:
        """Written once sbatch has answered: the Slurm id, so a job that aged out of the
        controller (and with no accounting to ask) is never submitted again."""
        return self.log_dir / f"{self.job_name(job_id)}.slurm-id"

    async def launch(self, launch: Launch) -> str:
        async with self._locks.setdefault(launch.job_id, asyncio.Lock()):
            known = self._watched.get(launch.job_id)
            if known is not None:
                return known.handle
            existing = await self._find_by_name(launch.job_id)
            marker = self._marker(launch.job_id)
            if existing is None and marker.exists():
                existing = marker.read_text().strip() or None
            if existing is not None:
                self._watch_job(launch.job_id, existing)
                return existing
            name = self.job_name(launch.job_id)
            script = self.log_dir / f"{name}.sh"
            script.write_text(batch_script(launch))
            args = sbatch_args(launch, script, self.log_file(launch.job_id), name)
            if self.partition:
                args.insert(0, f"--partition={self.partition}")
            if self.account:
                args.insert(0, f"--account={self.account}")
            code, out, err = await self._run("sbatch", *args, check=False)
            if code != 0:
                raise DispatchError(f"slurm: sbatch for job {launch.job_id} failed: {err}")
            handle = out.strip().split(";")[0]
            if not handle.isdigit():
                raise DispatchError(f"slurm: sbatch printed no job id for {launch.job_id}: {out}")
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(handle + "\n")
            tmp.replace(marker)
            self._watch_job(launch.job_id, handle)
            return handle

    async def cancel(self, job_id: str, handle: str | None) -> None:
        async with self._locks.setdefault(job_id, asyncio.Lock()):  # after an in-flight launch
            if job_id in self._ended:
                return  # its ending is already reported
            known = self._watched.get(job_id)
            handle = handle or (known.handle if known else None)
            handle = handle or await self._find_by_name(job_id)
            marker = self._marker(job_id)
            if handle is None and marker.exists():
                handle = marker.read_text().strip() or None
            if handle is None:  # never submitted: nothing to stop
                self._ended.add(job_id)
                self._emit(job_id, EventKind.CANCELLED, None, reason="cancelled")
                return
            code, _, err = await self._run("scancel", handle, check=False)
            if code != 0 and not _ALREADY_GONE.search(err):
                raise DispatchError(f"slurm: scancel {handle} (job {job_id}) failed: {err}")
            self._watch_job(job_id, handle)  # the controller says how it ended

    async def reattach(self, jobs: Sequence[tuple[str, str | None]]) -> None:
        controller = await self._squeue_all()
        by_name: dict[str, SlurmJob] = {}
        for job in sorted(controller.values(), key=lambda j: int(j.slurm_id)):
            by_name[job.name] = job  # the newest wins
        for job_id, handle in jobs:
            name = self.job_name(job_id)
            found = controller.get(handle or "")
            if found is None or found.name != name:
                found = by_name.get(name)
            if found is None:
                matches = [j for j in await self._sacct(f"--name={name}") if j.name == name]
                found = max(matches, key=lambda j: int(j.slurm_id)) if matches else None
            if found is None:
                self._emit(job_id, EventKind.LOST, handle, reason="not known to Slurm")
                continue
            watched = _Watched(job_id, found.slurm_id)
            self._watched[job_id] = watched
            await self._apply(watched, found)
        self._wake.set()

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        return await asyncio.to_thread(_tail, self.log_file(job_id), tail_bytes)

    # -- watching ----------------------------------------------------------------------------

    def _watch_job(self, job_id: str, handle: str) -> None:
        if job_id in self._ended:
            return  # reported already; launching it again returns its handle, nothing more
        self._watched.setdefault(job_id, _Watched(job_id, handle))
        self._wake.set()

    def _emit(self, job_id: str, kind: EventKind, handle: str | None, *, at: float | None = None,
              exit_code: int | None = None, reason: str | None = None) -> None:  # fmt: skip
        at_seconds = at if at is not None else time.time()
        self._channel.emit(DispatchEvent(job_id, kind, at_seconds, handle, exit_code, reason))

    async def _watch(self) -> None:
        while True:
            if not self._watched:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_seconds)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                await self.poll()
            except DispatchError as exc:  # the controller is down: try again next interval
                log.warning("%s", exc)
                await asyncio.sleep(self.poll_interval_seconds)
            except Exception:  # a record we could not read: say so, keep watching
                log.exception("slurm: poll failed")
                await asyncio.sleep(self.poll_interval_seconds)

    async def poll(self) -> None:
        """One ``squeue --json`` call; an event for every watched job whose state moved."""
        if not self._watched:
            return
        controller = await self._squeue_all()
        for watched in list(self._watched.values()):
            job = controller.get(watched.handle)
            if job is None:
                aged = await self._sacct(f"--jobs={watched.handle}")
                job = aged[0] if aged else None
            if job is None:
                watched.misses += 1
                if watched.misses >= _LOST_AFTER_MISSES:
                    self._watched.pop(watched.job_id, None)
                    self._ended.add(watched.job_id)
                    self._emit(watched.job_id, EventKind.LOST, watched.handle,
                               reason="Slurm no longer knows the job")  # fmt: skip
                continue
            watched.misses = 0
            await self._apply(watched, job)

    async def _apply(self, watched: _Watched, job: SlurmJob) -> None:
        ran = job.running or (job.ended and job.start_seconds and job.state not in MAY_NOT_RUN)
        if ran and not watched.started:
            watched.started = True
            self._emit(watched.job_id, EventKind.STARTED, job.slurm_id, at=job.start_seconds)
        if not job.ended:
            return
        self._watched.pop(watched.job_id, None)
        self._ended.add(watched.job_id)
        result = outcome(job)
        kind, reason = result.kind, result.reason
        if kind is EventKind.EXITED and result.exit_code:
            text = await self.logs(watched.job_id, job.slurm_id)
            if looks_like_cuda_oom(text):
                kind, reason = EventKind.FAILED, "oom"
        self._emit(watched.job_id, kind, job.slurm_id, at=job.end_seconds,
                   exit_code=result.exit_code, reason=reason)  # fmt: skip


def _tail(path: Path, tail_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
