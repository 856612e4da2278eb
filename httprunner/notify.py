"""Completion callbacks: URL checks, the target guard, signing, delivery with retries.

When a job with a ``callback`` URL reaches its terminal state, the runner hands
the job's JSON bytes to :meth:`Notifier.deliver`, which POSTs them to the URL
and records every attempt in a :class:`CallbackDelivery` that the job JSON
shows as ``callback_delivery``.

Defences, each for a reason:

- The URL is parsed here with :func:`urllib.parse.urlsplit`, never by treq /
  hyperlink (hyperlink rejects IPv6 literals and host names with ``_``).
  Numeric IPv4 forms (``2130706433``, ``0x7f000001``, ``127.1``, octal) are
  normalised the way ``inet_aton`` and browsers read them, so the guard sees
  the address the connection would really reach.
- Host names are resolved through ``reactor.nameResolver``; *every* resolved
  address is checked against the :class:`CallbackGuard`, and the connection
  goes to a checked address (our own endpoint factory), so DNS cannot change
  the answer between the check and the connect (rebinding).
- Redirects are never followed, at most :data:`RESPONSE_READ_LIMIT` bytes of
  the answer are read, and every attempt has a deadline covering resolution,
  connect, request and response.
- A delivery never raises into its caller and never affects another one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random as _random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.cookiejar import Cookie, CookieJar
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import quote, urlsplit

import idna
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address as TwistedIPv4
from twisted.internet.address import IPv6Address as TwistedIPv6
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from httprunner import __version__

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest accepted callback URL, in UTF-8 bytes (DESIGN §2.1: 2 KiB).
MAX_CALLBACK_URL_BYTES = 2048
#: How much of a receiver's answer is read before the connection is dropped.
RESPONSE_READ_LIMIT = 4096
#: Idle pooled connections are closed after this many seconds. Below the
#: common server keep-alive timeouts (Node and Apache: 5 s), because a POST
#: sent on a connection the server is closing fails and costs an attempt
#: (Twisted only retries idempotent methods on a stale connection).
POOL_IDLE_SECONDS = 2

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"
DELIVERY_REFUSED = "refused"

SHUTDOWN_ERROR = "the daemon shut down before the callback was delivered"
CANCELED_ERROR = "the callback delivery was canceled"

_LINK_LOCAL: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")
# A host name label after IDNA: letters, digits, '-' and '_' (used by internal
# names, accepted by getaddrinfo), not starting or ending with '-'.
_LABEL = re.compile(r"\A(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
# Characters of a request target that are sent percent-encoded: everything
# outside printable ASCII (Twisted refuses to send it) and the characters the
# URL standard encodes in paths/queries. '[' and ']' are included because
# hyperlink (inside treq) would re-encode them in queries anyway.
_TARGET_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"<>\\^`{|}[]')


class CallbackURLError(ValueError):
    """The ``callback`` of a request is unusable; ``str()`` is the reason for the client."""


# ---------------------------------------------------------------------------
# The delivery record


class CallbackDelivery:
    """What happened to one job's callback so far; updated in place, shown in the job JSON.

    ``__slots__`` because one is retained per finished job with a callback.
    """

    __slots__ = ("state", "attempts", "last_status", "last_error")

    def __init__(self) -> None:
        self.state: str = DELIVERY_PENDING
        self.attempts: int = 0
        self.last_status: int | None = None
        self.last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        return f"<CallbackDelivery {self.to_json()!r}>"


# ---------------------------------------------------------------------------
# Host and address parsing


_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _parse_ipv4_number(part: str) -> int | None:
    """One dotted part as inet_aton / the URL standard read it: 0x hex, 0 octal, decimal."""
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or any(c not in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    """The URL standard's test for "this host must be an IPv4 address"."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and _parse_ipv4_number(last) is not None


