"""Unit tests for httprunner.callbacks.transport: what goes on the wire, to which address, what is read.

In memory: a Clock, a fake resolver and fake TCP (tests/callback_fakes.py).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTime,
    IStreamClientEndpoint,
)
from zope.interface.verify import verifyObject

from httprunner.callbacks import CallbackGuard

from .callback_fakes import BODY, FakeResolution, Harness


def test_fakes_provide_the_interfaces_they_replace() -> None:
    harness = Harness()
    assert verifyObject(IHostnameResolver, harness.resolver)
    assert verifyObject(IReactorTime, harness.reactor)
    assert verifyObject(IReactorPluggableNameResolver, harness.reactor)
    assert verifyObject(IStreamClientEndpoint, harness.network.endpoint("127.0.0.1", 80))
    assert verifyObject(IHostResolution, FakeResolution("x"))


# ---------------------------------------------------------------------------
# What is sent


def test_post_carries_the_exact_body_and_the_seed_headers() -> None:
    h = Harness({"hooks.example.com": ["10.0.0.7"]})
    delivery, results = h.deliver("http://hooks.example.com:8080/cb/ü?token=t0k")
    assert h.network.connects == [("10.0.0.7", 8080)]
    line, headers, body = h.last.request()
    assert line == b"POST /cb/%C3%BC?token=t0k HTTP/1.1"
    assert body == BODY
    assert headers[b"content-length"] == [str(len(BODY)).encode()]  # bytes, not characters
    assert len(BODY) > len(BODY.decode())
    assert headers[b"content-type"] == [b"application/json"]
    assert headers[b"accept"] == [b"application/json"]
    assert headers[b"host"] == [b"hooks.example.com:8080"]
    assert headers[b"x-notify-timestamp"] == [b"1700000000250"]  # ms at the attempt
    assert headers[b"accept-encoding"] == [b"identity"]  # no gzip bombs
    assert not any(name.startswith(b"webhook-") for name in headers)
    assert results == []
    h.last.respond(200, b"ok")
    assert results == [delivery]
    assert delivery.to_json() == {"state": "delivered", "attempts": 1, "last_status": 200, "last_error": None}
    h.finish()


# ---------------------------------------------------------------------------
# Reading the answer


def test_a_huge_answer_is_not_read_beyond_a_few_kib() -> None:
    h = Harness()
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    conn = h.last
    conn.respond(200, b"", headers={"Content-Length": str(10 * 1024 * 1024)}, close=False)
    conn.protocol.dataReceived(b"x" * 65536)
    assert getattr(conn.transport, "stopped_producing", False)
    assert not conn.transport.connected  # the rest is discarded with the connection
    assert results == [delivery]
    assert delivery.state == "delivered"
    h.finish()


def test_small_answers_keep_the_connection_for_the_next_delivery() -> None:
    h = Harness()
    first, _ = h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(200, b'{"ok": true}', close=False)
    second, results = h.deliver("http://127.0.0.1:8080/other")
    assert len(h.network.connects) == 1  # reused from the pool
    line, _, _ = h.last.request()
    assert line == b"POST /other HTTP/1.1"
    h.last.respond(200, close=False)
    assert results == [second]
    assert first.state == second.state == "delivered"
    h.finish()  # also closes the pooled connection and its idle timer
    assert not h.last.transport.connected


def test_cookies_set_by_a_receiver_are_not_sent_back() -> None:
    h = Harness()
    h.deliver("http://127.0.0.1:8080/hook")
    h.last.respond(200, headers={"Set-Cookie": "session=abc; Path=/"}, close=True)
    h.deliver("http://127.0.0.1:8080/hook")
    _, headers, _ = h.last.request()
    assert b"cookie" not in headers
    h.last.respond(200)
    h.finish()


# ---------------------------------------------------------------------------
# Connecting to checked addresses only


def test_connection_goes_to_the_checked_address_without_a_second_lookup() -> None:
    h = Harness({"hooks.example.com": ["10.0.0.5"]}, guard=CallbackGuard(["10.0.0.0/8"]))
    delivery, _ = h.deliver("http://hooks.example.com/cb")
    assert h.resolver.queries == ["hooks.example.com"]
    assert h.network.connects == [("10.0.0.5", 80)]
    _, headers, _ = h.last.request()
    assert headers[b"host"] == [b"hooks.example.com"]
    h.last.respond(200)
    assert delivery.state == "delivered"
    h.finish()


def test_the_next_checked_address_is_tried_when_the_first_refuses() -> None:
    h = Harness({"dual.example": ["::1", "127.0.0.1"]})
    h.network.refusing.add("::1")
    delivery, _ = h.deliver("http://dual.example:8080/cb")
    assert h.network.connects == [("::1", 8080), ("127.0.0.1", 8080)]
    h.last.respond(200)
    assert delivery.state == "delivered" and delivery.attempts == 1
    h.finish()


def test_https_goes_through_tls_to_the_checked_address_with_the_name_for_sni() -> None:
    h = Harness({"hooks.example.com": ["10.0.0.7"]})
    delivery, results = h.deliver("https://hooks.example.com/cb")
    assert h.network.connects == [("10.0.0.7", 443)]
    client_hello = h.last.transport.value()
    assert client_hello[:1] == b"\x16"  # a TLS handshake record, not plain HTTP
    assert b"POST" not in client_hello
    assert b"hooks.example.com" in client_hello  # SNI names the host, not the address
    h.last.transport.loseConnection()
    assert results == [] and delivery.attempts == 1 and delivery.state == "pending"
    h.finish()


def test_numeric_host_forms_connect_to_the_normalised_address() -> None:
    h = Harness()
    h.deliver("http://0x7f.1:8080/cb")
    assert h.network.connects == [("127.0.0.1", 8080)]
    assert h.resolver.queries == []  # never handed to DNS
    _, headers, _ = h.last.request()
    assert headers[b"host"] == [b"127.0.0.1:8080"]
    h.last.respond(200)
    h.finish()


def test_ipv6_literal_targets_connect_over_ipv6() -> None:
    h = Harness()
    delivery, _ = h.deliver("http://[::1]:8080/x?y=1")
    assert h.network.connects == [("::1", 8080)]
    line, headers, _ = h.last.request()
    assert line == b"POST /x?y=1 HTTP/1.1"
    assert headers[b"host"] == [b"[::1]:8080"]
    h.last.respond(200)
    assert delivery.state == "delivered"
    h.finish()
