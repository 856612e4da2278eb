"""GET /stats: the pure document function, and the route over a runner and its store."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

from httprunner.jobs import STATES
from httprunner.stats import FINISHED_STATES, MINUTES, stats_document, window_start
from httprunner.store.base import StoreCounts

from .test_api import App


def at(text: str) -> float:
    """POSIX seconds of a UTC time written as 2026-11-30T10:01:30."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))


NOW = at("2026-11-30T10:59:30") + 0.25
NO_COUNTS = StoreCounts(states={}, finished=[])


def nonzero(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The minutes with a finished job: {"10:59": {"succeeded": 2}, ...}."""
    found = {}
    for minute in stats["finished_per_minute"]:
        counts = {state: minute[state] for state in FINISHED_STATES if minute[state]}
        if counts:
            found[minute["minute"][11:16]] = counts
    return found


def test_an_empty_daemon_has_sixty_empty_minutes_ending_now() -> None:
    stats = stats_document(now=NOW, running=0, queued=0, counts=NO_COUNTS)
    assert stats["now"] == "2026-11-30T10:59:30.250Z"
    assert (stats["running"], stats["queued"], stats["nodes"]) == (0, 0, [])
    assert stats["states"] == dict.fromkeys(STATES, 0)
    minutes = stats["finished_per_minute"]
    assert len(minutes) == MINUTES == 60
    assert minutes[0]["minute"] == "2026-11-30T10:00:00Z"
    assert minutes[-1]["minute"] == "2026-11-30T10:59:00Z"
    assert all(set(m) == {"minute", *FINISHED_STATES} for m in minutes)
    assert nonzero(stats) == {}
    # the store is asked from the start of the oldest minute shown
    assert window_start(NOW) == at("2026-11-30T10:00:00")


def test_the_store_counts_land_in_their_minutes_and_every_state_is_named() -> None:
    counts = StoreCounts(
        states={"succeeded": 120, "failed": 4, "running": 3, "queued": 1},
        finished=[
            (int(at("2026-11-30T10:59:00")), "succeeded", 2),  # the current minute
            (int(at("2026-11-30T10:58:00")), "failed", 1),
            (int(at("2026-11-30T10:58:00")), "succeeded", 3),
            (int(at("2026-11-30T10:00:00")), "timed_out", 1),  # the oldest minute shown
            (int(at("2026-11-30T09:59:00")), "canceled", 7),  # an hour ago: not shown
            (int(at("2026-11-30T11:05:00")), "lost", 1),  # after "now" (a clock step): not shown
            (int(at("2026-11-30T10:30:00")), "running", 5),  # not a finished state: not shown
        ],
    )
    stats = stats_document(now=NOW, running=3, queued=1, counts=counts)
    assert stats["states"] == {
        "queued": 1,
        "running": 3,
        "succeeded": 120,
        "failed": 4,
        "timed_out": 0,
        "canceled": 0,
        "spawn_failed": 0,
        "lost": 0,
    }
    assert nonzero(stats) == {
        "10:59": {"succeeded": 2},
        "10:58": {"succeeded": 3, "failed": 1},
        "10:00": {"timed_out": 1},
    }


def test_counts_come_from_the_runner_and_nodes_are_passed_through() -> None:
    nodes = [{"name": "a", "last_heartbeat": "2026-11-30T10:59:29.000Z", "alive": True, "running": 2}]
    counts = StoreCounts(states={"running": 1}, finished=[])
    stats = stats_document(now=NOW, running=7, queued=3, counts=counts, nodes=nodes)
    assert (stats["running"], stats["queued"], stats["nodes"]) == (7, 3, nodes)
    assert stats["states"]["running"] == 1  # the retained jobs, counted by the store


def test_the_stats_route_counts_the_runner_and_the_store(tmp_path: Any) -> None:
    app = App(tmp_path)
    app.runner.walltime = app.reactor.seconds
    app.reactor.advance(at("2026-11-30T10:00:10"))
    done = app.json("POST", "/", {"command": "prog"})[1]
    app.finish(done["id"])
    app.json("POST", "/", {"command": "prog"})  # runs (one slot)
    app.json("POST", "/", {"command": "prog"})  # waits
    code, headers, body = app.call("GET", "/stats")
    assert code == 200 and headers.getRawHeaders("Content-Type") == ["application/json"]
    stats = json.loads(body)
    assert stats["now"] == "2026-11-30T10:00:10.000Z"
    assert (stats["running"], stats["queued"]) == (1, 1)
    assert (stats["states"]["succeeded"], stats["states"]["running"], stats["states"]["queued"]) == (1, 1, 1)
    assert nonzero(stats) == {"10:00": {"succeeded": 1}}
    assert stats["finished_per_minute"][-1]["minute"] == "2026-11-30T10:00:00Z"
    assert stats["nodes"] == []
    # a wrong method on the fixed path is a 405, not "no job 'stats'"
    assert app.call("DELETE", "/stats")[0] == 405
