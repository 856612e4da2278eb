"""Tests for httprunner.site: the hardened HTTP transport.

Unit tests drive the whole factory (connection limiter, channel, request,
site) in memory with ``MemoryReactorClock`` and ``StringTransport``;
integration tests use real loopback sockets from a worker thread while the
reactor serves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from httprunner.site import (
    ACCESS_LOG_NAMESPACE,
    LINGER_SECONDS,
    HttpRunnerRequest,
    HttpRunnerSite,
    make_site,
    peer_key,
)

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 9000)


# -- fixtures ---------------------------------------------------------------


class EchoResource(Resource):
    """Answers with the length of the body it was given; records requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, object]] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        body = request.content.read()
        self.seen.append({"method": request.method, "body": body, "args": dict(request.args)})
        return b"%d" % (len(body),)


class PendingResource(Resource):
    """Answers only when the test says so (a long-running route)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list = []

    def render(self, request):  # type: ignore[no-untyped-def]
        self.pending.append(request)
        return NOT_DONE_YET


class FailingResource(Resource):
    isLeaf = True

    def render(self, request):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("boom")


class HalfClosingTransport(StringTransport):
    """A StringTransport that, like a TCP transport, can half-close."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Connection:
    """One in-memory client connection through the whole factory."""

    def __init__(self, factory, transport: StringTransport, peer=PEER) -> None:
        self.transport = transport
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("client went away")))

    def responses(self) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return parse_responses(self.transport.value())


