"""The server's garbage-collector policy (gpufleet.server.gcpolicy), in a real event loop."""

from __future__ import annotations

import asyncio
import gc

from gpufleet.server import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_are_frozen_and_the_collector_is_left_as_it_was():
    before = gc.get_threshold()

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(gcpolicy.run(freeze_seconds=0.01))
        await asyncio.sleep(0.05)
        assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
        keep = [Node() for _ in range(1000)]  # survivors made after the start-up sweep
        await asyncio.sleep(0.05)
        frozen = gc.get_freeze_count()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del keep
        return frozen, gc.get_freeze_count()

    frozen, after = asyncio.run(main())
    assert frozen >= 1000
    assert after == 0
    assert gc.get_threshold() == before


def test_a_sweep_reclaims_cycles_that_became_garbage_after_being_frozen():
    gc.collect()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.freeze()
    try:
        del a, b  # a cycle, frozen: only a sweep can reclaim it
        collected, seconds = gcpolicy.sweep()
        assert collected >= 2
        assert seconds >= 0
    finally:
        gc.unfreeze()


def test_a_sweep_is_due_when_the_frozen_heap_grew_or_after_a_long_while():
    due = gcpolicy.sweep_due
    minimum, maximum = gcpolicy.SWEEP_MIN_SECONDS, gcpolicy.SWEEP_MAX_SECONDS
    assert not due(frozen=1_000_000, baseline=1_000_000, since_sweep=minimum * 10)
    assert not due(frozen=2_000_000, baseline=1_000_000, since_sweep=minimum / 2)
    assert due(frozen=2_000_000, baseline=1_000_000, since_sweep=minimum)
    assert due(frozen=1_000_000, baseline=1_000_000, since_sweep=maximum)
    assert not due(frozen=12_000, baseline=100, since_sweep=minimum)  # a small heap: no hurry
