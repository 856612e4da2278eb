"""Unit tests for httprunner.callbacks.delivery: the record, retries, deadlines, shutdown, logs.

In memory: a Clock, a fake resolver and fake TCP (tests/callback_fakes.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import capturedLogs, formatEvent

from httprunner import jobs
from httprunner.callbacks import SHUTDOWN_ERROR, CallbackDelivery, CallbackOnFinish
from httprunner.jobs import Job, JobSpec

from .callback_fakes import BODY, JOB_ID, NOW, Harness

# ---------------------------------------------------------------------------
# The delivery record


def test_delivery_record_starts_pending_and_serialises_in_order() -> None:
    delivery = CallbackDelivery()
    assert list(delivery.to_json().items()) == [
        ("state", "pending"),
        ("attempts", 0),
        ("last_status", None),
        ("last_error", None),
    ]
    assert not hasattr(delivery, "__dict__")  # __slots__: thousands are retained
    with pytest.raises(AttributeError):
        delivery.other = 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Retries and backoff


@pytest.mark.parametrize(
    "attempt, nominal", [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 60), (8, 60), (20, 60)]
)
@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_backoff_doubles_from_one_second_capped_at_sixty_with_twenty_percent_jitter(
    attempt: int, nominal: float, draw: float
) -> None:
    h = Harness(random=lambda: draw)
    delay = h.notifier.backoff_delay(attempt)
    assert nominal * 0.8 <= delay <= nominal * 1.2
    assert delay == pytest.approx(nominal * (0.8 + 0.4 * draw))


def test_retry_waits_exactly_the_jittered_backoff_on_the_clock() -> None:
    draws = iter([0.0, 1.0])  # the low end, then the high end of the jitter
    h = Harness(random=lambda: next(draws), attempts=3)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(503)
    assert delivery.to_json() == {
        "state": "pending",
        "attempts": 1,
        "last_status": 503,
        "last_error": "HTTP 503 Service Unavailable",
    }
    [timer] = h.reactor.getDelayedCalls()
    assert timer.getTime() == pytest.approx(NOW + 0.8)  # 1 s - 20 %
    h.reactor.advance(0.79)
    assert len(h.network.connects) == 1
    h.reactor.advance(0.01)
    assert len(h.network.connects) == 2
    h.last.respond(429)
    assert delivery.attempts == 2 and delivery.state == "pending"
    [timer] = h.reactor.getDelayedCalls()
    assert timer.getTime() == pytest.approx(h.reactor.seconds() + 2.4)  # 2 s + 20 %
    h.reactor.advance(2.39)
    assert len(h.network.connects) == 2
    h.reactor.advance(0.01)
    h.last.respond(502)
    assert results == [delivery]
    assert delivery.to_json() == {
        "state": "failed",
        "attempts": 3,
        "last_status": 502,
        "last_error": "HTTP 502 Bad Gateway",
    }
    assert h.reactor.getDelayedCalls() == []  # no retry after the last attempt
    h.finish()


def test_backoff_base_is_configurable() -> None:
    h = Harness(random=lambda: 0.5, backoff_base=0.01)
    h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(500)
    [timer] = h.reactor.getDelayedCalls()
    assert timer.getTime() == pytest.approx(NOW + 0.01)
    h.reactor.advance(0.01)
    h.last.respond(200)
    h.finish()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_client_errors_fail_at_once_without_retry(status: int) -> None:
    h = Harness()
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(status)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 1, status)
    assert delivery.last_error is not None and str(status) in delivery.last_error
    assert h.reactor.getDelayedCalls() == []
    h.finish()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed_nor_retried(status: int) -> None:
    h = Harness({"elsewhere.example": ["10.9.9.9"]})
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(status, headers={"Location": "http://elsewhere.example/steal"})
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 1, status)
    assert "redirects are not followed" in (delivery.last_error or "")
    h.reactor.advance(120)
    assert h.network.connects == [("127.0.0.1", 8080)]
    assert h.resolver.queries == []
    h.finish()


def test_connection_refused_is_retried_then_failed() -> None:
    h = Harness(random=lambda: 0.5)
    h.network.refusing.add("127.0.0.1")
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    assert delivery.attempts == 1 and delivery.state == "pending"
    h.reactor.advance(1.0)
    h.reactor.advance(2.0)
    assert results == [delivery]
    assert delivery.to_json() == {
        "state": "failed",
        "attempts": 3,
        "last_status": None,
        "last_error": "connection refused",
    }
    assert len(h.network.connects) == 3
    h.finish()


def test_a_receiver_that_never_answers_times_out_per_attempt() -> None:
    h = Harness(random=lambda: 0.5, attempts=2, timeout=10.0)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    first = h.last
    h.reactor.advance(9.9)
    assert delivery.attempts == 0 and first.transport.connected
    h.reactor.advance(0.1)
    assert not first.transport.connected  # the hung connection is dropped
    assert delivery.to_json() == {
        "state": "pending",
        "attempts": 1,
        "last_status": None,
        "last_error": "timed out after 10 s",
    }
    h.reactor.advance(1.0)
    assert len(h.network.connections) == 2
    h.reactor.advance(10.0)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("failed", 2, "timed out after 10 s")
    assert h.reactor.getDelayedCalls() == []
    h.finish()


def test_the_deadline_also_covers_name_resolution() -> None:
    h = Harness(attempts=1, timeout=5.0)
    h.resolver.hanging.add("slow.example")
    delivery, results = h.deliver("http://slow.example/hook")
    h.reactor.advance(5.0)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("failed", 1, "timed out after 5 s")
    assert h.network.connects == []
    h.finish()


def test_an_unresolvable_name_is_retried_like_a_connection_error() -> None:
    h = Harness(random=lambda: 0.5, attempts=2)
    delivery, results = h.deliver("http://nowhere.example/hook")
    h.reactor.advance(1.0)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert "could not resolve" in (delivery.last_error or "")
    assert h.resolver.queries == ["nowhere.example", "nowhere.example"]
    h.finish()


def test_a_status_received_before_the_body_stalls_counts() -> None:
    h = Harness(timeout=10.0)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    conn = h.last
    # Headers announce 100 bytes, only 10 arrive, then the receiver stalls.
    conn.respond(200, b"", headers={"Content-Length": "100"}, close=False)
    conn.protocol.dataReceived(b"0123456789")
    assert results == []
    h.reactor.advance(10.0)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert not conn.transport.connected
    h.finish()


def test_an_invalid_url_fails_the_delivery_instead_of_raising() -> None:
    h = Harness()
    delivery, results = h.deliver("not a url")
    assert results == [delivery]
    assert delivery.state == "failed" and delivery.attempts == 0
    assert h.network.connects == []
    h.finish()


# ---------------------------------------------------------------------------
# Concurrency, cancellation, shutdown


def test_at_most_max_in_flight_attempts_run_and_the_rest_queue() -> None:
    h = Harness(max_in_flight=2)
    pairs = [h.deliver(f"http://127.0.0.1:8080/{i}") for i in range(5)]
    assert len(h.network.connections) == 2
    h.network.connections[0].respond(200)
    assert len(h.network.connections) == 3
    while any(not results for _, results in pairs):
        open_ = [c for c in h.network.connections if c.transport.connected and c.transport.value()]
        open_[0].respond(200)
    assert [d.state for d, _ in pairs] == ["delivered"] * 5
    assert h.notifier.pending == 0
    h.finish()


def test_queued_attempts_start_their_deadline_when_they_run() -> None:
    h = Harness(max_in_flight=1, timeout=10.0, attempts=1)
    first, _ = h.deliver("http://127.0.0.1:8080/1")
    second, _ = h.deliver("http://127.0.0.1:8080/2")
    h.reactor.advance(9.0)
    h.network.connections[0].respond(200)
    h.reactor.advance(9.0)  # 18 s after submission, 9 s into its attempt
    assert second.state == "pending"
    h.network.connections[1].respond(200)
    assert (first.state, second.state) == ("delivered", "delivered")
    h.finish()


def test_stop_waits_for_pending_deliveries_up_to_the_grace_then_cancels() -> None:
    h = Harness(timeout=10.0)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    conn = h.last
    stopped: list[Any] = []
    h.notifier.stop(5.0).addBoth(stopped.append)
    h.reactor.advance(4.9)
    assert stopped == [] and results == []
    h.reactor.advance(0.1)
    assert stopped == [None]
    assert results == [delivery]  # fired with the record, never an errback
    assert delivery.state == "failed" and delivery.last_error == SHUTDOWN_ERROR
    assert not conn.transport.connected
    assert h.reactor.getDelayedCalls() == []


def test_stop_returns_as_soon_as_the_last_delivery_finishes() -> None:
    h = Harness()
    delivery, _ = h.deliver("http://127.0.0.1:8080/hook")
    stopped: list[Any] = []
    h.notifier.stop(5.0).addBoth(stopped.append)
    h.reactor.advance(1.0)
    h.last.respond(200)
    assert stopped == [None]
    assert delivery.state == "delivered"
    assert h.reactor.getDelayedCalls() == []  # the grace timer is gone


def test_stop_cancels_a_delivery_waiting_to_retry() -> None:
    h = Harness(backoff_base=30.0, random=lambda: 0.5)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(503)
    stopped: list[Any] = []
    h.notifier.stop(5.0).addBoth(stopped.append)
    h.reactor.advance(5.0)
    assert stopped == [None] and results == [delivery]
    assert delivery.to_json() == {
        "state": "failed",
        "attempts": 1,
        "last_status": 503,
        "last_error": SHUTDOWN_ERROR,
    }
    assert h.reactor.getDelayedCalls() == []


def test_stop_cancels_deliveries_still_queued_for_a_slot() -> None:
    h = Harness(max_in_flight=1)
    running, _ = h.deliver("http://127.0.0.1:8080/1")
    queued, results = h.deliver("http://127.0.0.1:8080/2")
    stopped: list[Any] = []
    h.notifier.stop(0).addBoth(stopped.append)
    assert stopped == [None] and results == [queued]
    assert (queued.state, queued.attempts, queued.last_error) == ("failed", 0, SHUTDOWN_ERROR)
    assert running.state == "failed"
    assert len(h.network.connects) == 1
    assert h.reactor.getDelayedCalls() == []


def test_deliveries_after_stop_fail_without_a_connection() -> None:
    h = Harness()
    h.finish()
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    assert results == [delivery]
    assert delivery.state == "failed" and delivery.last_error == SHUTDOWN_ERROR
    assert h.network.connects == []


def test_canceling_the_returned_deferred_still_fires_with_the_record() -> None:
    h = Harness()
    delivery = CallbackDelivery()
    results: list[Any] = []
    d = h.notifier.deliver(JOB_ID, "http://127.0.0.1:8080/hook", BODY, delivery)
    d.addBoth(results.append)
    d.cancel()
    assert results == [delivery]
    assert delivery.state == "failed" and "canceled" in (delivery.last_error or "")
    assert h.notifier.pending == 0
    assert h.reactor.getDelayedCalls() == []


def test_an_internal_error_never_reaches_the_caller() -> None:
    def broken_endpoint(address: str, port: int) -> IStreamClientEndpoint:
        raise RuntimeError("bug")

    h = Harness(endpoint_factory=broken_endpoint)
    with capturedLogs() as events:
        delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    assert results == [delivery]
    assert delivery.state == "failed" and "internal error" in (delivery.last_error or "")
    assert any(e.get("log_failure") is not None for e in events)
    h.finish()


# ---------------------------------------------------------------------------
# Logging


def _attempt_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "attempt" in e and "duration" in e]


def test_one_structured_event_per_attempt_without_secret_body_or_query() -> None:
    secret = b"top-secret-key"
    h = Harness(secret=secret, random=lambda: 0.5)
    with capturedLogs() as events:
        delivery, _ = h.deliver("http://127.0.0.1:8080/hook?token=hunter2")
        h.last.respond(500)
        h.reactor.advance(1.0)
        h.last.respond(200)
    attempts = _attempt_events(events)
    assert [(e["job_id"], e["attempt"], e["status"], e["error"], e["state"]) for e in attempts] == [
        (JOB_ID, 1, 500, "HTTP 500 Internal Server Error", "pending"),
        (JOB_ID, 2, 200, None, "delivered"),
    ]
    assert all(e["url"] == "http://127.0.0.1:8080/hook" for e in attempts)
    assert all(isinstance(e["duration"], float) and e["duration"] >= 0 for e in attempts)
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "hunter2" not in text
    assert "top-secret-key" not in text
    assert "naïve" not in text and "naïve".encode().hex() not in text
    assert JOB_ID in formatEvent(attempts[0]) and "attempt 1" in formatEvent(attempts[0])
    assert delivery.state == "delivered"
    h.finish()


def test_connection_errors_are_logged_with_the_error_text() -> None:
    h = Harness(attempts=1)
    h.network.refusing.add("127.0.0.1")
    with capturedLogs() as events:
        h.deliver("http://127.0.0.1:8080/hook")
    [event] = _attempt_events(events)
    assert event["status"] is None and event["error"] == "connection refused"
    assert "connection refused" in formatEvent(event)
    h.finish()


def test_events_keep_the_documented_namespace() -> None:
    # docs/operating.rst ("Logs") names it; operators' filters must survive the move to callbacks/.
    h = Harness(attempts=1)
    with capturedLogs() as events:
        h.deliver("http://127.0.0.1:8080/hook")
        h.last.respond(200)
    [event] = _attempt_events(events)
    assert event["log_namespace"] == "httprunner.notify.Notifier"
    h.finish()


# ---------------------------------------------------------------------------
# The outbox: records rebuilt from a store, resumed, persisted, abandoned


class Changes:
    """An ``on_change`` hook that keeps what a store would write: JSON text per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, job_id: str, delivery: CallbackDelivery) -> None:
        self.calls.append((job_id, json.loads(json.dumps(delivery.to_json()))))

    @property
    def states(self) -> list[tuple[str, int, int | None]]:
        return [(d["state"], d["attempts"], d["last_status"]) for _, d in self.calls]

    @property
    def last(self) -> dict[str, Any]:
        return self.calls[-1][1]


