"""The fast text formatter writes exactly what twistd's text observer writes."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from httprunner.logtext import ClassicLogText, speed_up_text_log
from httprunner.site import ACCESS_LOG_FORMAT, ACCESS_LOG_FORMAT_ABANDONED

NOW = 1_764_500_000.25


def original() -> Any:
    return textFileLogObserver(io.StringIO()).formatEvent


def event(log_format: Any, **fields: Any) -> dict[str, Any]:
    base = {"log_format": log_format, "log_time": NOW, "log_namespace": "httprunner.x", "log_level": LogLevel.info}
    base.update(fields)
    return base


def failure() -> Failure:
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        return Failure()


ACCESS_FIELDS = dict(
    completed=True,
    method="GET",
    path="/" + "a" * 40,
    method_text="GET",
    path_text="/" + "a" * 40,
    status=200,
    bytes=412,
    duration=0.00123,
    peer="127.0.0.1:5555",
)

EVENTS = [
    event(ACCESS_LOG_FORMAT, **ACCESS_FIELDS),
    event(ACCESS_LOG_FORMAT_ABANDONED, **ACCESS_FIELDS, log_namespace="httprunner.access"),
    event("job {job_id} started: {argv} (pid {pid})", job_id="f" * 40, argv=["/bin/echo", "a b"], pid=42),
    event(
        "job {job_id} ended: {state}, code {code} in {duration:.3f}s", job_id="f", state="failed", code=1, duration=2
    ),
    event("{message!r} and {other!s} and {third!a}", message="it's\n", other=b"x", third="caf\u00e9"),
    event("{value:>10}|{value:<4}|{n:08.3f}|{n:e}", value="x", n=3.14159),
    event("multi\nline {x}", x="a\nb"),
    event("no fields at all"),
    event("{{escaped}} {x}", x=1),
    event(""),  # no text: no line
    event(None),
    event(b"bytes {x}", x=1),
    event("{missing} key"),
    event("{} positional"),
    event("{0} positional"),
    event("{call()} syntax", call=lambda: "called"),
    event("{item[0]} index", item=["first"]),
    event("{obj.real} attribute", obj=3),
    event("{x:{width}} nested", x=1, width=5),
    event("{x!z} bad conversion", x=1),
    event("unbalanced {x", x=1),
    event("failure {x}", x=1, log_failure=failure()),
    event("legacy {x}", x=1, log_system="HTTPChannel,0,127.0.0.1"),
    event("no level {x}", x=1, log_level=None),
    event("no namespace {x}", x=1, log_namespace=None),
    {"log_format": "no time {x}", "x": 1, "log_namespace": "n", "log_level": LogLevel.warn},
    event("int time {x}", x=1, log_time=1_764_500_000),
    {"log_format": "bare {x}", "x": 1},
]


@pytest.mark.parametrize("e", EVENTS, ids=range(len(EVENTS)))
def test_the_same_text_as_twisted_for_every_kind_of_event(e: dict[str, Any]) -> None:
    fast = ClassicLogText(original())
    assert fast.fast
    assert fast(e) == original()(e)


@given(
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=4),
    st.lists(
        st.one_of(st.text(), st.integers(), st.floats(allow_nan=True), st.none(), st.lists(st.text(), max_size=2)),
        min_size=3,
        max_size=3,
    ),
    st.sampled_from(["", "!r", "!s", ":>6", ":.2f", ":x", ":%"]),
    st.floats(min_value=0, max_value=4e9),
)
def test_the_same_text_for_any_values_and_times(names: list[str], values: list[Any], spec: str, when: float) -> None:
    format_string = " ".join("{%s%s}" % (name, spec) for name in names) + " {a!r}"
    e = event(format_string, log_time=when, a=values[0], b=values[1], c=values[2])
    assert ClassicLogText(original())(e) == original()(e)


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    fast = ClassicLogText(original())
    for when in (NOW, NOW + 0.5, NOW + 1, NOW + 3600.9, NOW - 86400):
        e = event("at {x}", x=when, log_time=when)
        assert fast(e) == original()(e)


def test_our_own_events_take_the_fast_path() -> None:
    calls = []
    twisted_formatter = original()

    def counting(e: dict[str, Any]) -> Any:
        calls.append(e.get("log_format"))
        return twisted_formatter(e)

    fast = ClassicLogText(counting)
    calls.clear()
    for n in range(100):
        when = NOW + n / 100  # across one change of second
        fast(event(ACCESS_LOG_FORMAT, **ACCESS_FIELDS, log_time=when))
        fast(event("job {job_id} started: {argv} (pid {pid})", job_id="f", argv=["/bin/true"], pid=n, log_time=when))
    assert calls == ["probe", "probe"], "a timestamp per second, no event formatted by Twisted"


def test_a_time_format_finer_than_seconds_leaves_every_event_to_twisted() -> None:
    finer = textFileLogObserver(io.StringIO(), timeFormat="%H:%M:%S.%f").formatEvent
    fast = ClassicLogText(finer)
    assert not fast.fast
    e = event("x {x}", x=1)
    assert fast(e) == finer(e)


def test_twistds_text_observer_gets_it_and_json_observers_do_not() -> None:
    text_out, twist_out, json_out = io.StringIO(), io.StringIO(), io.StringIO()
    text = textFileLogObserver(text_out)
    twist_style = FilteringLogObserver(textFileLogObserver(twist_out), [LogLevelFilterPredicate()])
    json_observer = jsonFileLogObserver(json_out)
    publisher = LogPublisher(text, twist_style, json_observer)
    assert speed_up_text_log(publisher) == 2
    assert isinstance(text.formatEvent, ClassicLogText)
    log = Logger(namespace="httprunner.access", observer=publisher)
    log.info(ACCESS_LOG_FORMAT, **ACCESS_FIELDS)
    line = "[httprunner.access#info] GET /%s -> 200 (0.001s, 412 bytes, 127.0.0.1:5555)\n" % ("a" * 40)
    assert text_out.getvalue().endswith(line) and twist_out.getvalue().endswith(line)
    assert text_out.getvalue().startswith(time.strftime("%Y-"))
    # the JSON observer still sees every field of the event
    assert '"path_text": "/aaaa' in json_out.getvalue() and '"status": 200' in json_out.getvalue()