def parse_responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split raw HTTP/1.1 responses (Content-Length framed or chunked)."""
    out = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            body, data = data[:n], data[n:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        else:
            body, data = data, b""
        out.append((status, headers, body))
    return out


class Harness:
    def __init__(self, resource=None, **limits) -> None:
        self.clock = MemoryReactorClock()
        self.resource = resource if resource is not None else EchoResource()
        limits.setdefault("max_body", 16)
        limits.setdefault("request_timeout", 0.5)
        limits.setdefault("idle_timeout", 60.0)
        self.factory = make_site(self.resource, reactor=self.clock, monotonic=self.clock.seconds, **limits)
        self.factory.doStart()

    def connect(self, transport_class=StringTransport, peer=PEER) -> Connection:
        transport = transport_class(hostAddress=HOST, peerAddress=peer)
        return Connection(self.factory, transport, peer)


def post(body: bytes, path: bytes = b"/", extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: localhost\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % (len(body),)
        + body
    )


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"


def access_events(events) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == ACCESS_LOG_NAMESPACE]


def assert_json_error(response, status: int, message: str, fragment: str) -> None:
    got_status, headers, body = response
    assert got_status == status
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    decoded = json.loads(body)
    assert decoded["message"] == message
    assert fragment in decoded["error"]


# -- body cap -----------------------------------------------------------------


def test_body_exactly_at_the_cap_reaches_the_resource():
    h = Harness(max_body=16)
    conn = h.connect()
    conn.send(post(b"x" * 16))
    [(status, _, body)] = conn.responses()
    assert (status, body) == (200, b"16")
    assert h.resource.seen[0]["body"] == b"x" * 16


def test_content_length_over_the_cap_is_refused_before_the_body():
    h = Harness(max_body=16)
    conn = h.connect(HalfClosingTransport)
    # Headers only: the answer must come without waiting for the body.
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 17\r\n\r\n")
    [response] = conn.responses()
    assert_json_error(response, 413, "Request Entity Too Large", "over the 16-byte limit")
    assert json.loads(response[2])["error"] == "request body is over the 16-byte limit"
    assert conn.transport.write_closed
    assert h.resource.seen == []


def test_expect_continue_over_the_cap_gets_no_100_continue():
    h = Harness(max_body=16)
    conn = h.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
    assert b"100 Continue" not in conn.transport.value()
    assert [r[0] for r in conn.responses()] == [413]


def test_expect_continue_under_the_cap_still_gets_100_continue():
    h = Harness(max_body=16)
    conn = h.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert conn.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_chunked_body_over_the_cap_is_refused_as_soon_as_it_passes():
    h = Harness(max_body=16)
    conn = h.connect()
    conn.send(CHUNKED_HEAD + chunked(b"a" * 10))
    assert conn.transport.value() == b""
    conn.send(chunked(b"b" * 7))  # 17 bytes in total, no final chunk yet
    [response] = conn.responses()
    assert_json_error(response, 413, "Request Entity Too Large", "over the 16-byte limit")
    assert h.resource.seen == []
    request = conn.protocol.wrappedProtocol.requests[-1]
    assert request.content.getvalue() == b"a" * 10  # the crossing chunk was not kept


def test_chunked_body_within_the_cap_is_accepted():
    h = Harness(max_body=16)
    conn = h.connect()
    conn.send(CHUNKED_HEAD + chunked(b"a" * 10, b"b" * 6) + b"0\r\n\r\n")
    assert [(s, b) for s, _, b in conn.responses()] == [(200, b"16")]
    assert h.resource.seen[0]["body"] == b"a" * 10 + b"b" * 6


def test_refused_connection_discards_input_then_is_aborted_after_lingering():
    h = Harness(max_body=16)
    conn = h.connect(HalfClosingTransport)
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
    answered = conn.transport.value()
    conn.send(b"z" * 50000)  # the client keeps uploading
    channel = conn.protocol.wrappedProtocol
    assert conn.transport.value() == answered  # nothing more written
    assert channel._buffer == b""  # nothing buffered either
    assert not conn.transport.aborted
    h.clock.advance(LINGER_SECONDS)
    assert conn.transport.aborted
    conn.lose()
    assert h.clock.getDelayedCalls() == []


def test_refused_client_that_closes_leaves_no_timer_behind():
    h = Harness(max_body=16)
    conn = h.connect(HalfClosingTransport)
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
    conn.lose()
    assert h.clock.getDelayedCalls() == []


# -- no form parsing --------------------------------------------------------------


def test_urlencoded_body_is_not_parsed_into_args():
    h = Harness(max_body=1024)
    conn = h.connect()
    body = b"command=echo&args=hi"
    conn.send(post(body, b"/?wait=5", b"Content-Type: application/x-www-form-urlencoded\r\n"))
    assert conn.responses()[0][0] == 200
    [seen] = h.resource.seen
    assert seen["body"] == body
    assert seen["args"] == {b"wait": [b"5"]}  # the query string still is


def test_multipart_body_is_not_parsed_into_args():
    h = Harness(max_body=1024)
    conn = h.connect()
    body = b'--XyZ\r\nContent-Disposition: form-data; name="command"\r\n\r\necho\r\n--XyZ--\r\n'
    conn.send(post(body, extra=b"Content-Type: multipart/form-data; boundary=XyZ\r\n"))
    assert conn.responses()[0][0] == 200
    [seen] = h.resource.seen
    assert seen["body"] == body
    assert seen["args"] == {}


# -- deadlines and idle connections ---------------------------------------------


def test_slow_client_is_cut_off_with_408_despite_steady_bytes():
    h = Harness(request_timeout=0.5, idle_timeout=60.0)
    conn = h.connect(HalfClosingTransport)
    request = post(b"0123456789")
    for byte in request[:8]:  # one byte every 0.1 s resets the idle timeout
        conn.send(bytes([byte]))
        h.clock.advance(0.1)
    [response] = conn.responses()
    assert_json_error(response, 408, "Request Timeout", "0.5 seconds")
    assert conn.transport.write_closed
    answered = conn.transport.value()
    conn.send(request[8:] + b"x" * 10000)  # the client goes on sending
    assert conn.transport.value() == answered  # no second answer
    assert conn.protocol.wrappedProtocol._buffer == b""  # and nothing kept
    assert h.resource.seen == []


def test_deadline_covers_the_body_too():
    h = Harness(request_timeout=0.5)
    conn = h.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12345")
    h.clock.advance(0.5)
    assert [r[0] for r in conn.responses()] == [408]


def test_complete_request_cancels_its_deadline():
    h = Harness(request_timeout=0.5, idle_timeout=60.0)
    conn = h.connect()
    conn.send(post(b"abc"))
    # Only the idle timeout of the keep-alive connection is left.
    assert [c.getTime() for c in h.clock.getDelayedCalls()] == [60.0]
    h.clock.advance(10)
    assert [r[0] for r in conn.responses()] == [200]
    assert not conn.transport.disconnecting
    conn.lose()
    assert h.clock.getDelayedCalls() == []


def test_idle_keep_alive_connection_closes_after_idle_timeout():
    h = Harness(request_timeout=0.5, idle_timeout=5.0)
    conn = h.connect()
    conn.send(post(b"abc"))
    h.clock.advance(4.9)
    assert not conn.transport.disconnecting
    h.clock.advance(0.1)
    assert conn.transport.disconnecting
    assert [r[0] for r in conn.responses()] == [200]  # closed quietly, no 408


def test_connection_lost_mid_request_cancels_the_deadline():
    h = Harness(request_timeout=0.5)
    conn = h.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: local")
    conn.lose()
    assert h.clock.getDelayedCalls() == []


def test_slow_answer_does_not_count_against_the_next_pipelined_request():
    resource = PendingResource()
    h = Harness(resource, request_timeout=0.5)
    conn = h.connect()
    conn.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    h.clock.advance(0.1)
    conn.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")  # pipelined while /1 runs
    h.clock.advance(5)  # the first answer takes far longer than the deadline
    assert conn.transport.value() == b""
    [first] = resource.pending
    first.write(b"one")
    first.finish()
    [second] = resource.pending[1:]
    second.write(b"two")
    second.finish()
    assert [(s, b) for s, _, b in conn.responses()] == [(200, b"one"), (200, b"two")]


def test_wall_clock_step_does_not_cut_a_request_short():
    now = [100.0]
    clock = MemoryReactorClock()
    factory = make_site(EchoResource(), reactor=clock, monotonic=lambda: now[0], request_timeout=10.0)
    conn = Connection(factory, StringTransport(hostAddress=HOST, peerAddress=PEER))
    conn.send(b"POST / HTTP/1.1\r\n")
    now[0] += 1.0
    clock.advance(10)  # the reactor's clock jumped; only 1 s really passed
    assert conn.transport.value() == b""
    now[0] += 9.0
    clock.advance(9)
    assert [r[0] for r in conn.responses()] == [408]


# -- response details --------------------------------------------------------------


def test_server_header_does_not_advertise_twisted():
    h = Harness()
    conn = h.connect()
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [(status, headers, _)] = conn.responses()
    assert headers[b"server"] == b"httprunner"
    assert b"Twisted" not in conn.transport.value()


def test_head_answers_headers_without_body():
    h = Harness()
    conn = h.connect()
    conn.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = conn.transport.value()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\n")
    assert b"Content-Length: 1\r\n" in raw


def test_unhandled_error_is_a_json_500_without_traceback():
    h = Harness(FailingResource())
    conn = h.connect()
    with capturedLogs() as events:
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    [(status, headers, body)] = conn.responses()
    assert status == 500
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {
        "message": "Internal Server Error",
        "error": "internal server error",
    }
    assert any(isinstance(e.get("log_failure"), Failure) for e in events)


# -- access log -------------------------------------------------------------------


def test_one_structured_access_event_per_request():
    h = Harness(max_body=1024)
    conn = h.connect()
    with capturedLogs() as events:
        h.clock.advance(1)  # any start time
        conn.send(
            b"POST /jobs?token=secret HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer s3cr3t-token\r\nContent-Length: 5\r\n\r\n"
        )
        h.clock.advance(0.25)
        conn.send(b"hello")
    [event] = access_events(events)
    assert event["method"] == "POST"
    assert event["path"] == "/jobs"  # the query string is not logged
    assert event["status"] == 200
    assert event["bytes"] == 1
    assert event["duration"] == pytest.approx(0.25)
    assert event["peer"] == "127.0.0.1:40000"
    assert event["completed"] is True
    assert formatEvent(event) == "POST /jobs -> 200 (0.250s, 1 bytes, 127.0.0.1:40000)"
    everything = repr([dict(e) for e in events])
    assert "s3cr3t-token" not in everything
    assert "secret" not in everything
    # twisted.web's combined log line is gone: nothing else mentions the request.
    assert [e for e in events if "/jobs" in repr(e) and e is not event] == []


def test_request_abandoned_by_its_client_is_logged_once():
    resource = PendingResource()
    h = Harness(resource)
    conn = h.connect()
    with capturedLogs() as events:
        conn.send(b"GET /follow HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = resource.pending
        request.write(b"partial")
        h.clock.advance(2)
        conn.lose()
    [event] = access_events(events)
    assert (event["path"], event["status"], event["bytes"]) == ("/follow", 200, 7)
    assert event["completed"] is False
    assert event["duration"] == pytest.approx(2)
    assert formatEvent(event).endswith("client went away")


def test_refusals_are_logged_as_access_events():
    h = Harness(max_body=16, request_timeout=0.5)
    with capturedLogs() as events:
        h.connect().send(b"PUT /up HTTP/1.1\r\nContent-Length: 99\r\n\r\n")
        h.connect().send(b"GET /slow HTTP/1.1\r\n")
        h.clock.advance(0.5)
    assert [(e["method"], e["path"], e["status"]) for e in access_events(events)] == [
        ("PUT", "/up", 413),
        ("GET", "/slow", 408),
    ]


def test_percent_encoded_control_characters_cannot_forge_a_log_line():
    h = Harness()
    conn = h.connect()
    path = b"/x%0a2026-01-01%20GET%20/admin%20-%3E%20200%0d%1b[31mred"
    with capturedLogs() as events:
        conn.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    [event] = access_events(events)
    assert event["path"] == path.decode()  # the raw value, not decoded
    assert event["status"] == 200
    text = formatEvent(event)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text


def test_raw_control_characters_in_a_path_are_escaped_in_the_text():
    # twisted.web 26.10 refuses such request lines itself; the log must be safe
    # even when a request (another Twisted version, a proxy) carries them.
    h = Harness()
    site: HttpRunnerSite = h.factory.wrappedFactory
    conn = h.connect()
    request = HttpRunnerRequest(conn.protocol.wrappedProtocol)
    request.method = b"GET"
    request.path = b"/a\nGET /forged -> 200 (0.001s)\x1b[2J"
    request.code = 404
    with capturedLogs() as events:
        site.log(request)
    [event] = access_events(events)
    assert event["path"] == "/a\nGET /forged -> 200 (0.001s)\x1b[2J"
    text = formatEvent(event)
    assert "\n" not in text and "\x1b" not in text
    assert "'/a\\nGET /forged -> 200 (0.001s)\\x1b[2J'" in text


# -- connection limits ------------------------------------------------------------


def test_connections_over_the_per_peer_limit_get_503_and_are_closed():
    h = Harness(max_connections=10, max_connections_per_peer=2)
    first, second = h.connect(), h.connect()
    with capturedLogs() as events:
        third = h.connect()
    [response] = third.responses()
    assert_json_error(response, 503, "Service Unavailable", "too many connections")
    assert response[1][b"retry-after"] == b"1"
    assert third.transport.disconnecting
    assert any(e.get("limit") == "per-peer" for e in events)
    # Another address is still welcome, and the first two are served.
    other = h.connect(peer=IPv4Address("TCP", "127.0.0.2", 1))
    for conn in (first, second, other):
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [r[0] for r in conn.responses()] == [200]


def test_connections_over_the_total_limit_are_refused_until_one_closes():
    h = Harness(max_connections=2, max_connections_per_peer=2)
    a = h.connect(peer=IPv4Address("TCP", "10.0.0.1", 1))
    h.connect(peer=IPv4Address("TCP", "10.0.0.2", 1))
    refused = h.connect(peer=IPv4Address("TCP", "10.0.0.3", 1))
    assert [r[0] for r in refused.responses()] == [503]
    a.lose()
    late = h.connect(peer=IPv4Address("TCP", "10.0.0.3", 1))
    late.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r[0] for r in late.responses()] == [200]
    assert h.factory.connections_per_peer == {"10.0.0.2": 1, "10.0.0.3": 1}


def test_unix_socket_peers_count_as_one_peer():
    h = Harness(max_connections=10, max_connections_per_peer=1)
    h.connect(peer=UNIXAddress(None))
    refused = h.connect(peer=UNIXAddress(b"/tmp/other-client"))
    assert [r[0] for r in refused.responses()] == [503]


def test_peer_key_groups_addresses_by_host():
    assert peer_key(IPv4Address("TCP", "192.0.2.1", 1)) == "192.0.2.1"
    assert peer_key(IPv6Address("TCP", "::ffff:192.0.2.1", 1)) == "192.0.2.1"
    assert peer_key(IPv6Address("TCP", "fe80::1%eth0", 1)) == "fe80::1"
    assert peer_key(UNIXAddress(None)) == "unix"


def test_refusal_warnings_are_rate_limited():
    h = Harness(max_connections=1, max_connections_per_peer=1)
    h.connect()
    with capturedLogs() as events:
        for _ in range(50):
            h.connect()
    assert len([e for e in events if "limit" in e]) == 1
    assert h.factory.refused_connections == 50


@pytest.mark.parametrize(
    "limits",
    [
        {"max_body": -1},
        {"request_timeout": 0},
        {"idle_timeout": -1.0},
        {"max_connections": 0},
        {"max_connections_per_peer": 0},
    ],
)
def test_out_of_range_limits_are_rejected(limits):
    with pytest.raises(ValueError):
        make_site(EchoResource(), reactor=MemoryReactorClock(), **limits)


# -- integration over real loopback sockets ------------------------------------------


@contextmanager
def listening(resource=None, **limits) -> Iterator[tuple[int, EchoResource, list]]:
    """Serve on 127.0.0.1 (port 0); yield the port, the resource and the
    largest body each request ever held in memory."""
    resource = resource if resource is not None else EchoResource()
    factory = make_site(resource, reactor=reactor, **limits)
    held: list[int] = []

    class MeasuringRequest(HttpRunnerRequest):
        def handleContentChunk(self, data: bytes) -> None:
            super().handleContentChunk(data)
            if not self.content.closed:
                held.append(self.content.tell())

    factory.wrappedFactory.requestFactory = MeasuringRequest
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield port.getHost().port, resource, held
    finally:
        port.stopListening()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read one Content-Length framed response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    length = int(
        [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")][0].split(b":")[1]
    )
    while len(data) < len(head) + 4 + length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return parse_responses(data)[0]


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(1000):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def upload_and_read(port: int, head: bytes, body_chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send ``head`` then ``body_chunk`` repeatedly (``total`` bytes) while the
    server may answer early; return what the server said and how much was sent."""
    sock = connect(port)
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(body_chunk)
            sent += len(body_chunk)
    except OSError:
        pass  # the server stopped reading: expected once it has answered
    try:
        return read_until_closed(sock), sent
    finally:
        sock.close()