RECORDS = [
    {"state": "pending", "attempts": 0, "last_status": None, "last_error": None},
    {"state": "pending", "attempts": 2, "last_status": 503, "last_error": "HTTP 503 Service Unavailable"},
    {"state": "delivered", "attempts": 1, "last_status": 204, "last_error": None},
    {"state": "failed", "attempts": 3, "last_status": None, "last_error": "connection refused"},
    {"state": "failed", "attempts": 0, "last_status": None, "last_error": SHUTDOWN_ERROR},
    {"state": "refused", "attempts": 0, "last_status": None, "last_error": "link-local"},
]


@pytest.mark.parametrize("stored", RECORDS)
def test_a_record_is_rebuilt_from_its_stored_json(stored: dict[str, Any]) -> None:
    text = json.dumps(stored)  # what a store keeps
    delivery = CallbackDelivery.from_json(json.loads(text))
    assert delivery.to_json() == stored
    assert list(delivery.to_json()) == ["state", "attempts", "last_status", "last_error"]
    assert delivery.final == (stored["state"] != "pending")


def test_a_rebuilt_record_ignores_unknown_keys() -> None:
    delivery = CallbackDelivery.from_json({**RECORDS[1], "next_attempt_at": 12.5})
    assert delivery.to_json() == RECORDS[1]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"state": "done"}, "state"),
        ({"state": None}, "state"),
        ({"state": ["pending"]}, "state"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": "1"}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"attempts": 1.0}, "attempts"),
        ({"last_status": "200"}, "last_status"),
        ({"last_status": 42}, "last_status"),
        ({"last_status": False}, "last_status"),
        ({"last_error": 5}, "last_error"),
    ],
)
def test_a_damaged_stored_record_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"callback_delivery {field} ") as excinfo:
        CallbackDelivery.from_json({**RECORDS[1], **change})
    assert "\n" not in str(excinfo.value)


