"""A waiting queue kept sorted by a static key (arrival time, predicted size, ...)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from gpufleet.sched.simjob import SimJob


class SortedQueue:
    def __init__(self, key: Callable[[SimJob], Any]) -> None:
        self._key = key
        self._keys: list[tuple[Any, int]] = []
        self._jobs: dict[int, SimJob] = {}
        self._job_key: dict[int, tuple[Any, int]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, job: SimJob) -> None:
        entry = (self._key(job), job.job_id)
        bisect.insort(self._keys, entry)
        self._jobs[job.job_id] = job
        self._job_key[job.job_id] = entry

    def remove(self, job: SimJob) -> None:
        entry = self._job_key.pop(job.job_id)
        index = bisect.bisect_left(self._keys, entry)
        del self._keys[index]
        del self._jobs[job.job_id]

    def first(self) -> SimJob | None:
        return self._jobs[self._keys[0][1]] if self._keys else None

    def __iter__(self) -> Iterator[SimJob]:
        """Jobs in key order; a snapshot, so the caller may remove jobs while iterating."""
        jobs = self._jobs
        return iter([jobs[j] for _, j in list(self._keys)])

    def head(self, count: int) -> list[SimJob]:
        jobs = self._jobs
        return [jobs[j] for _, j in self._keys[:count]]