def normalize_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` the way ``inet_aton`` and browsers do, or ``None`` if it is a name.

    ``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``0x7f.1``
    are all 127.0.0.1: a check on the text alone would miss that they reach
    loopback. Raises :class:`ValueError` for a host that ends in a number but
    is no valid address (``1.2.3.256``), as browsers refuse those.
    """
    if not host or not _ends_in_number(host):
        return None
    parts = host.split(".")
    if parts[-1] == "":
        parts.pop()
    if len(parts) > 4:
        raise ValueError(f"{host!r} is not a valid IPv4 address (more than 4 parts)")
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            raise ValueError(f"{host!r} is not a valid IPv4 address")
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is not a valid IPv4 address (a part is out of range)")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _unmap(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` reaches a.b.c.d: check (and connect to) the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_ip_literal(text: str) -> IPAddress | None:
    """An IPv6 literal (with or without brackets) or any IPv4 form; ``None`` for a name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        if "%" in text:
            raise ValueError(f"{text!r}: IPv6 zone identifiers are not supported")
        try:
            return _unmap(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a valid IPv6 address") from None
    return normalize_ipv4(text)


def _normalize_host_name(name: str) -> str:
    """Lower-case ASCII (IDNA) form of a DNS name; ValueError if it is not one."""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"{name!r} is not a valid host name ({e})") from None
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{name!r} is not a valid host name")
    return name


# ---------------------------------------------------------------------------
# The guard


class CallbackGuard:
    """Which callback targets are allowed (``--callback-allow HOST|CIDR``, repeatable).

    Without entries every address is allowed except link-local ones
    (169.254.0.0/16, fe80::/10: cloud metadata services live there). With
    entries, an address is allowed when a CIDR (or listed IP) contains it, or
    when the URL's host name is listed and the address is not link-local.
    A link-local address is only ever allowed by a CIDR/IP entry covering it.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        """Parse entries; :class:`ValueError` with a one-line message for a bad one."""
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for raw in entries:
            kind, value = self._parse_entry(raw)
            if kind == "name":
                names.add(value)  # type: ignore[arg-type]
            else:
                networks.append(value)  # type: ignore[arg-type]
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self.names: frozenset[str] = frozenset(names)

    @staticmethod
    def _parse_entry(raw: str) -> tuple[str, IPNetwork | str]:
        entry = raw.strip()
        prefix = f"--callback-allow {raw!r}: "
        if not entry:
            raise ValueError(prefix + "empty entry")
        if "/" in entry:
            try:
                return "network", ipaddress.ip_network(entry, strict=True)
            except ValueError as e:
                raise ValueError(prefix + f"not a valid CIDR ({e})") from None
        if "*" in entry:
            raise ValueError(prefix + "wildcards are not supported; list each host or use a CIDR")
        if entry.count(":") == 1:
            raise ValueError(prefix + "give a host name or CIDR without a port")
        try:
            address = _parse_ip_literal(entry)
        except ValueError as e:
            raise ValueError(prefix + str(e)) from None
        if address is not None:
            return "network", ipaddress.ip_network(address)
        try:
            return "name", _normalize_host_name(entry)
        except ValueError as e:
            raise ValueError(prefix + str(e)) from None

    @property
    def restricted(self) -> bool:
        """True when ``--callback-allow`` entries were given."""
        return bool(self.networks or self.names)

    def refusal(self, address: IPAddress, host_name: str | None = None) -> str | None:
        """Why ``address`` (reached through ``host_name``, if any) is refused, or None."""
        address = _unmap(address)
        if any(address in network for network in self.networks):
            return None
        if any(address in network for network in _LINK_LOCAL):
            return f"callback target address {address} is link-local (refused unless --callback-allow lists it)"
        if not self.restricted or (host_name is not None and host_name in self.names):
            return None
        return f"callback target address {address} is not allowed by --callback-allow"