def test_a_stored_record_without_a_state_is_refused() -> None:
    with pytest.raises(ValueError, match="state"):
        CallbackDelivery.from_json({"attempts": 0})


def test_a_resumed_delivery_starts_at_once_and_counts_the_attempts_already_made() -> None:
    h = Harness(random=lambda: 0.5, attempts=3)
    stored = CallbackDelivery.from_json(RECORDS[1] | {"attempts": 1})
    with capturedLogs() as events:
        delivery, results = h.deliver("http://127.0.0.1:8080/hook", delivery=stored)
        assert len(h.network.connects) == 1  # no backoff first: the restart was the pause
        h.last.respond(503)
        assert delivery.to_json()["attempts"] == 2 and delivery.state == "pending"
        [timer] = h.reactor.getDelayedCalls()
        assert timer.getTime() == pytest.approx(NOW + h.notifier.backoff_delay(2))  # after attempt 2: 2 s
        h.reactor.advance(2.0)
        h.last.respond(503)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, 503)
    assert len(h.network.connects) == 2  # 3 allowed, 1 made before the restart
    assert [e["attempt"] for e in _attempt_events(events)] == [2, 3]
    h.finish()


def test_a_resumed_delivery_that_succeeds_is_delivered() -> None:
    h = Harness(attempts=3)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook", delivery=CallbackDelivery.from_json(RECORDS[1]))
    line, _, body = h.last.request()
    assert (line, body) == (b"POST /hook HTTP/1.1", BODY)
    h.last.respond(200)
    assert results == [delivery]
    assert delivery.to_json() == {"state": "delivered", "attempts": 3, "last_status": 200, "last_error": None}
    h.finish()