@pytest_twisted.inlineCallbacks
def test_loopback_body_at_the_cap_is_served_and_one_byte_over_is_refused_early():
    with listening(max_body=65536) as (port, resource, _):

        def client():
            sock = connect(port)
            sock.sendall(post(b"x" * 65536))
            at_cap = read_response(sock)
            sock.close()
            sock = connect(port)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n")
            over = read_until_closed(sock)  # answered with no body byte sent
            sock.close()
            return at_cap, over

        at_cap, over = yield threads.deferToThread(client)
    assert at_cap[0] == 200 and at_cap[2] == b"65536"
    [(status, _, body)] = parse_responses(over)
    assert status == 413
    assert json.loads(body) == {
        "message": "Request Entity Too Large",
        "error": "request body is over the 65536-byte limit",
    }
    assert [len(s["body"]) for s in resource.seen] == [65536]


@pytest_twisted.inlineCallbacks
def test_loopback_50_megabyte_uploads_are_refused_without_buffering():
    mb50 = 50 * 1024 * 1024
    with listening(max_body=65536) as (port, resource, held):
        declared = yield threads.deferToThread(
            upload_and_read,
            port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (mb50,),
            b"x" * 65536,
            mb50,
        )
        streamed = yield threads.deferToThread(upload_and_read, port, CHUNKED_HEAD, chunked(b"y" * 65536), mb50)
    for answer, _ in (declared, streamed):
        [(status, _, body)] = parse_responses(answer)
        assert status == 413
        assert json.loads(body)["error"] == "request body is over the 65536-byte limit"
    assert resource.seen == []
    assert held and max(held) <= 65536  # only the chunked body ever held bytes