# ---------------------------------------------------------------------------
# URL checks


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL, split into what a delivery needs."""

    scheme: str
    #: lower-case ASCII host name, or the address text for literal targets
    host: str
    #: the address for literal targets (numeric forms normalised), else None
    address: IPAddress | None
    port: int
    #: path and query, percent-encoded ASCII
    request_target: str
    #: the Host header value
    authority: str

    @property
    def log_url(self) -> str:
        """The URL for logs: without the query, which often carries a token."""
        return f"{self.scheme}://{self.authority}{self.request_target.split('?', 1)[0]}"


def parse_callback_url(value: str) -> CallbackTarget:
    """Parse and check a callback URL; :class:`CallbackURLError` says what is wrong."""
    if not isinstance(value, str):
        raise CallbackURLError("callback must be a string (an http or https URL)")
    if _SURROGATES.search(value):
        raise CallbackURLError("callback is not valid Unicode")
    if len(value.encode("utf-8")) > MAX_CALLBACK_URL_BYTES:
        raise CallbackURLError(f"callback URL is longer than {MAX_CALLBACK_URL_BYTES} bytes")
    # Before urlsplit, which silently deletes tabs and newlines.
    if _CONTROL_CHARS.search(value):
        raise CallbackURLError("callback URL contains control characters (CR, LF, ...)")
    if any(c.isspace() for c in value):
        raise CallbackURLError("callback URL contains whitespace; percent-encode it")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise CallbackURLError(f"callback is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise CallbackURLError("callback must be an absolute http or https URL")
    if "@" in parts.netloc:
        raise CallbackURLError("callback URL must not contain user information (user:password@)")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise CallbackURLError("callback URL has no host")
    if port == 0:
        raise CallbackURLError("callback URL port must be between 1 and 65535")
    try:
        address = _parse_ip_literal(raw_host)
        host = str(address) if address is not None else _normalize_host_name(raw_host)
    except ValueError as e:
        raise CallbackURLError(f"callback URL host: {e}") from None
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    host_text = f"[{host}]" if isinstance(address, ipaddress.IPv6Address) else host
    authority = host_text if port == default_port else f"{host_text}:{port}"
    request_target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return CallbackTarget(scheme, host, address, port, request_target, authority)


def check_callback_url(value: object, guard: CallbackGuard) -> str | None:
    """Check a request's ``callback`` at submission; the URL to deliver to, or None.

    ``None`` and ``""`` mean no callback. A literal-IP target the guard
    refuses is an error now; a host name is resolved and checked at delivery.
    """
    if value is None or value == "":
        return None
    target = parse_callback_url(value)  # type: ignore[arg-type]
    if target.address is not None:
        reason = guard.refusal(target.address)
        if reason is not None:
            raise CallbackURLError(reason)
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Signing


def load_callback_secret(path: str) -> bytes:
    """Read ``--callback-secret-file``: the first line, stripped.

    ``whsec_<base64>`` (the Standard Webhooks format) is the decoded key;
    anything else is the raw UTF-8 key. ValueError with a one-line message.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except OSError as e:
        raise ValueError(f"cannot read callback secret file {path!r}: {e.strerror}") from None
    lines = data.splitlines()
    try:
        line = (lines[0] if lines else b"").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"callback secret file {path!r} is not UTF-8") from None
    if not line:
        raise ValueError(f"callback secret file {path!r} is empty (the secret is its first line)")
    if line.startswith("whsec_"):
        try:
            key = base64.b64decode(line[len("whsec_") :], validate=True)
        except ValueError:
            raise ValueError(f"callback secret file {path!r}: whsec_ secret is not valid base64") from None
        if not key:
            raise ValueError(f"callback secret file {path!r}: whsec_ secret is empty")
        return key
    return line.encode("utf-8")


def sign_webhook(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


# ---------------------------------------------------------------------------
# HTTP plumbing


class EndpointFactory(TypingProtocol):
    """Makes the plain TCP endpoint for one checked address (injected in tests)."""

    def __call__(self, address: str, port: int) -> IStreamClientEndpoint: ...


@implementer(IBodyProducer)
class _BytesProducer:
    """The request body, written at once: FileBodyProducer would schedule writes
    on the global cooperator (not our reactor) for no gain on a few KiB."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _NoCookies(CookieJar):
    """Receivers may set cookies; they must not travel to later deliveries."""

    def set_cookie(self, cookie: Cookie) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


@implementer(IAgent)
class _IdentityEncoding:
    """Ask for, and treat the answer as, unencoded bytes.

    treq always adds gzip decoding; a receiver could send a small gzip bomb
    that inflates to hundreds of MB per network read. We never look inside
    the answer, so decoding is skipped (the header is removed before treq's
    decoder sees it) and ``Accept-Encoding: identity`` is sent.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"Accept-Encoding", [b"identity"])

        def plain(response: IResponse) -> IResponse:
            response.headers.removeHeader(b"Content-Encoding")
            return response

        return self._agent.request(method, uri, headers, bodyProducer).addCallback(plain)


@implementer(IStreamClientEndpoint)
class _FirstReachable:
    """Connect to the first of several checked addresses that accepts."""

    def __init__(self, endpoints: list[IStreamClientEndpoint]) -> None:
        self._endpoints = endpoints

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _connect(self, protocol_factory: Any) -> Any:
        last: BaseException = net_error.ConnectError("no address to connect to")
        for endpoint in self._endpoints:
            try:
                return await endpoint.connect(protocol_factory)
            except CancelledError:
                raise
            except Exception as e:
                last = e
        raise last