def test_a_resumed_delivery_with_no_attempt_left_fails_without_a_connection() -> None:
    # The record made 2 attempts; --callback-attempts was lowered to 2 meanwhile.
    changes = Changes()
    h = Harness(attempts=2, on_change=changes)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook", delivery=CallbackDelivery.from_json(RECORDS[1]))
    assert results == [delivery]
    assert delivery.to_json() == {**RECORDS[1], "state": "failed"}  # the last attempt says why
    assert h.network.connects == []
    assert changes.states == [("failed", 2, 503)]
    h.finish()


@pytest.mark.parametrize("stored", [r for r in RECORDS if r["state"] != "pending"])
def test_a_final_record_is_never_sent_again(stored: dict[str, Any]) -> None:
    changes = Changes()
    h = Harness(on_change=changes)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook", delivery=CallbackDelivery.from_json(stored))
    assert results == [delivery]
    assert delivery.to_json() == stored
    assert h.network.connects == [] and changes.calls == []
    assert h.reactor.getDelayedCalls() == []
    h.finish()


def test_on_change_sees_every_attempt_and_the_final_state_before_the_caller() -> None:
    order: list[str] = []
    changes = Changes()

    def on_change(job_id: str, delivery: CallbackDelivery) -> None:
        changes(job_id, delivery)
        order.append("stored")

    h = Harness(random=lambda: 0.5, on_change=on_change)
    delivery = CallbackDelivery()
    h.notifier.deliver(JOB_ID, "http://127.0.0.1:8080/hook", BODY, delivery).addCallback(
        lambda _: order.append("caller told")
    )
    h.last.respond(503)
    h.reactor.advance(1.0)
    h.last.respond(500)
    assert changes.states == [("pending", 1, 503), ("pending", 2, 500)]
    h.reactor.advance(2.0)
    h.last.respond(200)
    assert changes.states == [("pending", 1, 503), ("pending", 2, 500), ("delivered", 3, 200)]
    assert [job_id for job_id, _ in changes.calls] == [JOB_ID] * 3
    assert order == ["stored", "stored", "stored", "caller told"]
    h.finish()