@pytest_twisted.inlineCallbacks
def test_loopback_form_body_reaches_the_resource_raw():
    with listening(max_body=1024) as (port, resource, _):

        def client():
            sock = connect(port)
            sock.sendall(post(b"a=1&b=2", extra=b"Content-Type: application/x-www-form-urlencoded\r\n"))
            try:
                return read_response(sock)
            finally:
                sock.close()

        status, _, _ = yield threads.deferToThread(client)
    assert status == 200
    assert resource.seen[0]["body"] == b"a=1&b=2"
    assert resource.seen[0]["args"] == {}


@pytest_twisted.inlineCallbacks
def test_loopback_slow_client_gets_408():
    with listening(request_timeout=0.5) as (port, resource, _):

        def client():
            sock = connect(port)
            sock.settimeout(5)
            request = post(b"0123456789")
            answer = b""
            for byte in request:  # 0.1 s per byte: never idle, never finished
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
                sock.settimeout(0.1)
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
                break
            sock.settimeout(5)
            try:
                return answer + read_until_closed(sock)
            finally:
                sock.close()

        answer = yield threads.deferToThread(client)
    [(status, _, body)] = parse_responses(answer)
    assert status == 408
    assert json.loads(body)["message"] == "Request Timeout"
    assert resource.seen == []