@implementer(IAgentEndpointFactory)
class _CheckedEndpoints:
    """The Agent's endpoint factory for one attempt: only the checked addresses.

    The URI the Agent passes is ignored on purpose; it only keys the pool.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self._endpoint


class _LimitedBody(Protocol):
    """Counts at most ``limit`` bytes of a response body, then drops the connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.received = 0
        self.done: Deferred[int] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self._limit:
            self._stop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)

    def _stop(self) -> None:
        # Closing the connection is the only way to discard the rest; the
        # attempt is over once we stop, whether or not the close completes.
        if self.transport is not None:
            self.transport.stopProducing()
        if not self.done.called:
            self.done.callback(self.received)

    def _cancel(self, d: Deferred[int]) -> None:
        self._stop()


@dataclass
class _Result:
    """The outcome of one attempt."""

    status: int | None = None
    error: str | None = None
    retry: bool = False
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _classify_status(status: int) -> _Result:
    if 200 <= status < 300:
        return _Result(status=status)
    if 300 <= status < 400:
        return _Result(status=status, error=_status_text(status) + ": redirects are not followed")
    if status == 429 or 500 <= status < 600:
        return _Result(status=status, error=_status_text(status), retry=True)
    return _Result(status=status, error=_status_text(status))


_NETWORK_ERRORS = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.TimeoutError,
    CancelledError,
    OSError,
    SSL.Error,
)


_TIMED_OUT = "timed out"


