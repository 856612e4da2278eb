"""Integration tests for httprunner.callbacks: real receivers on loopback, the real reactor.

Each receiver is a twisted.web Site on port 0; the Notifier uses the real
reactor, its real name resolver and real TCP connections.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import resource, server
from zope.interface import implementer

from httprunner.callbacks import SHUTDOWN_ERROR, CallbackDelivery, CallbackGuard, Notifier

JOB_ID = "89abcdef0123456789abcdef0123456789abcdef"
BODY = json.dumps({"id": JOB_ID, "stdout": "héllo ✓\n", "code": 0}, ensure_ascii=False).encode()


class Receiver(resource.Resource):
    """Answers each POST with the next scripted behaviour and records what arrived.

    A behaviour is a status code, ``"hang"`` (never answer), ``("redirect", path)``
    or ``("huge", nbytes)``.
    """

    isLeaf = True

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.lost: list[Deferred[None]] = []
        self.arrived: Deferred[None] = Deferred()

    def render(self, request: server.Request) -> bytes | int:
        self.requests.append(
            {
                "method": request.method,
                "path": request.uri,
                "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                "body": request.content.read(),
            }
        )
        if not self.arrived.called:
            self.arrived.callback(None)
        behaviour = self.script.pop(0) if self.script else 200
        if behaviour == "hang":
            finished = request.notifyFinish()
            finished.addErrback(lambda f: None)
            self.lost.append(finished)
            return server.NOT_DONE_YET
        if isinstance(behaviour, tuple) and behaviour[0] == "redirect":
            request.setResponseCode(302)
            request.setHeader(b"Location", behaviour[1].encode())
            return b""
        if isinstance(behaviour, tuple) and behaviour[0] == "huge":
            request.setHeader(b"Content-Length", str(behaviour[1]).encode())
            request.write(b"x" * behaviour[1])
            finished = request.notifyFinish()
            finished.addErrback(lambda f: None)
            request.finish()
            return server.NOT_DONE_YET
        request.setResponseCode(behaviour)
        return b'{"ok": true}'


class Listening:
    def __init__(self, receiver: Receiver, interface: str = "127.0.0.1") -> None:
        site = server.Site(receiver)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface=interface)
        self.number: int = self.port.getHost().port

    def stop(self) -> Deferred[None]:
        return self.port.stopListening()


def _delivery() -> CallbackDelivery:
    return CallbackDelivery()


@pytest_twisted.ensureDeferred
async def test_a_real_receiver_gets_the_signed_post() -> None:
    key = b"integration-secret"
    receiver = Receiver([200])
    listening = Listening(receiver)
    notifier = Notifier(reactor, guard=CallbackGuard(), secret=key, timeout=5.0)
    try:
        delivery = await notifier.deliver(
            JOB_ID, f"http://127.0.0.1:{listening.number}/hooks/done?x=1", BODY, _delivery()
        )
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert delivery.to_json() == {"state": "delivered", "attempts": 1, "last_status": 200, "last_error": None}
    [request] = receiver.requests
    headers = request["headers"]
    assert (request["method"], request["path"], request["body"]) == (b"POST", b"/hooks/done?x=1", BODY)
    assert headers[b"content-type"] == [b"application/json"]
    assert headers[b"accept"] == [b"application/json"]
    assert headers[b"content-length"] == [str(len(BODY)).encode()]
    assert headers[b"host"] == [f"127.0.0.1:{listening.number}".encode()]
    assert int(headers[b"x-notify-timestamp"][0]) // 1000 == int(headers[b"webhook-timestamp"][0])
    assert headers[b"webhook-id"] == [JOB_ID.encode()]
    signed = f"{JOB_ID}.{headers[b'webhook-timestamp'][0].decode()}.".encode() + BODY
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    assert headers[b"webhook-signature"] == [b"v1," + expected]


@pytest_twisted.ensureDeferred
async def test_a_receiver_failing_twice_gets_it_on_the_third_attempt() -> None:
    receiver = Receiver([500, 500, 200])
    listening = Listening(receiver)
    notifier = Notifier(reactor, guard=CallbackGuard(), secret=None, backoff_base=0.01, timeout=5.0)
    try:
        delivery = await notifier.deliver(JOB_ID, f"http://127.0.0.1:{listening.number}/", BODY, _delivery())
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert delivery.to_json() == {"state": "delivered", "attempts": 3, "last_status": 200, "last_error": None}
    assert [r["body"] for r in receiver.requests] == [BODY, BODY, BODY]


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_fails_after_the_timeout() -> None:
    receiver = Receiver(["hang", "hang"])
    listening = Listening(receiver)
    notifier = Notifier(reactor, guard=CallbackGuard(), secret=None, attempts=2, timeout=0.3, backoff_base=0.01)
    try:
        delivery = await notifier.deliver(JOB_ID, f"http://127.0.0.1:{listening.number}/", BODY, _delivery())
        # The receiver sees both hung connections dropped by us.
        for lost in receiver.lost:
            await lost
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert delivery.to_json() == {
        "state": "failed",
        "attempts": 2,
        "last_status": None,
        "last_error": "timed out after 0.3 s",
    }
    assert len(receiver.requests) == 2


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_not_followed() -> None:
    receiver = Receiver([("redirect", "/elsewhere")])
    listening = Listening(receiver)
    notifier = Notifier(reactor, guard=CallbackGuard(), secret=None, backoff_base=0.01, timeout=5.0)
    try:
        delivery = await notifier.deliver(JOB_ID, f"http://127.0.0.1:{listening.number}/hook", BODY, _delivery())
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 1, 302)
    assert [r["path"] for r in receiver.requests] == [b"/hook"]


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback (::1) here")
@pytest_twisted.ensureDeferred
async def test_an_ipv6_literal_receiver() -> None:
    receiver = Receiver([200])
    listening = Listening(receiver, interface="::1")
    notifier = Notifier(reactor, guard=CallbackGuard(["::1"]), secret=None, timeout=5.0)
    try:
        delivery = await notifier.deliver(JOB_ID, f"http://[::1]:{listening.number}/v6", BODY, _delivery())
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert delivery.state == "delivered"
    [request] = receiver.requests
    assert request["headers"][b"host"] == [f"[::1]:{listening.number}".encode()]
    assert request["body"] == BODY


class CountingProtocol(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)  # type: ignore[attr-defined]
        super().dataReceived(data)


class CountingFactory(WrappingFactory):
    protocol = CountingProtocol

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.received = 0


@implementer(IStreamClientEndpoint)
class CountingEndpoint:
    """Real TCP to the checked address, counting the bytes our HTTP client reads."""

    def __init__(self, address: str, port: int, totals: list[CountingFactory]) -> None:
        self._endpoint = TCP4ClientEndpoint(reactor, address, port)
        self._totals = totals

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        counting = CountingFactory(protocolFactory)
        self._totals.append(counting)
        # The pool expects the HTTP protocol itself, not our wrapper.
        return self._endpoint.connect(counting).addCallback(lambda wrapper: wrapper.wrappedProtocol)


@pytest_twisted.ensureDeferred
async def test_a_ten_megabyte_answer_is_not_read() -> None:
    size = 10 * 1024 * 1024
    receiver = Receiver([("huge", size)])
    listening = Listening(receiver)
    totals: list[CountingFactory] = []
    notifier = Notifier(
        reactor,
        guard=CallbackGuard(),
        secret=None,
        timeout=5.0,
        endpoint_factory=lambda address, port: CountingEndpoint(address, port, totals),
    )
    try:
        delivery = await notifier.deliver(JOB_ID, f"http://127.0.0.1:{listening.number}/", BODY, _delivery())
    finally:
        await notifier.stop(1.0)
        await listening.stop()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert len(totals) == 1
    assert 0 < totals[0].received < 1024 * 1024  # a few network reads, not 10 MB


@pytest_twisted.ensureDeferred
async def test_a_host_name_is_resolved_by_the_reactor_and_checked() -> None:
    receiver = Receiver([200])
    listening = Listening(receiver)
    allowed = Notifier(reactor, guard=CallbackGuard(["127.0.0.0/8"]), secret=None, timeout=5.0)
    restricted = Notifier(reactor, guard=CallbackGuard(["10.0.0.0/8"]), secret=None, timeout=5.0)
    url = f"http://localhost:{listening.number}/named"
    try:
        refused = await restricted.deliver(JOB_ID, url, BODY, _delivery())
        delivered = await allowed.deliver(JOB_ID, url, BODY, _delivery())
    finally:
        await allowed.stop(1.0)
        await restricted.stop(1.0)
        await listening.stop()
    assert (refused.state, refused.attempts) == ("refused", 0)
    assert "not allowed by --callback-allow" in (refused.last_error or "")
    assert delivered.state == "delivered"
    assert len(receiver.requests) == 1
    assert receiver.requests[0]["headers"][b"host"] == [f"localhost:{listening.number}".encode()]


@pytest_twisted.ensureDeferred
async def test_shutdown_gives_a_hung_delivery_only_the_grace() -> None:
    receiver = Receiver(["hang"])
    listening = Listening(receiver)
    notifier = Notifier(reactor, guard=CallbackGuard(), secret=None, timeout=30.0)
    delivery = _delivery()
    try:
        done = notifier.deliver(JOB_ID, f"http://127.0.0.1:{listening.number}/", BODY, delivery)
        await receiver.arrived
        await notifier.stop(0.2)
        assert done.called
        for lost in receiver.lost:
            await lost
    finally:
        await listening.stop()
    assert delivery.state == "failed" and delivery.last_error == SHUTDOWN_ERROR


@pytest_twisted.ensureDeferred
async def test_a_delivery_left_pending_at_shutdown_resumes_in_a_new_notifier() -> None:
    # The outbox over real sockets: the first daemon's notifier is stopped
    # while the receiver hangs; the record, kept as JSON text, is resumed by
    # a second notifier and delivered on its next attempt number.
    receiver = Receiver([503, "hang", 200])
    listening = Listening(receiver)
    stored: dict[str, str] = {}

    def persist(job_id: str, delivery: CallbackDelivery) -> None:
        stored[job_id] = json.dumps(delivery.to_json())

    url = f"http://127.0.0.1:{listening.number}/hook"
    first = Notifier(
        reactor,
        guard=CallbackGuard(),
        secret=None,
        timeout=30.0,
        backoff_base=0.01,
        on_change=persist,
        abandon_as_pending=True,
    )
    second = Notifier(reactor, guard=CallbackGuard(), secret=None, timeout=5.0, on_change=persist)
    try:
        done = first.deliver(JOB_ID, url, BODY, _delivery())
        while len(receiver.requests) < 2:  # the 503, then the attempt that hangs
            await receiver.arrived
            receiver.arrived = Deferred()
        await first.stop(0.2)
        abandoned = await done
        assert abandoned.to_json() == {
            "state": "pending",
            "attempts": 1,
            "last_status": 503,
            "last_error": "HTTP 503 Service Unavailable",
        }
        for lost in receiver.lost:  # the hung attempt was dropped, not left open
            await lost
        resumed = CallbackDelivery.from_json(json.loads(stored[JOB_ID]))
        delivery = await second.deliver(JOB_ID, url, BODY, resumed)
    finally:
        await second.stop(1.0)
        await listening.stop()
    assert delivery.to_json() == {"state": "delivered", "attempts": 2, "last_status": 200, "last_error": None}
    assert json.loads(stored[JOB_ID]) == delivery.to_json()
    assert [r["body"] for r in receiver.requests] == [BODY, BODY, BODY]
