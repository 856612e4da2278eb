"""Unit tests for httprunner.notify: in memory, with a Clock, a fake resolver and fake TCP.

The fake network hands the Notifier's HTTP client a protocol connected to a
StringTransport, so each test sees the exact request bytes on the wire and
answers with exact response bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from httprunner.notify import (
    MAX_CALLBACK_URL_BYTES,
    SHUTDOWN_ERROR,
    CallbackDelivery,
    CallbackGuard,
    CallbackURLError,
    Notifier,
    check_callback_url,
    load_callback_secret,
    normalize_ipv4,
    parse_callback_url,
)

JOB_ID = "0123456789abcdef0123456789abcdef01234567"
BODY = json.dumps({"id": JOB_ID, "stdout": "naïve ✓ 日本\n", "code": 0}, ensure_ascii=False).encode()
NOW = 1_700_000_000.25


# ---------------------------------------------------------------------------
# Fakes


@implementer(IHostResolution)
class FakeResolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers from a table; names in ``hanging`` never complete."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.hanging: set[str] = set()
        self.queries: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> FakeResolution:
        self.queries.append(hostName)
        resolution = FakeResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.hanging:
            return resolution
        for address in self.table.get(hostName, []):
            cls = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(cls("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class FakeReactor(Clock):
    """A Clock with a pluggable name resolver: all the Notifier needs."""

    def __init__(self, resolver: FakeResolver) -> None:
        super().__init__()
        self.nameResolver = resolver
        self.rightNow = NOW


class FakeTransport(StringTransport):
    """Like a TCP connection: closing (or stopProducing) runs connectionLost."""

    protocol: Any

    def loseConnection(self) -> None:
        if self.connected:
            self.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone("closed")))

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass  # a TCP transport has it; the HTTP client sets it through TLS

    def stopProducing(self) -> None:
        # twisted.internet.abstract.FileDescriptor.stopProducing closes.
        self.stopped_producing = True
        self.loseConnection()


class FakeConnection:
    def __init__(self, address: str, port: int, protocol: Any, transport: FakeTransport) -> None:
        self.address = address
        self.port = port
        self.protocol = protocol
        self.transport = transport
        self.requests: list[bytes] = []

    def request(self) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
        """The request line, headers (lower-case names) and body sent so far."""
        raw = self.transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        line, *header_lines = head.split(b"\r\n")
        headers: dict[bytes, list[bytes]] = {}
        for header_line in header_lines:
            name, _, value = header_line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return line, headers, body

    def respond(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, close: bool = True
    ) -> None:
        lines = [f"HTTP/1.1 {status} Whatever"]
        all_headers = {"Content-Length": str(len(body))}
        all_headers.update(headers or {})
        if close:
            all_headers["Connection"] = "close"
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        self.requests.append(self.transport.value())
        self.transport.clear()
        self.protocol.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        if close:
            self.transport.loseConnection()


class FakeNetwork:
    """The Notifier's endpoint_factory: records where it connects."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.connections: list[FakeConnection] = []
        self.refusing: set[str] = set()

    def endpoint(self, address: str, port: int) -> IStreamClientEndpoint:
        return FakeEndpoint(self, address, port)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    def __init__(self, network: FakeNetwork, address: str, port: int) -> None:
        self.network = network
        self.address = address
        self.port = port

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        self.network.connects.append((self.address, self.port))
        if self.address in self.network.refusing:
            return fail(ConnectionRefusedError(self.address))
        cls = IPv6Address if ":" in self.address else IPv4Address
        peer = cls("TCP", self.address, self.port)
        protocol = protocolFactory.buildProtocol(peer)
        transport = FakeTransport(peerAddress=peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.network.connections.append(FakeConnection(self.address, self.port, protocol, transport))
        return succeed(protocol)


class Harness:
    def __init__(self, table: dict[str, list[str]] | None = None, **kwargs: Any) -> None:
        self.resolver = FakeResolver(table)
        self.reactor = FakeReactor(self.resolver)
        self.network = FakeNetwork()
        kwargs.setdefault("guard", CallbackGuard())
        kwargs.setdefault("secret", None)
        self.notifier = Notifier(self.reactor, endpoint_factory=self.network.endpoint, **kwargs)

    def deliver(self, url: str, body: bytes = BODY, job_id: str = JOB_ID) -> tuple[CallbackDelivery, list[Any]]:
        delivery = CallbackDelivery()
        results: list[Any] = []
        self.notifier.deliver(job_id, url, body, delivery).addBoth(results.append)
        return delivery, results

    @property
    def last(self) -> FakeConnection:
        return self.network.connections[-1]

    def finish(self) -> None:
        """Stop the notifier; afterwards no timer may be left."""
        stopped: list[Any] = []
        self.notifier.stop(0).addBoth(stopped.append)
        assert stopped == [None]
        assert self.reactor.getDelayedCalls() == []


def test_fakes_provide_the_interfaces_they_replace() -> None:
    harness = Harness()
    assert verifyObject(IHostnameResolver, harness.resolver)
    assert verifyObject(IReactorTime, harness.reactor)
    assert verifyObject(IStreamClientEndpoint, harness.network.endpoint("127.0.0.1", 80))
    assert verifyObject(IHostResolution, FakeResolution("x"))


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
# URL checks at submission

LONG_HOST_URL = "http://example.com/" + "a" * (MAX_CALLBACK_URL_BYTES - len("http://example.com/"))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://example.com:8443/hook?x=1&y=%20",
        "HTTP://Example.COM/",
        "http://[::1]:8080/x",
        "http://127.0.0.1:9000",
        "http://internal_host.lan/cb",
        "http://bücher.example/ü",
        LONG_HOST_URL,  # exactly 2048 bytes
    ],
)
def test_valid_callback_urls_are_accepted_unchanged(url: str) -> None:
    assert check_callback_url(url, CallbackGuard()) == url