def _describe(exc: BaseException) -> tuple[str, bool]:
    """Human text for a failed request, and whether it is a network error (retried)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:  # ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed
        inner = [r.value for r in reasons if isinstance(r, Failure)]
        if any(isinstance(e, CancelledError) for e in inner):
            return _TIMED_OUT, True
        if any(isinstance(e, SSL.Error) for e in inner):
            return "TLS error: " + "; ".join(str(e)[:200] for e in inner), True
        if isinstance(exc, ResponseNeverReceived):
            return "connection closed before a response was received", True
        return "connection lost while talking to the receiver", True
    if isinstance(exc, (CancelledError, net_error.TimeoutError)):
        return _TIMED_OUT, True
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused", True
    if isinstance(exc, net_error.DNSLookupError):
        return "could not resolve the host", True
    if isinstance(exc, _NETWORK_ERRORS):
        text = str(exc).strip() or type(exc).__name__
        return text[:300], True
    return f"internal error: {type(exc).__name__}", False


@dataclass(eq=False)
class _Pending:
    """One delivery in progress; ``abort_reason`` is set before it is canceled."""

    task: Deferred[None] | None = None
    abort_reason: str | None = None


# ---------------------------------------------------------------------------
# The notifier


class Notifier:
    """Delivers completion callbacks: guarded targets, signed bodies, bounded retries.

    ``reactor`` must provide time (``callLater``/``seconds``) and
    ``nameResolver``. ``endpoint_factory(address, port)`` makes the TCP
    endpoint for a checked address (default: TCP4/TCP6 on ``reactor``);
    https wraps it in TLS for the URL's host name (``tls_policy``).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        guard: CallbackGuard,
        secret: bytes | None,
        attempts: int = 3,
        timeout: float = 10.0,
        max_in_flight: int = 32,
        random: Callable[[], float] = _random.random,
        endpoint_factory: EndpointFactory | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        tls_policy: IPolicyForHTTPS | None = None,
        on_attempt: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._reactor = reactor
        self._guard = guard
        self._secret = secret
        self._attempts = attempts
        self._timeout = timeout
        self._random = random
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._endpoint_factory: EndpointFactory = endpoint_factory or self._tcp_endpoint
        self._tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        self._slots = DeferredSemaphore(max_in_flight)
        # Persistent connections: a burst of finishing jobs reuses them.
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_in_flight
        self._pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
        self._pool.retryAutomatically = False
        self._cookies = _NoCookies()
        self._pending: set[_Pending] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._stopped = False
        #: told each attempt's outcome: delivered, retry, failed or refused
        self._on_attempt = on_attempt

    # -- public --------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Deliveries not finished yet (queued, in an attempt, or waiting to retry)."""
        return len(self._pending)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        base * 2**(attempt-1), capped, then +/-20 % jitter so receivers that
        came back are not hit by every retry at the same moment.
        """
        delay: float = min(self._backoff_base * 2 ** (attempt - 1), self._backoff_cap)
        return delay * (0.8 + 0.4 * self._random())

    def deliver(self, job_id: str, url: str, body: bytes, delivery: CallbackDelivery) -> Deferred[CallbackDelivery]:
        """POST ``body`` to ``url``; fires with ``delivery`` when it is final. Never errbacks."""
        if self._stopped:
            delivery.state = DELIVERY_FAILED
            delivery.last_error = SHUTDOWN_ERROR
            return succeed(delivery)
        try:
            target = parse_callback_url(url)
        except CallbackURLError as e:
            delivery.state = DELIVERY_FAILED
            delivery.last_error = str(e)
            self.log.warn("callback for job {job_id} not sent: {error}", job_id=job_id, error=str(e))
            return succeed(delivery)

        pending = _Pending()
        result: Deferred[CallbackDelivery] = Deferred(lambda d: self._abort(pending, CANCELED_ERROR, d, delivery))
        self._pending.add(pending)

        def finished(_: object) -> None:
            self._pending.discard(pending)
            if not result.called:
                result.callback(delivery)
            if not self._pending:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        pending.task = Deferred.fromCoroutine(self._run(job_id, target, body, delivery, pending))
        pending.task.addBoth(finished)
        return result

    def stop(self, grace: float = 5.0) -> Deferred[None]:
        """Let pending deliveries finish for at most ``grace`` seconds, then cancel them.

        Canceled deliveries end ``failed`` with :data:`SHUTDOWN_ERROR`. Fires
        with None when nothing is pending; leaves no timer behind.
        """
        if self._stopped:
            return succeed(None)
        done: Deferred[None] = Deferred()
        timer = self._reactor.callLater(max(grace, 0.0), self._abort_all)

        def idle(_: object) -> None:
            if timer.active():
                timer.cancel()
            self._stopped = True
            # Closing returns a Deferred for the TCP close; nothing waits on it.
            self._pool.closeCachedConnections().addErrback(lambda f: None)
            done.callback(None)

        if not self._pending:
            idle(None)
        else:
            waiter: Deferred[None] = Deferred()
            self._idle_waiters.append(waiter)
            waiter.addCallback(idle)
            if grace <= 0:
                timer.cancel()
                self._abort_all()
        return done

    # -- delivery ------------------------------------------------------------

    def _abort_all(self) -> None:
        # Mark every delivery first: canceling one frees a slot, and a queued
        # delivery handed that slot must see it is aborted before connecting.
        victims = [p for p in self._pending if p.task is not None and not p.task.called]
        for pending in victims:
            pending.abort_reason = SHUTDOWN_ERROR
        for pending in victims:
            if not pending.task.called:  # type: ignore[union-attr]
                pending.task.cancel()  # type: ignore[union-attr]

    def _abort(
        self,
        pending: _Pending,
        reason: str,
        result: Deferred[CallbackDelivery],
        delivery: CallbackDelivery,
    ) -> None:
        """Canceller of the caller's Deferred: stop the delivery, fire with the record."""
        if pending.task is not None and not pending.task.called:
            pending.abort_reason = reason
            pending.task.cancel()
        if not result.called:
            result.callback(delivery)

    async def _run(
        self,
        job_id: str,
        target: CallbackTarget,
        body: bytes,
        delivery: CallbackDelivery,
        pending: _Pending,
    ) -> None:
        try:
            for attempt in range(1, self._attempts + 1):
                if attempt > 1:
                    await deferLater(self._reactor, self.backoff_delay(attempt - 1))
                await self._slots.acquire()
                try:
                    if pending.abort_reason is not None:
                        raise CancelledError()
                    started = time.monotonic()
                    result = await self._attempt_with_deadline(job_id, target, body)
                finally:
                    self._slots.release()
                if pending.abort_reason is not None:
                    raise CancelledError()
                if self._record(job_id, target, delivery, attempt, result, time.monotonic() - started):
                    return
        except CancelledError:
            delivery.state = DELIVERY_FAILED
            delivery.last_error = pending.abort_reason or CANCELED_ERROR
            self.log.warn(
                "callback for job {job_id} to {url!r} abandoned: {error}",
                job_id=job_id,
                url=target.log_url,
                attempt=delivery.attempts,
                error=delivery.last_error,
            )
        except Exception:
            # A bug here must not escape into the runner or leave "pending".
            delivery.state = DELIVERY_FAILED
            delivery.last_error = "internal error"
            self.log.failure("callback for job {job_id} crashed", job_id=job_id)

    async def _attempt_with_deadline(self, job_id: str, target: CallbackTarget, body: bytes) -> _Result:
        """One attempt, canceled ``timeout`` seconds after it starts.

        The deadline covers resolution, connect, request and the body read
        (treq's own ``timeout`` stops at the response headers). It is armed
        before treq's timer, so at equal deadlines it fires first and the
        outcome reads "timed out" whatever error the cancellation produced.
        """
        expired = False
        attempt: Deferred[_Result] | None = None

        def expire() -> None:
            nonlocal expired
            expired = True
            if attempt is not None:
                attempt.cancel()

        deadline = self._reactor.callLater(self._timeout, expire)
        try:
            attempt = Deferred.fromCoroutine(self._attempt(job_id, target, body))
            result = await attempt
        finally:
            if deadline.active():
                deadline.cancel()
        # If the status line had arrived the receiver has the body: keep that
        # outcome; only the body read was cut short.
        if expired and result.status is None:
            return _Result(error=f"timed out after {self._timeout:g} s", retry=True)
        return result

    def _record(
        self,
        job_id: str,
        target: CallbackTarget,
        delivery: CallbackDelivery,
        attempt: int,
        result: _Result,
        duration: float,
    ) -> bool:
        """Apply one attempt's result to ``delivery`` and log it; True when final."""
        if result.refused:
            delivery.state = DELIVERY_REFUSED
            delivery.last_error = result.error
            self._on_attempt("refused")
            self.log.warn(
                "callback for job {job_id} to {url!r} refused: {error}",
                job_id=job_id,
                url=target.log_url,
                attempt=attempt,
                status=None,
                error=result.error,
                duration=round(duration, 6),
                state=delivery.state,
            )
            return True
        delivery.attempts = attempt
        delivery.last_status = result.status
        delivery.last_error = result.error
        final = True
        if result.delivered:
            delivery.state = DELIVERY_DELIVERED
        elif result.retry and attempt < self._attempts:
            final = False
        else:
            delivery.state = DELIVERY_FAILED
        self._on_attempt(delivery.state if final else "retry")
        fields = dict(
            job_id=job_id,
            url=target.log_url,
            attempt=attempt,
            status=result.status,
            error=result.error,
            duration=round(duration, 6),
            state=delivery.state,
        )
        if result.delivered:
            self.log.info(
                "callback for job {job_id} delivered to {url!r} on attempt {attempt} (HTTP {status})",
                **fields,
            )
        else:
            self.log.warn(
                "callback for job {job_id} to {url!r} attempt {attempt} failed: {error}",
                **fields,
            )
        return final

    async def _attempt(self, job_id: str, target: CallbackTarget, body: bytes) -> _Result:
        """One try: resolve, check every address, POST to a checked one. Never raises."""
        try:
            if target.address is not None:
                addresses: list[IPAddress] = [target.address]
            else:
                addresses = await self._resolve(target.host, target.port)
                if not addresses:
                    return _Result(error=f"could not resolve {target.host!r}", retry=True)
            for address in addresses:
                reason = self._guard.refusal(address, None if target.address is not None else target.host)
                if reason is not None:
                    return _Result(error=reason, refused=True)
            client = self._client_for(target, addresses)
            response: IResponse = await client.request(
                "POST",
                self._pool_url(target),
                headers=self._headers(job_id, target, body),
                data=_BytesProducer(body),
                allow_redirects=False,
                unbuffered=True,
                timeout=self._timeout,
                reactor=self._reactor,
            )
            result = _classify_status(response.code)
            reader = _LimitedBody(RESPONSE_READ_LIMIT)
            response.deliverBody(reader)
            await reader.done
            return result
        except Exception as e:
            text, network = _describe(e)
            if text == _TIMED_OUT:
                text = f"timed out after {self._timeout:g} s"
            if not network:
                self.log.failure("callback for job {job_id}: unexpected error", Failure(), job_id=job_id)
            return _Result(error=text, retry=network)

    def _resolve(self, host: str, port: int) -> Deferred[list[IPAddress]]:
        """All addresses of ``host`` from the reactor's resolver, deduplicated, in order."""
        done: Deferred[list[IPAddress]] = Deferred()
        found: list[IPAddress] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                if isinstance(address, (TwistedIPv4, TwistedIPv6)):
                    try:
                        parsed = _unmap(ipaddress.ip_address(address.host))
                    except ValueError:
                        return
                    if parsed not in found:
                        found.append(parsed)

            def resolutionComplete(self) -> None:
                if not done.called:
                    done.callback(found)

        self._reactor.nameResolver.resolveHostName(Receiver(), host, portNumber=port)
        return done

    def _headers(self, job_id: str, target: CallbackTarget, body: bytes) -> Headers:
        now = self._reactor.seconds()  # wall clock: receivers compare with theirs
        headers = Headers()
        headers.addRawHeader(b"Host", target.authority.encode("ascii"))
        headers.addRawHeader(b"Content-Type", b"application/json")
        headers.addRawHeader(b"Accept", b"application/json")
        headers.addRawHeader(b"User-Agent", f"httprunner/{__version__}".encode())
        headers.addRawHeader(b"X-Notify-Timestamp", str(int(now * 1000)).encode())
        if self._secret is not None:
            seconds = int(now)
            headers.addRawHeader(b"webhook-id", job_id.encode("ascii", "replace"))
            headers.addRawHeader(b"webhook-timestamp", str(seconds).encode())
            headers.addRawHeader(
                b"webhook-signature",
                sign_webhook(self._secret, job_id, seconds, body).encode("ascii"),
            )
        return headers

    @staticmethod
    def _pool_url(target: CallbackTarget) -> str:
        """The URL handed to treq: its host only keys the connection pool.

        hyperlink (inside treq) rejects IPv6 literals and names with ``_``, so
        the host is a digest of the real host; where to connect is decided by
        our endpoint, and the Host header is set explicitly.
        """
        digest = hashlib.sha256(target.host.encode("ascii")).hexdigest()[:32]
        return f"{target.scheme}://h{digest}.invalid:{target.port}{target.request_target}"

    def _client_for(self, target: CallbackTarget, addresses: list[IPAddress]) -> HTTPClient:
        """A treq client whose Agent can only connect to ``addresses`` (already checked).

        Agent and client are cheap wrappers; the connection pool is shared, keyed
        by scheme, host name and port, so a reused connection was itself made to
        a checked address (and, for https, verified for this host name).
        """
        endpoints = [self._endpoint_factory(str(address), target.port) for address in addresses]
        if target.scheme == "https":
            creator = self._tls_policy.creatorForNetloc(target.host.encode("ascii"), target.port)
            endpoints = [wrapClientTLS(creator, endpoint) for endpoint in endpoints]
        agent = Agent.usingEndpointFactory(
            self._reactor, _CheckedEndpoints(_FirstReachable(endpoints)), pool=self._pool
        )
        return HTTPClient(_IdentityEncoding(agent), cookiejar=self._cookies)  # type: ignore[arg-type]

    def _tcp_endpoint(self, address: str, port: int) -> IStreamClientEndpoint:
        if ":" in address:
            return TCP6ClientEndpoint(self._reactor, address, port, timeout=self._timeout)
        return TCP4ClientEndpoint(self._reactor, address, port, timeout=self._timeout)


__all__ = [
    "CallbackDelivery",
    "CallbackGuard",
    "CallbackTarget",
    "CallbackURLError",
    "Notifier",
    "check_callback_url",
    "load_callback_secret",
    "normalize_ipv4",
    "parse_callback_url",
    "sign_webhook",
]


class CallbackOnFinish:
    """A runner observer: send a job's callback when it reaches its end.

    The body is the job JSON at that moment, with the delivery record
    ``pending``; every retry sends those same bytes, and a later ``GET``
    shows the record as the notifier updates it.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def job_started(self, job: Any, spawn_seconds: float) -> None:
        pass

    def job_finished(self, job: Any) -> None:
        if job.callback is None:
            return
        delivery = CallbackDelivery()
        job.callback_delivery = delivery
        self.notifier.deliver(job.id, job.callback, job.to_json_bytes(), delivery)