@pytest_twisted.inlineCallbacks
def test_loopback_connection_limits_refuse_the_extra_socket_and_keep_serving():
    with listening(max_connections=3, max_connections_per_peer=2) as (port, _, _held):

        def client():
            results = {}
            served = [connect(port), connect(port)]
            for sock in served:  # make sure the server has accepted both
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock)[0] == 200
            extra = connect(port)  # a third from 127.0.0.1: over the per-peer cap
            results["per_peer"] = read_until_closed(extra)
            extra.close()
            other = connect(port, source="127.0.0.2")  # another peer: welcome
            other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            results["other"] = read_response(other)[0]
            fourth = connect(port, source="127.0.0.3")  # over the total cap
            results["total"] = read_until_closed(fourth)
            fourth.close()
            results["still_served"] = []
            for sock in served:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                results["still_served"].append(read_response(sock)[0])
                sock.close()
            other.close()
            return results

        results = yield threads.deferToThread(client)
    assert parse_responses(results["per_peer"])[0][0] == 503
    assert results["other"] == 200
    assert parse_responses(results["total"])[0][0] == 503
    assert results["still_served"] == [200, 200]


@pytest_twisted.inlineCallbacks
def test_unix_socket_connections_share_one_peer_limit():
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "s")
    factory = make_site(EchoResource(), reactor=reactor, max_connections_per_peer=1)
    port = reactor.listenUNIX(path, factory)
    try:

        def client():
            first = socket.socket(socket.AF_UNIX)
            first.settimeout(10)
            first.connect(path)
            first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            served = read_response(first)[0]
            second = socket.socket(socket.AF_UNIX)
            second.settimeout(10)
            second.connect(path)
            refused = read_until_closed(second)
            second.close()
            first.close()
            return served, refused

        served, refused = yield threads.deferToThread(client)
    finally:
        yield port.stopListening()
        shutil.rmtree(directory, ignore_errors=True)
    assert served == 200
    assert parse_responses(refused)[0][0] == 503


def test_without_the_access_log_requests_are_still_counted():
    seen = []
    h = Harness(access_log=False, on_request=lambda path, method, status: seen.append((path, method, status)))
    with capturedLogs() as events:
        h.connect().send(b"GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n")
        h.connect().send(b"PUT /up HTTP/1.1\r\nContent-Length: 99\r\n\r\n")
    assert access_events(events) == []
    assert seen == [("/jobs", "GET", 200), ("/up", "PUT", 413)]