@pytest.mark.parametrize("value", [None, ""])
def test_null_or_empty_callback_means_no_callback(value: Any) -> None:
    assert check_callback_url(value, CallbackGuard()) is None


@pytest.mark.parametrize(
    "value, message",
    [
        (123, "must be a string"),
        (["http://example.com/"], "must be a string"),
        ({"url": "http://example.com/"}, "must be a string"),
        ("ftp://example.com/x", "absolute http or https"),
        ("javascript:alert(1)", "absolute http or https"),
        ("example.com/hook", "absolute http or https"),
        ("/relative/path", "absolute http or https"),
        ("http:example.com", "absolute http or https"),
        ("http://user:pw@example.com/", "user information"),
        ("http://user@example.com/", "user information"),
        ("http://good.example\\@evil.example/", "user information"),
        ("http://example.com/\r\nX-Injected: 1", "control characters"),
        ("http://example.com/a\nb", "control characters"),
        ("http://exa\tmple.com/", "control characters"),
        ("http://example.com/\x00", "control characters"),
        ("http://example.com/\x7f", "control characters"),
        ("http://example.com/a b", "whitespace"),
        (LONG_HOST_URL + "a", "longer than 2048 bytes"),
        ("http://example.com/" + "é" * 1100, "longer than 2048 bytes"),  # < 2048 chars
        ("http:///nohost", "absolute http or https"),
        ("http://:80/", "no host"),
        ("http://example.com:0/", "port"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://example.com:abc/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://1.2.3.256/", "not a valid IPv4 address"),
        ("http://1.2.3.4.5/", "not a valid IPv4 address"),
        ("http://ex%61mple.com/", "not a valid host name"),
        ("http://exa!mple.com/", "not a valid host name"),
        ("http://\ud800.example/", "not valid Unicode"),
    ],
)
def test_bad_callback_urls_are_rejected_with_a_reason(value: Any, message: str) -> None:
    with pytest.raises(CallbackURLError) as excinfo:
        check_callback_url(value, CallbackGuard())
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.0.0.0x1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("example.com", None),
        ("1.2.3.4.example", None),
        ("0x7f.example", None),
    ],
)
def test_numeric_hosts_are_normalised_like_inet_aton(host: str, expected: str | None) -> None:
    result = normalize_ipv4(host)
    assert (str(result) if result is not None else None) == expected


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1.2.65536", "4294967296", "08.0.0.1", "1.2.3.09"]
)
def test_numeric_hosts_that_are_no_address_are_errors(host: str) -> None:
    with pytest.raises(ValueError):
        normalize_ipv4(host)


def test_parsed_target_for_ipv6_literal_keeps_brackets_in_host_header() -> None:
    target = parse_callback_url("http://[::1]:8080/x?q=1#frag")
    assert (target.host, target.port, target.request_target, target.authority) == (
        "::1",
        8080,
        "/x?q=1",
        "[::1]:8080",
    )
    assert parse_callback_url("https://[::1]/").authority == "[::1]"


