"""The document of ``GET /stats``: what runs now and what finished lately.

One pure function over the runner's counts and the store's counts
(:class:`~httprunner.store.base.StoreCounts`, which every store computes
in its own way: a walk of the memory store, a ``GROUP BY`` in SQL), so
the dashboard and scripts read the same numbers and a test can state them
exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from httprunner.jobs import STATES, TERMINAL_STATES, rfc3339
from httprunner.store.base import StoreCounts

#: the chart's span: one bucket a minute, the last one the current minute
MINUTES = 60

#: the states a finished job can be in, in the order of jobs.STATES
FINISHED_STATES = tuple(state for state in STATES if state in TERMINAL_STATES)


def window_start(now: float) -> float:
    """The start of the oldest minute ``/stats`` shows (what to ask the store for)."""
    return float((int(now // 60) - MINUTES + 1) * 60)


def minute_label(minute: int) -> str:
    """``2026-11-30T10:01:00Z`` for a minute number (POSIX seconds // 60)."""
    return time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(minute * 60))


def stats_document(
    *,
    now: float,
    running: int,
    queued: int,
    counts: StoreCounts,
    nodes: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The ``GET /stats`` document.

    ``running`` and ``queued`` are the runner's own counts; ``states``
    counts the retained jobs in every state (zero for a state the store
    did not name); ``finished_per_minute`` has :data:`MINUTES` entries,
    oldest first, the last one the minute ``now`` falls in, each counting
    the jobs that finished in that minute by state.  What the store counts
    outside the window (or in a state that is not a finished one) is in no
    minute.
    """
    states = dict.fromkeys(STATES, 0)
    for state, count in counts.states.items():
        if state in states:
            states[state] = count
    first = int(window_start(now)) // 60
    per_minute = [dict.fromkeys(FINISHED_STATES, 0) for _ in range(MINUTES)]
    for minute_start, state, count in counts.finished:
        index = int(minute_start) // 60 - first
        if 0 <= index < MINUTES and state in TERMINAL_STATES:
            per_minute[index][state] += count
    return {
        "now": rfc3339(now),
        "running": running,
        "queued": queued,
        "states": states,
        "finished_per_minute": [
            {"minute": minute_label(first + index), **counts_} for index, counts_ in enumerate(per_minute)
        ],
        "nodes": list(nodes),
    }
