"""The one group-commit loop (store/groupcommit.py) on its own: what is gathered together,
what splits a group, and the order things happen in."""

from __future__ import annotations

import queue
import threading

from gpufleet.store import groupcommit
from gpufleet.store.base import STOP


def drive(tasks: list, **kw) -> list:
    """Queue ``tasks`` then STOP, run the loop; the log of what it did, in order."""
    q: queue.Queue = queue.Queue()
    for t in tasks:
        q.put(t)
    q.put(STOP)
    done: list = []
    hooks = dict(
        is_item=lambda t: t[0] == "item",
        commit=lambda group: done.append(("commit", [t[1] for t in group])),
        run_task=lambda t: done.append(("run", t[1])),
        window=lambda: 0.0,
        max_group=3,
        after_round=lambda: done.append(("round",)),
    )
    groupcommit.run(q, **{**hooks, **kw})
    return done


def test_items_queued_together_are_one_commit_up_to_the_group_limit():
    done = drive([("item", n) for n in range(7)])
    assert [d for d in done if d[0] == "commit"] == [
        ("commit", [0, 1, 2]), ("commit", [3, 4, 5]), ("commit", [6]),
    ]  # fmt: skip
    assert done[-1] == ("round",)  # STOP comes after what was gathered is committed


def test_a_task_runs_after_the_items_before_it_unless_it_need_not_wait():
    tasks = [("item", 1), ("item", 2), ("task", "a"), ("item", 3)]
    assert drive(tasks)[:3] == [("commit", [1, 2]), ("run", "a"), ("commit", [3])]
    kept = drive(tasks, splits=lambda t: False)
    assert kept[:2] == [("run", "a"), ("commit", [1, 2, 3])]


def test_a_group_gathers_for_the_window_after_the_previous_commit():
    q: queue.Queue = queue.Queue()
    commits: list = []
    second = threading.Event()

    def commit(group):
        commits.append([t[1] for t in group])
        if len(commits) == 1:  # items arriving now wait for the window, then go together
            q.put(("item", "b"))
            q.put(("item", "c"))
            second.set()
        elif len(commits) == 2:
            q.put(STOP)

    q.put(("item", "a"))
    groupcommit.run(
        q, is_item=lambda t: t[0] == "item", commit=commit, run_task=lambda t: None,
        window=lambda: 0.2, max_group=100,
    )  # fmt: skip
    assert commits == [["a"], ["b", "c"]]


def test_idle_hook_runs_when_nothing_comes():
    q: queue.Queue = queue.Queue()
    idles: list = []

    def on_idle():
        idles.append(1)
        if len(idles) == 3:
            q.put(STOP)

    groupcommit.run(
        q, is_item=lambda t: True, commit=lambda g: None, run_task=lambda t: None,
        window=lambda: 0.0, max_group=1, idle_seconds=lambda: 0.01, on_idle=on_idle,
    )  # fmt: skip
    assert len(idles) == 3
