"""Waiting queues kept sorted: a sorted list in blocks, and a queue of jobs by a static key.

A queue can hold tens of thousands of jobs (the whole Philly trace at load 1), and preempted jobs
go back in near the front: one flat list with ``bisect.insort`` moves the whole tail on every
insert. ``BlockList`` keeps the same order in blocks of at most ``2 x block`` items, so an insert
or a removal moves one block, and the front of the queue is the front of the first block.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from gpufleet.sched.simjob import SimJob


class BlockList:
    """A sorted list of distinct, comparable items (tuples here), stored in sorted blocks."""

    def __init__(self, block: int = 512) -> None:
        self._block = block
        self._blocks: list[list[Any]] = []
        self._maxes: list[Any] = []  # the last item of each block
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def add(self, item: Any) -> None:
        blocks, maxes = self._blocks, self._maxes
        self._len += 1
        if not blocks:
            blocks.append([item])
            maxes.append(item)
            return
        i = bisect.bisect_left(maxes, item)
        if i == len(blocks):
            i -= 1
            blocks[i].append(item)
            maxes[i] = item
        else:
            bisect.insort(blocks[i], item)
        if len(blocks[i]) > 2 * self._block:
            half = blocks[i][self._block :]
            del blocks[i][self._block :]
            maxes[i] = blocks[i][-1]
            blocks.insert(i + 1, half)
            maxes.insert(i + 1, half[-1])

    def remove(self, item: Any) -> None:
        """Remove an item that is present (ValueError otherwise)."""
        blocks, maxes = self._blocks, self._maxes
        i = bisect.bisect_left(maxes, item)
        if i == len(blocks):
            raise ValueError(f"{item!r} is not in the list")
        block = blocks[i]
        j = bisect.bisect_left(block, item)
        if j == len(block) or block[j] != item:
            raise ValueError(f"{item!r} is not in the list")
        del block[j]
        self._len -= 1
        if not block:
            del blocks[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[-1]

    def first(self) -> Any:
        return self._blocks[0][0] if self._blocks else None

    def head(self, count: int) -> list[Any]:
        """The first ``count`` items, in order."""
        out: list[Any] = []
        for block in self._blocks:
            if len(out) + len(block) >= count:
                out.extend(block[: count - len(out)])
                break
            out.extend(block)
        return out

    def walk(self, count: int) -> Iterator[Any]:
        """The first ``count`` items, in order, produced lazily."""
        for block in self._blocks:
            for item in block:
                if count <= 0:
                    return
                count -= 1
                yield item

    def at(self, index: int) -> Any:
        """The item at a position (0 is the first)."""
        for block in self._blocks:
            if index < len(block):
                return block[index]
            index -= len(block)
        raise IndexError(index)

    def count_upto(self, item: Any) -> int:
        """How many items are <= ``item``."""
        total = 0
        for block, last in zip(self._blocks, self._maxes, strict=True):
            if last <= item:
                total += len(block)
            else:
                return total + bisect.bisect_right(block, item)
        return total

    def __iter__(self) -> Iterator[Any]:
        """A snapshot, so the caller may change the list while iterating."""
        return iter([item for block in self._blocks for item in block])


class SortedQueue:
    """Jobs ordered by a static key (arrival time, predicted size, ...); ties by job id."""

    def __init__(self, key: Callable[[SimJob], Any]) -> None:
        self._key = key
        self._keys = BlockList()
        self._jobs: dict[int, SimJob] = {}
        self._job_key: dict[int, tuple[Any, int]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(self, job: SimJob) -> None:
        entry = (self._key(job), job.job_id)
        self._keys.add(entry)
        self._jobs[job.job_id] = job
        self._job_key[job.job_id] = entry

    def remove(self, job: SimJob) -> None:
        self._keys.remove(self._job_key.pop(job.job_id))
        del self._jobs[job.job_id]

    def count_below(self, entry: tuple[Any, int]) -> int:
        """How many queued (key, job id) entries sort before ``entry`` (one not queued)."""
        return self._keys.count_upto(entry)

    def entry(self, job_id: int) -> tuple[Any, int]:
        """The (key, job id) a queued job sorts by."""
        return self._job_key[job_id]

    def entry_at(self, index: int) -> tuple[Any, int]:
        """The (key, job id) at a position (0 is the first)."""
        entry: tuple[Any, int] = self._keys.at(index)
        return entry

    def first(self) -> SimJob | None:
        entry = self._keys.first()
        return self._jobs[entry[1]] if entry is not None else None

    def first_entry(self) -> tuple[Any, int] | None:
        """The first (key, job id), or None when empty."""
        entry: tuple[Any, int] | None = self._keys.first()
        return entry

    def __iter__(self) -> Iterator[SimJob]:
        """Jobs in key order; a snapshot, so the caller may remove jobs while iterating."""
        jobs = self._jobs
        return iter([jobs[j] for _, j in self._keys])

    def head(self, count: int) -> list[SimJob]:
        jobs = self._jobs
        return [jobs[j] for _, j in self._keys.head(count)]

    def walk(self, count: int) -> Iterator[tuple[tuple[Any, int], SimJob]]:
        """The first ``count`` entries (key, job id) with their jobs, in order, produced lazily
        (a caller that stops early pays only for what it read). Do not add or remove while
        walking."""
        jobs = self._jobs
        for entry in self._keys.walk(count):
            yield entry, jobs[entry[1]]