def test_on_change_is_told_of_refusals_and_unusable_urls() -> None:
    changes = Changes()
    h = Harness({"metadata.example": ["169.254.169.254"]}, on_change=changes)
    h.deliver("http://metadata.example/")
    h.deliver("ftp://example.com/")
    assert changes.states == [("refused", 0, None), ("failed", 0, None)]
    assert "link-local" in changes.calls[0][1]["last_error"]
    assert "http or https" in changes.calls[1][1]["last_error"]
    assert h.network.connects == []
    h.finish()


def test_a_failing_on_change_hook_is_logged_and_the_delivery_goes_on() -> None:
    def broken(job_id: str, delivery: CallbackDelivery) -> None:
        raise OSError("disk full")

    h = Harness(random=lambda: 0.5, on_change=broken)
    with capturedLogs() as events:
        delivery, results = h.deliver("http://127.0.0.1:8080/hook")
        h.last.respond(503)
        h.reactor.advance(1.0)
        h.last.respond(200)
    assert results == [delivery]
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 2 and all("on_change" in formatEvent(e) for e in failures)
    h.finish()


def test_shutdown_fails_cut_short_deliveries_by_default_and_says_so_to_on_change() -> None:
    changes = Changes()
    h = Harness(backoff_base=30.0, random=lambda: 0.5, on_change=changes)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(503)
    h.notifier.stop(5.0)
    h.reactor.advance(5.0)
    assert results == [delivery]
    assert changes.last == {"state": "failed", "attempts": 1, "last_status": 503, "last_error": SHUTDOWN_ERROR}
    assert h.reactor.getDelayedCalls() == []


