"""Unit tests for httprunner.callbacks.delivery: the record, retries, deadlines, shutdown, logs.

In memory: a Clock, a fake resolver and fake TCP (tests/callback_fakes.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import capturedLogs, formatEvent

from httprunner.callbacks import SHUTDOWN_ERROR, CallbackDelivery

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
    # README ("Logs") names it; operators' filters must survive the move to callbacks/.
    h = Harness(attempts=1)
    with capturedLogs() as events:
        h.deliver("http://127.0.0.1:8080/hook")
        h.last.respond(200)
    [event] = _attempt_events(events)
    assert event["log_namespace"] == "httprunner.notify.Notifier"
    h.finish()