def test_parsed_target_encodes_non_ascii_path_and_idn_host() -> None:
    target = parse_callback_url("http://Bücher.Example:80/ü?q=é")
    assert target.host == "xn--bcher-kva.example"
    assert target.authority == "xn--bcher-kva.example"
    assert target.request_target == "/%C3%BC?q=%C3%A9"


# ---------------------------------------------------------------------------
# The guard


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",  # the same address, numeric
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    ],
)
def test_link_local_literal_targets_are_refused_at_submission(url: str) -> None:
    with pytest.raises(CallbackURLError, match="link-local"):
        check_callback_url(url, CallbackGuard())


def test_link_local_is_allowed_when_listed_explicitly() -> None:
    guard = CallbackGuard(["169.254.169.254", "fe80::/10"])
    assert check_callback_url("http://169.254.169.254/x", guard) is not None
    assert check_callback_url("http://[fe80::1]/x", guard) is not None


def test_allow_list_refuses_literal_targets_outside_it_at_submission() -> None:
    guard = CallbackGuard(["10.0.0.0/8", "hooks.example.com"])
    assert check_callback_url("http://10.1.2.3/x", guard)
    assert check_callback_url("http://0x0a000001/x", guard)  # 10.0.0.1
    for url in ("http://192.168.1.1/x", "http://127.1/x", "http://2130706433/x", "http://[::1]/x"):
        with pytest.raises(CallbackURLError, match="not allowed by --callback-allow"):
            check_callback_url(url, guard)
    # Names are resolved and checked at delivery, not at submission.
    assert check_callback_url("http://other.example.com/x", guard)


def test_allow_list_entries_are_normalised() -> None:
    guard = CallbackGuard([" Hooks.Example.COM. ", "127.1", "[::1]", "fd00::/8"])
    assert guard.names == frozenset({"hooks.example.com"})
    assert [str(n) for n in guard.networks] == ["127.0.0.1/32", "::1/128", "fd00::/8"]
    assert guard.restricted
    assert not CallbackGuard().restricted