def test_with_abandon_as_pending_a_delivery_waiting_to_retry_stays_pending() -> None:
    changes = Changes()
    h = Harness(backoff_base=30.0, random=lambda: 0.5, on_change=changes, abandon_as_pending=True)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(503)
    stopped: list[Any] = []
    with capturedLogs() as events:
        h.notifier.stop(5.0).addBoth(stopped.append)
        h.reactor.advance(5.0)
    assert stopped == [None] and results == [delivery]
    kept = {"state": "pending", "attempts": 1, "last_status": 503, "last_error": "HTTP 503 Service Unavailable"}
    assert delivery.to_json() == kept
    assert changes.states == [("pending", 1, 503), ("pending", 1, 503)]  # the attempt, then the abandonment
    assert any("left pending for the next start" in formatEvent(e) for e in events)
    assert len(h.network.connects) == 1
    assert h.reactor.getDelayedCalls() == []


def test_with_abandon_as_pending_an_attempt_cut_short_is_not_counted() -> None:
    changes = Changes()
    h = Harness(timeout=30.0, on_change=changes, abandon_as_pending=True)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    conn = h.last
    h.notifier.stop(5.0)
    h.reactor.advance(5.0)
    assert results == [delivery]
    assert delivery.to_json() == {"state": "pending", "attempts": 0, "last_status": None, "last_error": None}
    assert changes.states == [("pending", 0, None)]
    assert not conn.transport.connected  # the hung attempt is dropped all the same
    assert h.reactor.getDelayedCalls() == []


def test_with_abandon_as_pending_queued_and_late_deliveries_stay_pending() -> None:
    changes = Changes()
    h = Harness(max_in_flight=1, on_change=changes, abandon_as_pending=True)
    running, _ = h.deliver("http://127.0.0.1:8080/1", job_id="a" * 40)
    queued, queued_results = h.deliver("http://127.0.0.1:8080/2", job_id="b" * 40)
    h.notifier.stop(0)
    late, late_results = h.deliver("http://127.0.0.1:8080/3", job_id="c" * 40)
    assert queued_results == [queued] and late_results == [late]
    assert [d.state for d in (running, queued, late)] == ["pending"] * 3
    assert sorted(job_id[0] for job_id, _ in changes.calls) == ["a", "b", "c"]
    assert len(h.network.connects) == 1  # neither the queued nor the late one connected
    assert h.reactor.getDelayedCalls() == []


def test_a_canceled_delivery_fails_even_with_abandon_as_pending() -> None:
    # Only a shutdown leaves a record for the next start; a caller's cancel is final.
    changes = Changes()
    h = Harness(on_change=changes, abandon_as_pending=True)
    delivery = CallbackDelivery()
    h.notifier.deliver(JOB_ID, "http://127.0.0.1:8080/hook", BODY, delivery).cancel()
    assert delivery.state == "failed" and "canceled" in (delivery.last_error or "")
    assert changes.states == [("failed", 0, None)]
    h.finish()


