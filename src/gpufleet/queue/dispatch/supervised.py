"""The dispatcher core shared by the local and SSH dispatchers: jobs run under the supervisor
(:mod:`gpufleet.queue.dispatch.supervisor`) and are driven through one agent link per host.

What it keeps per job is only what it has seen: each rank's host, pid and exit record. Events:

- ``STARTED`` once every rank runs (handle ``pid@host[,pid@host...]`` in rank order);
- when every rank has ended, one terminal event: ``CANCELLED`` if a cancel was asked, else
  the first failing rank decides (``FAILED`` for ``oom`` / ``time limit`` / ``launch failed``,
  otherwise ``EXITED`` with its code); a rank that fails makes the others be cancelled, as a
  distributed job cannot go on without it;
- ``LOST`` when a rank's state directory is gone or its supervisor died without an exit record
  (the reason says which);
- ``FAILED`` with reason ``host down`` when its host stayed unreachable for
  ``host_down_after_seconds``. A run given up so is cancelled when its host is back, and a new
  launch of the job there first waits until it has stopped: a requeued copy never runs beside
  it.

A launch of a job that runs returns its handle; of a job whose run ended, starts a new run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from gpufleet.queue.dispatch.agentlink import AgentLink, Json, Opener
from gpufleet.queue.dispatch.base import (
    DispatchError,
    DispatchEvent,
    EventChannel,
    EventKind,
    Launch,
)
from gpufleet.queue.dispatch.jobstate import (
    Job,
    Rank,
    job_failures,
    launch_spec,
    parse_handle,
    terminal_event,
)
from gpufleet.queue.dispatch.supervisor import JOB_ID_RE

log = logging.getLogger(__name__)


class SupervisedDispatcher:
    """Launch, watch, cancel and re-attach jobs through per-host supervisor agents. Subclasses
    say how to reach a host's agent (:meth:`_opener`) and which hosts exist."""

    name = "supervised"

    def __init__(
        self,
        *,
        kill_grace_seconds: float = 10.0,
        host_down_after_seconds: float = 60.0,
        request_timeout_seconds: float = 60.0,
    ) -> None:
        self.kill_grace_seconds = kill_grace_seconds
        self.host_down_after_seconds = host_down_after_seconds
        self.request_timeout_seconds = request_timeout_seconds
        self._links: dict[str, AgentLink] = {}
        self._jobs: dict[str, Job] = {}
        self._orphans: dict[str, set[tuple[str, int, int | None]]] = {}  # lost (job, rank, pid)
        self._launching: dict[str, asyncio.Future[str]] = {}
        self._channel = EventChannel()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: deque[str] = deque()
        self.remember_done_jobs = 10_000

    # ---- what a subclass provides ------------------------------------------------------

    def _link_name(self, host: str) -> str:
        """The agent link that serves ``host`` (raise DispatchError for an unknown host)."""
        raise NotImplementedError

    def _link_names(self) -> list[str]:
        raise NotImplementedError

    def _opener(self, link_name: str) -> Opener:
        raise NotImplementedError

    # ---- plumbing ----------------------------------------------------------------------

    def link(self, link_name: str) -> AgentLink:
        existing = self._links.get(link_name)
        if existing is None:
            existing = self._links[link_name] = AgentLink(
                link_name,
                self._opener(link_name),
                on_event=self._on_event,
                on_up=self._on_up,
                on_host_down=self._on_host_down,
                request_timeout_seconds=self.request_timeout_seconds,
                host_down_after_seconds=self.host_down_after_seconds,
            )
        return existing

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, job: Job, event: DispatchEvent) -> None:
        job.phase, job.final = "done", event
        self._channel.emit(event)
        self._done.append(job.job_id)
        while len(self._done) > self.remember_done_jobs:
            # Forgotten jobs are still found (and not re-run) through their state directory.
            old = self._jobs.get(self._done.popleft())
            if old is not None and old.phase == "done":
                del self._jobs[old.job_id]

    def _emit(self, job: Job, kind: EventKind, **kw: Any) -> None:
        at = time.time()
        if kind == EventKind.STARTED:  # the job's own start time, once every rank runs
            at = max((r.started_at for r in job.ranks if r.started_at), default=at)
        event = DispatchEvent(job.job_id, kind, at, **kw)
        if kind == EventKind.STARTED:
            self._channel.emit(event)
        else:
            self._finish(job, event)

    def events(self) -> AsyncIterator[DispatchEvent]:
        return self._channel.events()

    async def start(self) -> None:
        """Open every host's agent channel now (a host that is down is retried)."""
        await asyncio.gather(
            *(self.link(n).ensure() for n in self._link_names()), return_exceptions=True
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(link.close() for link in self._links.values()))

    # ---- what the agents tell us -------------------------------------------------------

    def _observe(self, job: Job, rank: int, state: Json) -> None:
        r = job.ranks[rank]
        r.known = True
        kind = state.get("state")
        if state.get("pid") is not None:
            r.pid = int(state["pid"])
        if state.get("started_at") is not None:
            r.started_at = float(state["started_at"])
        if r.pid is not None and r.early:
            if r.record is None:
                r.record = next((rec for rec in r.early if rec.get("pid") == r.pid), None)
            r.early.clear()
        if kind == "exited" and r.record is None:
            r.record = state["record"]
        elif kind == "vanished":
            r.lost = str(state.get("reason"))
        elif kind == "missing":
            r.lost = f"no state directory for rank {rank} on {r.host}"

    def _on_event(self, link: AgentLink, message: Json) -> None:
        job = self._jobs.get(str(message.get("job")))
        rank = message.get("rank")
        if job is None or job.phase == "done" or not isinstance(rank, int):
            return
        if not 0 <= rank < len(job.ranks) or not self._serves(link, job.ranks[rank].host):
            return
        r, record = job.ranks[rank], message["record"]
        if r.pid is None:  # the reply that names its pid is on its way: match it then
            r.early.append(record)
        elif record.get("pid") == r.pid:  # (else: an earlier run of this job id)
            self._observe(job, rank, {"state": "exited", "record": record})
            self._settle(job)

    def _on_up(self, link: AgentLink) -> None:
        self._spawn(self._refresh(link))

    async def _refresh(self, link: AgentLink) -> None:
        """After (re)connecting: what happened to our jobs there while nobody watched."""
        orphans = self._orphans.pop(link.name, set())
        for job_id, rank, pid in orphans:
            try:
                await link.request("cancel", job=job_id, rank=rank, pid=pid)
            except DispatchError:
                self._orphans.setdefault(link.name, set()).add((job_id, rank, pid))
        queries = [
            (job, i)
            for job in self._jobs.values()
            if job.phase in ("running", "reattaching")
            for i, r in enumerate(job.ranks)
            if r.record is None and self._serves(link, r.host)
        ]
        if queries:
            await self._query(link, queries)

    async def _query(self, link: AgentLink, queries: Sequence[tuple[Job, int]]) -> None:
        try:
            jobs = [[j.job_id, i, j.ranks[i].pid] for j, i in queries]
            reply = await link.request("status", jobs=jobs)
        except DispatchError:
            since = link.down_since  # asked again on reconnect, unless down for too long
            if since is not None and link.down_long(since):
                self._on_host_down(link, link.last_error)
            return
        for (job, i), state in zip(queries, reply["jobs"], strict=True):
            if job.phase != "done":
                self._observe(job, i, state)
        for job in {id(j): j for j, _ in queries}.values():
            self._settle(job)

    def _on_host_down(self, link: AgentLink, why: str) -> None:
        for job in list(self._jobs.values()):
            if job.phase not in ("running", "reattaching"):
                continue
            mine = [
                i
                for i, r in enumerate(job.ranks)
                if r.record is None and self._serves(link, r.host)
            ]
            if not mine:
                continue
            for i in mine:
                self._orphans.setdefault(link.name, set()).add((job.job_id, i, job.ranks[i].pid))
            log.warning(
                "%s: host %s down (%s): job %s failed", self.name, link.name, why, job.job_id
            )
            self._emit(job, EventKind.FAILED, handle=job.handle, reason="host down")
            self._stop_others(job, skip=set(mine))

    def _settle(self, job: Job) -> None:
        """Emit what the ranks' states now imply (at most STARTED then one terminal event)."""
        if job.phase in ("launching", "done"):
            return
        if job.phase == "reattaching":
            if not all(r.known for r in job.ranks):
                return
            job.phase = "running"
            if not all(r.record is not None or r.lost for r in job.ranks):
                self._emit(job, EventKind.STARTED, handle=job.handle)
        lost = [r for r in job.ranks if r.lost and r.record is None]
        if lost:
            self._emit(job, EventKind.LOST, handle=job.handle, reason=lost[0].lost)
            self._stop_others(job, skip=set())
            return
        if all(r.record is not None for r in job.ranks):
            self._finish(job, terminal_event(job))
            return
        if job_failures(job) and not job.stopping:
            job.stopping = True
            self._stop_others(job, skip=set())

    def _stop_others(self, job: Job, skip: set[int]) -> None:
        for i, r in enumerate(job.ranks):
            if r.record is None and i not in skip and not r.lost:
                self._spawn(self._cancel_rank(job, i))

    async def _stop_orphans(self, link: AgentLink, job_id: str) -> None:
        """Before a new run of ``job_id``: stop what is left of a run we declared failed when
        its host went down, and wait until it has ended (a rare path, so it polls)."""
        mine = {o for o in self._orphans.get(link.name, set()) if o[0] == job_id}
        deadline = time.monotonic() + self.kill_grace_seconds + 30.0
        for orphan in mine:
            _, rank, pid = orphan
            state = await link.request("cancel", job=job_id, rank=rank, pid=pid)
            while state.get("state") in ("running", "launching") and state.get("pid") == pid:
                if time.monotonic() > deadline:
                    raise DispatchError(
                        f"launch {job_id}: its previous run on {link.name} (pid {pid}) does not stop"
                    )
                await asyncio.sleep(0.2)
                reply = await link.request("status", jobs=[[job_id, rank, pid]])
                state = reply["jobs"][0]
            self._orphans.get(link.name, set()).discard(orphan)

    async def _cancel_rank(self, job: Job, rank: int, *, quiet: bool = True) -> None:
        """Cancel one rank. ``quiet``: a host that is down gets the cancel when it is back."""
        r = job.ranks[rank]
        link = self.link(self._link_name(r.host))
        try:
            reply = await link.request("cancel", job=job.job_id, rank=rank, pid=r.pid)
        except DispatchError:
            if not quiet:
                raise
            self._orphans.setdefault(link.name, set()).add((job.job_id, rank, r.pid))
            return
        if job.phase != "done":
            self._observe(job, rank, reply)
            self._settle(job)

    # ---- the Dispatcher interface ------------------------------------------------------

    async def launch(self, launch: Launch) -> str:
        """Start the job; if it runs (or is being started) already, return its handle and
        start nothing. A job id whose previous run has ended starts a new run."""
        in_flight = self._launching.get(launch.job_id)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        existing = self._jobs.get(launch.job_id)
        if existing is not None and existing.phase != "done":
            return existing.handle
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._launching[launch.job_id] = future
        try:
            handle = await self._launch(launch)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(handle)
            return handle
        finally:
            del self._launching[launch.job_id]

    async def _launch(self, launch: Launch) -> str:
        if not JOB_ID_RE.match(launch.job_id):
            raise DispatchError(
                f"launch {launch.job_id!r}: job_id must be letters, digits, '_', '.' or '-'"
                " (at most 128, not starting with '.' or '-')"
            )
        specs = [launch_spec(launch, i, self.kill_grace_seconds) for i in range(len(launch.hosts))]
        links = [self.link(self._link_name(h.host)) for h in launch.hosts]
        for link in {id(link): link for link in links}.values():
            await self._stop_orphans(link, launch.job_id)
        job = Job(launch.job_id, [Rank(h.host) for h in launch.hosts], "launching")
        self._jobs[launch.job_id] = job

        async def start_rank(i: int) -> None:
            self._observe(job, i, await links[i].request("launch", spec=specs[i]))

        replies = await asyncio.gather(
            *(start_rank(i) for i in range(len(specs))), return_exceptions=True
        )
        errors = [(i, r) for i, r in enumerate(replies) if isinstance(r, BaseException)]
        if len(errors) == len(replies):
            del self._jobs[launch.job_id]
            i, first = errors[0]
            raise DispatchError(f"launch {launch.job_id} on {launch.hosts[i].host}: {first}")
        job.phase = "running"
        if errors:
            i, first = errors[0]
            self._emit(job, EventKind.FAILED, handle=job.handle, reason=f"launch failed: {first}")
            self._stop_others(job, skip={i for i, _ in errors})
            return job.handle
        if not any((r.record is not None and r.pid is None) or r.lost for r in job.ranks):
            # It ran (even if it has ended already: a job of a few milliseconds).
            self._emit(job, EventKind.STARTED, handle=job.handle)
        if job.cancel_requested:
            self._stop_others(job, skip=set())
        self._settle(job)
        return job.handle

    async def cancel(self, job_id: str, handle: str | None) -> None:
        if job_id not in self._jobs:
            await self.reattach([(job_id, handle)])
        job = self._jobs.get(job_id)
        if job is None or job.phase == "done":
            return
        job.cancel_requested = True
        if job.phase == "launching":
            return  # launch() cancels once it knows the ranks
        results = await asyncio.gather(
            *(
                self._cancel_rank(job, i, quiet=False)
                for i, r in enumerate(job.ranks)
                if r.record is None
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise DispatchError(f"cancel {job_id}: {result}")

    async def reattach(self, jobs: Sequence[tuple[str, str | None]]) -> None:
        by_link: dict[str, list[tuple[Job, int]]] = {}
        searches: list[Job] = []
        for job_id, handle in jobs:
            known = self._jobs.get(job_id)
            if known is not None and known.phase != "reattaching":
                if known.final is not None:
                    self._channel.emit(known.final)
                elif known.phase == "running":
                    self._emit(known, EventKind.STARTED, handle=known.handle)
                continue
            ranks = parse_handle(handle)
            if ranks is None:
                searches.append(Job(job_id, [], "reattaching"))
                continue
            job = Job(job_id, [Rank(h, pid=p) for h, p in ranks], "reattaching")
            self._jobs[job_id] = job
            for i, (host, _) in enumerate(ranks):
                try:
                    name = self._link_name(host)
                except DispatchError as exc:
                    job.ranks[i].known, job.ranks[i].lost = True, str(exc)
                    continue
                by_link.setdefault(name, []).append((job, i))
        await asyncio.gather(
            *(self._query(self.link(n), q) for n, q in by_link.items()),
            *(self._search(job) for job in searches),
        )
        for job in {id(j): j for q in by_link.values() for j, _ in q}.values():
            self._settle(job)

    async def _search(self, job: Job) -> None:
        """Find a job with no handle on every host (a crash between dispatching and storing
        the handle); hosts that cannot be reached are named in the LOST reason."""
        found, down = await self._locate(job.job_id, self._link_names())
        job.ranks = [Rank(host, known=True) for host, _ in found]
        self._jobs[job.job_id] = job
        for i, (_, state) in enumerate(found):
            self._observe(job, i, state)
        if not found:
            where = f" (unreachable: {', '.join(down)})" if down else ""
            self._emit(job, EventKind.LOST, reason=f"not found on any host{where}")
            return
        self._settle(job)

    async def _locate(
        self, job_id: str, link_names: Iterable[str]
    ) -> tuple[list[tuple[str, Json]], list[str]]:
        """Each rank of ``job_id`` found on those links, in rank order, and the links down."""
        names = list(link_names)
        replies = await asyncio.gather(
            *(self.link(n).request("status", jobs=[[job_id, None]]) for n in names),
            return_exceptions=True,
        )
        found: dict[int, tuple[str, Json]] = {}
        down: list[str] = []
        for name, reply in zip(names, replies, strict=True):
            if isinstance(reply, BaseException):
                down.append(name)
                continue
            for state in reply["jobs"]:
                if state.get("rank") is not None and state.get("state") != "missing":
                    found.setdefault(int(state["rank"]), (self._host_of(name, state), state))
        ranks = sorted(found)
        if ranks != list(range(len(ranks))):
            return [], down  # a partial set of ranks is not a job we can follow
        return [found[i] for i in ranks], down

    def _host_of(self, link_name: str, state: Json) -> str:
        return str(state.get("fleet_host") or link_name)

    def _serves(self, link: AgentLink, host: str) -> bool:
        try:
            return self._link_name(host) == link.name
        except DispatchError:
            return False

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        job = self._jobs.get(job_id)
        ranks = [(r.host, r.pid) for r in job.ranks] if job is not None and job.ranks else None
        ranks = ranks or parse_handle(handle)
        if ranks is None:
            found, _ = await self._locate(job_id, self._link_names())
            ranks = [(host, None) for host, _ in found]
        if not ranks:
            raise DispatchError(f"logs {job_id}: the job is not found on any host")
        hosts = [host for host, _ in ranks]
        texts = []
        for rank, (host, pid) in enumerate(ranks):
            link = self.link(self._link_name(host))
            reply = await link.request(
                "logs", job=job_id, rank=rank, pid=pid, tail_bytes=tail_bytes
            )
            if not reply.get("found"):
                raise DispatchError(f"logs {job_id}: no state directory on {host}")
            texts.append(str(reply["text"]))
        if len(texts) == 1:
            return texts[0]
        return "".join(
            f"==> rank {i} on {h} <==\n{t}"
            for i, (h, t) in enumerate(zip(hosts, texts, strict=True))
        )