@pytest.mark.parametrize(
    "entry, message",
    [
        ("", "empty entry"),
        ("   ", "empty entry"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("10.0.0.1/8", "not a valid CIDR"),  # host bits set
        ("10.0.0.0/abc", "not a valid CIDR"),
        ("*.example.com", "wildcards"),
        ("example.com:8080", "without a port"),
        ("not a host!", "not a valid host name"),
        ("1.2.3.256", "not a valid IPv4 address"),
        ("fe80::1%eth0", "zone"),
        ("::g", "not a valid IPv6 address"),
    ],
)
def test_bad_allow_entries_stop_startup_with_one_line(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        CallbackGuard(["10.0.0.0/8", entry])
    text = str(excinfo.value)
    assert text.startswith("--callback-allow ")
    assert message in text
    assert "\n" not in text


# ---------------------------------------------------------------------------
# The secret file


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"whsec_" + _b64(b"\x00\x01binary-key\xff").encode() + b"\n", b"\x00\x01binary-key\xff"),
        (b"  plain secret  \nsecond line ignored\n", b"plain secret"),
        (b"s\xc3\xa9cret\r\n", "sécret".encode()),
        (b"no-newline", b"no-newline"),
    ],
)
def test_secret_file_formats(tmp_path: Any, content: bytes, expected: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert load_callback_secret(str(path)) == expected


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"\nsecret on line two\n", "is empty"),
        (b"whsec_!!!not-base64\n", "not valid base64"),
        (b"whsec_\n", "is empty"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_bad_secret_files_are_errors(tmp_path: Any, content: bytes, message: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_callback_secret(str(path))


def test_missing_secret_file_is_a_one_line_error(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="cannot read callback secret file") as excinfo:
        load_callback_secret(str(tmp_path / "absent"))
    assert "\n" not in str(excinfo.value)


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


def _verify_standard_webhook(key: bytes, headers: dict[bytes, list[bytes]], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec independently of notify.py."""
    msg_id = headers[b"webhook-id"][0].decode()
    timestamp = headers[b"webhook-timestamp"][0].decode()
    signed_content = f"{msg_id}.{timestamp}.{body.decode('utf-8')}"
    expected = base64.b64encode(hmac.new(key, signed_content.encode("utf-8"), hashlib.sha256).digest()).decode()
    for signature in headers[b"webhook-signature"][0].decode().split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def test_signed_post_verifies_with_an_independent_standard_webhooks_check(tmp_path: Any) -> None:
    key = bytes(range(32))
    secret_file = tmp_path / "secret"
    secret_file.write_text("whsec_" + base64.b64encode(key).decode() + "\n")
    h = Harness(secret=load_callback_secret(str(secret_file)))
    h.deliver("http://127.0.0.1:8080/hook")
    _, headers, body = h.last.request()
    assert headers[b"webhook-id"] == [JOB_ID.encode()]
    assert headers[b"webhook-timestamp"] == [b"1700000000"]  # seconds
    assert _verify_standard_webhook(key, headers, body)
    assert not _verify_standard_webhook(b"another key", headers, body)
    assert not _verify_standard_webhook(key, headers, body + b" ")
    h.last.respond(204)
    h.finish()


def test_retries_send_the_same_bytes_with_fresh_timestamps_and_signatures() -> None:
    key = b"raw secret"
    h = Harness(secret=key, random=lambda: 0.5)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    bodies, ids, stamps = [], [], []
    for status, backoff in ((503, 1.0), (500, 2.0), (200, 0.0)):
        _, headers, body = h.last.request()
        assert _verify_standard_webhook(key, headers, body)
        bodies.append(body)
        ids.append(headers[b"webhook-id"][0])
        stamps.append(headers[b"x-notify-timestamp"][0])
        h.last.respond(status)
        h.reactor.advance(backoff)
    assert bodies == [BODY, BODY, BODY]
    assert ids == [JOB_ID.encode()] * 3  # stable across retries
    assert stamps == [b"1700000000250", b"1700000001250", b"1700000003250"]  # each attempt's time
    assert results == [delivery]
    assert delivery.to_json() == {"state": "delivered", "attempts": 3, "last_status": 200, "last_error": None}
    h.finish()


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
# The guard at delivery


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


def test_every_resolved_address_is_checked_and_a_refusal_is_final() -> None:
    h = Harness({"mixed.example": ["10.0.0.5", "192.168.0.9"]}, guard=CallbackGuard(["10.0.0.0/8"]))
    delivery, results = h.deliver("http://mixed.example/cb")
    assert results == [delivery]
    assert delivery.state == "refused"
    assert delivery.attempts == 0 and delivery.last_status is None
    assert "192.168.0.9" in (delivery.last_error or "")
    assert h.network.connects == []  # no connection attempted
    assert h.reactor.getDelayedCalls() == []  # no retry
    h.finish()


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"])
def test_a_name_resolving_to_link_local_is_refused_without_a_connection(address: str) -> None:
    h = Harness({"metadata.example": [address]})
    delivery, results = h.deliver("http://metadata.example/latest")
    assert results == [delivery]
    assert delivery.state == "refused" and "link-local" in (delivery.last_error or "")
    assert h.network.connects == []
    h.finish()


def test_a_listed_name_may_resolve_anywhere_except_link_local() -> None:
    h = Harness(
        {"hooks.example.com": ["192.168.1.10"], "evil.example.com": ["169.254.169.254"]},
        guard=CallbackGuard(["hooks.example.com", "evil.example.com"]),
    )
    ok, _ = h.deliver("http://hooks.example.com/cb")
    assert h.network.connects == [("192.168.1.10", 80)]
    h.last.respond(200)
    refused, _ = h.deliver("http://evil.example.com/cb")
    assert (ok.state, refused.state) == ("delivered", "refused")
    assert len(h.network.connects) == 1
    h.finish()


def test_an_unlisted_name_is_refused_at_delivery() -> None:
    h = Harness({"other.example": ["192.168.1.10"]}, guard=CallbackGuard(["hooks.example.com"]))
    delivery, _ = h.deliver("http://other.example/cb")
    assert delivery.state == "refused" and "--callback-allow" in (delivery.last_error or "")
    assert h.network.connects == []
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


def test_a_literal_target_refused_by_the_guard_at_delivery_makes_no_connection() -> None:
    h = Harness(guard=CallbackGuard(["10.0.0.0/8"]))
    delivery, results = h.deliver("http://192.168.1.1/cb")
    assert results == [delivery]
    assert (delivery.state, delivery.attempts) == ("refused", 0)
    assert h.network.connects == []
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
    h = Harness()

    def broken_endpoint(address: str, port: int) -> IStreamClientEndpoint:
        raise RuntimeError("bug")

    h.notifier._endpoint_factory = broken_endpoint  # type: ignore[assignment]
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


def test_refusals_are_logged() -> None:
    h = Harness({"metadata.example": ["169.254.169.254"]})
    with capturedLogs() as events:
        h.deliver("http://metadata.example/")
    assert any(e.get("state") == "refused" and e.get("job_id") == JOB_ID for e in events)
    h.finish()