def test_a_delivery_left_pending_at_shutdown_is_delivered_after_a_restart() -> None:
    store: dict[str, str] = {}

    def persist(job_id: str, delivery: CallbackDelivery) -> None:
        store[job_id] = json.dumps(delivery.to_json())

    key = b"outbox secret"
    first = Harness(secret=key, random=lambda: 0.5, on_change=persist, abandon_as_pending=True)
    first.deliver("http://127.0.0.1:8080/hook")
    _, first_headers, first_body = first.last.request()
    first.last.respond(502)
    first.notifier.stop(5.0)
    first.reactor.advance(5.0)
    assert json.loads(store[JOB_ID])["state"] == "pending"

    second = Harness(secret=key, random=lambda: 0.5, on_change=persist, abandon_as_pending=True)
    second.reactor.advance(3600)  # the daemon was down for an hour
    resumed = CallbackDelivery.from_json(json.loads(store[JOB_ID]))
    delivery, results = second.deliver("http://127.0.0.1:8080/hook", delivery=resumed)
    _, headers, body = second.last.request()
    second.last.respond(200)
    assert results == [delivery]
    assert json.loads(store[JOB_ID]) == {"state": "delivered", "attempts": 2, "last_status": 200, "last_error": None}
    assert body == first_body == BODY
    assert headers[b"webhook-id"] == first_headers[b"webhook-id"] == [JOB_ID.encode()]  # receivers can dedupe
    assert int(headers[b"webhook-timestamp"][0]) == int(first_headers[b"webhook-timestamp"][0]) + 3600
    second.finish()


# ---------------------------------------------------------------------------
# The runner observer


def _job(callback: str | None = "http://127.0.0.1:8080/done") -> Job:
    spec = JobSpec(command="echo", arguments=["hi"], program="/fake/bin/echo", args=("hi",), env={}, callback=callback)
    job = Job(job_id=JOB_ID, spec=spec, created_at=NOW - 2, max_output=1024)
    job.state, job.code, job.pid = jobs.SUCCEEDED, 0, 4242
    job.started_at, job.finished_at, job.duration = NOW - 1, NOW, 1.0
    job.stdout.append("naïve ✓\n".encode())
    return job


def finish_and_record(observer: CallbackOnFinish, job: Any) -> None:
    """What the runner does: the job ends, then the store records it."""
    observer.job_finished(job)
    observer.job_recorded(job)


def test_a_finished_job_with_a_callback_sends_its_json_with_a_pending_record() -> None:
    h = Harness()
    job = _job()
    observer = CallbackOnFinish(h.notifier)
    observer.job_finished(job)
    assert job.callback_delivery.state == "pending" and h.network.connects == []  # not before the store has it
    observer.job_recorded(job)
    _, _, body = h.last.request()
    sent = json.loads(body)
    assert sent["callback_delivery"] == {"state": "pending", "attempts": 0, "last_status": None, "last_error": None}
    assert sent["id"] == JOB_ID and sent["stdout"] == "naïve ✓\n"
    h.last.respond(200)
    assert json.loads(job.to_json_bytes())["callback_delivery"]["state"] == "delivered"  # a later GET
    h.finish()


def test_a_finished_job_without_a_callback_sends_nothing() -> None:
    h = Harness()
    job = _job(callback=None)
    finish_and_record(CallbackOnFinish(h.notifier), job)
    assert job.callback_delivery is None and h.network.connects == []
    h.finish()


def test_resume_sends_the_same_bytes_as_the_first_attempt_and_updates_the_record() -> None:
    first = Harness(random=lambda: 0.5, abandon_as_pending=True)
    job = _job()
    finish_and_record(CallbackOnFinish(first.notifier), job)
    _, _, first_body = first.last.request()
    first.last.respond(503)
    first.notifier.stop(0)
    stored = job.to_json()["callback_delivery"]
    assert (stored["state"], stored["attempts"]) == ("pending", 1)

    second = Harness()
    loaded = _job()  # the same job, as a store gives it back
    loaded.callback_delivery = CallbackDelivery.from_json(stored)
    done = CallbackOnFinish(second.notifier).resume(loaded)
    assert done is not None
    _, _, body = second.last.request()
    assert body == first_body
    second.last.respond(200)
    assert loaded.to_json()["callback_delivery"] == {
        "state": "delivered",
        "attempts": 2,
        "last_status": 200,
        "last_error": None,
    }
    second.finish()


@pytest.mark.parametrize("case", ["no callback", "no record", "delivered", "failed", "refused"])
def test_resume_leaves_jobs_with_nothing_pending_alone(case: str) -> None:
    h = Harness()
    job = _job(callback=None if case == "no callback" else "http://127.0.0.1:8080/done")
    if case not in ("no callback", "no record"):
        job.callback_delivery = CallbackDelivery(state=case, attempts=1)
    assert CallbackOnFinish(h.notifier).resume(job) is None
    assert h.network.connects == []
    h.finish()
