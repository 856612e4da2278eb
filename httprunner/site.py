"""The HTTP transport: a twisted.web Site hardened for a small JSON API.

twisted.web out of the box has no request body limit, buffers the whole body
before the resource runs, parses form-typed bodies into memory, lets a client
that dribbles one byte at a time hold a connection for ever (each byte resets
the idle timeout), has no connection limit, writes an unstructured combined
log line and advertises ``TwistedWeb/<version>``.  This module fixes all of
that around any ``IResource`` (the Klein app):

* ``HttpRunnerRequest`` never parses a body as a form, keeps the body in
  memory only up to ``max_body`` bytes and answers ``413`` as soon as the
  declared ``Content-Length`` or the running count of a chunked body passes
  the cap, without reading the rest;
* ``HttpRunnerChannel`` gives every request a deadline from its first byte
  until its body is complete (``408`` when it passes) and, after such an
  early answer, closes the connection gracefully (half-close, then discard
  input for a bounded time) so the client can read the answer;
* ``HttpRunnerSite`` replaces the combined log line with one structured
  ``twisted.logger`` event per request (namespace ``httprunner.access``);
* ``ConnectionLimiter`` caps connections in total and per peer address.

``make_site`` assembles them into the protocol factory to listen with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from httprunner.responses import JSON_TYPE, error_body, reason_phrase

__all__ = [
    "ACCESS_LOG_FORMAT",
    "ACCESS_LOG_FORMAT_ABANDONED",
    "ACCESS_LOG_NAMESPACE",
    "SERVER_NAME",
    "ConnectionLimiter",
    "HttpRunnerChannel",
    "HttpRunnerRequest",
    "HttpRunnerSite",
    "make_site",
]

SERVER_NAME = b"httprunner"

ACCESS_LOG_NAMESPACE = "httprunner.access"

# The text rendering of an access event.  method_text and path_text are the
# escaped forms of the raw method and path fields (see _log_safe), so user
# data can never start a new line or colour a terminal.
ACCESS_LOG_FORMAT = "{method_text} {path_text} -> {status} ({duration:.3f}s, {bytes} bytes, {peer})"
# The same for a request whose client hung up before the answer was complete
# (a long poll given up, a followed output stream closed).
ACCESS_LOG_FORMAT_ABANDONED = ACCESS_LOG_FORMAT + " client went away"

# How long a connection that got an early answer (408/413) may keep sending
# before it is aborted.  Closing a socket that still has unread input makes
# the kernel send a RST, and a client that is still uploading may then lose
# our answer before it reads it; so we half-close, discard input for a short
# while, and only then abort (what nginx calls a lingering close).
LINGER_SECONDS = 2.0

# Module level on purpose: a Logger used as a class attribute replaces its
# namespace with the class's name, and this namespace is an interface
# (operators filter the access log on it).
_access_log = Logger(namespace=ACCESS_LOG_NAMESPACE)

# Minimum interval between two warnings about refused connections, so that a
# connection flood does not become a log flood.
REFUSAL_WARNING_INTERVAL = 10.0


def _log_safe(text: str) -> str:
    """Return ``text`` as it may appear in a one-line log message.

    Printable ASCII without spaces (every well-formed method and path) is
    returned as is, so the common case costs two string scans; anything
    else is shown as a quoted Python ``repr`` (``'/a\\nb\\x1b[31m'``), which
    cannot contain a line break, an escape sequence or a bare space.
    """
    if text.isascii() and text.isprintable() and " " not in text and text:
        return text
    return repr(text)


def format_peer(address: IAddress | None) -> str:
    """Describe a peer address for the access log: ``host:port``, ``[v6]:port``
    or ``unix``."""
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        return "unix"
    return "-" if address is None else type(address).__name__


def peer_key(address: IAddress | None) -> str:
    """The identity a connection counts against for the per-peer limit.

    The IP address without port (an IPv4-mapped IPv6 address counts as its
    IPv4 address, a scope id is dropped); every unix-socket peer is the single
    peer ``"unix"``.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host.partition("%")[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]
        return host
    if isinstance(address, UNIXAddress):
        return "unix"
    return "-" if address is None else type(address).__name__


def _early_response(status: int, body: bytes, extra_headers: bytes = b"") -> bytes:
    """A complete ``Connection: close`` response written straight to the
    transport, for answers given before a request object could answer."""
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status).encode("ascii")),
            b"Server: " + SERVER_NAME + b"\r\n",
            b"Date: " + http.datetimeToString() + b"\r\n",
            b"Content-Type: " + JSON_TYPE + b"\r\n",
            b"Content-Length: %d\r\n" % (len(body),),
            extra_headers,
            b"Connection: close\r\n\r\n",
            body,
        ]
    )


class _StreamTransport(Protocol):
    """What the channel uses of its transport (TCP, TLS or UNIX): more than
    ``ITransport`` declares (``disconnecting`` is in no interface)."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getHost(self) -> IAddress: ...


class HttpRunnerRequest(server.Request):
    """A request that never parses its body as a form and caps its size.

    The body is counted while it arrives: a declared ``Content-Length`` over
    the cap is refused in ``gotLength`` before any body byte is read, and a
    chunked body is refused in ``handleContentChunk`` as soon as its running
    total passes the cap; the refused part is never stored.  The kept body
    lives in memory (it is at most ``max_body`` bytes), never in a temp file.
    """

    log = Logger()
    # Narrowed to our classes.  twisted.web sets channel to None when the
    # connection is lost (its annotation does not say so); site is None
    # until process() sets it.
    channel: HttpRunnerChannel
    site: HttpRunnerSite | None

    def __init__(self, channel: HttpRunnerChannel, *args: Any, **kwargs: Any) -> None:
        # Form parsing would copy a form-typed body (curl -d sends one) into
        # request.args; the API reads request.content as JSON instead.
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)
        self.body_bytes = 0
        self.started: float = getattr(channel, "request_started", 0.0)

    def _body_limit(self) -> int:
        site: HttpRunnerSite = self.channel.site
        return site.max_body

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        limit = self._body_limit()
        if length is not None and length > limit:
            # allHeadersReceived sends "100 Continue" after this returns when
            # the client asked for it; that would follow our final answer.
            self.requestHeaders.removeHeader(b"Expect")
            self.channel.refuse(413, f"request body is over the {limit}-byte limit")

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return  # the rest of a refused body: dropped, never stored
        self.body_bytes += len(data)
        limit = self._body_limit()
        if self.body_bytes > limit:
            channel.refuse(413, f"request body is over the {limit}-byte limit")
            return
        assert self.content is not None  # gotLength made it
        self.content.write(data)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # server.Request.process() sets "Server: TwistedWeb/<version>";
            # replace only that default, not a value the application chose.
            if self.responseHeaders.getRawHeaders(b"Server") == [server.version]:
                self.responseHeaders.setRawHeaders(b"Server", [SERVER_NAME])
        super().write(data)

    def connectionLost(self, reason: Failure) -> None:
        # twisted.web logs only finished requests; a request handed to the
        # resource (process() sets .site) whose client left gets an event too.
        site = self.site
        abandoned = site is not None and not self.finished
        channel = self.channel
        super().connectionLost(reason)
        if site is not None and abandoned:
            site.log_access(
                method=self.method.decode("latin-1"),
                path=(self.path or b"").decode("latin-1"),
                status=self.code,
                length=self.sentLength,
                duration=site.monotonic() - self.started,
                peer=getattr(channel, "peer_text", "-"),
                completed=False,
            )

    def processingFailed(self, reason: Failure) -> Failure:
        """Answer an unhandled rendering error with a JSON 500, never with
        twisted.web's HTML page or a traceback."""
        self.log.failure(
            "Unhandled error answering {method_text} {path_text}",
            failure=reason,
            method_text=_log_safe(self.method.decode("latin-1")),
            path_text=_log_safe((self.path or b"").decode("latin-1")),
        )
        if self.startedWriting or self.finished or self._disconnected:
            # Too late for an error status: cut the response short instead.
            if not self._disconnected:
                self.loseConnection()
            return reason
        body = error_body(500, "internal server error")
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(b"Content-Type", [JSON_TYPE])
        self.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % (len(body),)])
        self.write(body)
        self.finish()
        return reason


class HttpRunnerChannel(http.HTTPChannel):
    """An HTTP/1.1 channel with a per-request deadline and early answers.

    The deadline starts with the first byte of each request and ends when its
    body is complete; it is not reset by incoming bytes (unlike the idle
    timeout, which stays in force between requests).  Bytes that arrive while
    a request is being answered are pipelined requests; their deadline starts
    when twisted.web hands them back to the parser.
    """

    site: HttpRunnerSite
    refused = False
    request_started = 0.0
    peer_text = "-"
    _deadline_call: IDelayedCall | None = None
    _linger_call: IDelayedCall | None = None
    _peer: IAddress | None = None
    _host: IAddress | None = None
    _secure: bool | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web asks the transport for both addresses in every
        # Request (the local one is a getsockname call) and Klein and the
        # guard ask whether it is TLS: a connection's answers never change.
        stream = self._stream()
        self._peer = stream.getPeer()
        self._host = stream.getHost()
        self.peer_text = format_peer(self._peer)

    def getPeer(self) -> IAddress:
        return self._peer if self._peer is not None else self._stream().getPeer()

    def getHost(self) -> IAddress:
        return self._host if self._host is not None else self._stream().getHost()

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = bool(super().isSecure())
        return self._secure

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after an early answer: discard, never buffer
        # _handlingRequest is twisted.web's flag for "a complete request is
        # being answered"; bytes arriving then are buffered, not parsed.
        if self._deadline_call is None and not self._handlingRequest:
            self.request_started = self.site.monotonic()
            self._deadline_call = self.callLater(self.site.request_timeout, self._deadline_passed)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        # Cancel before handing the request on: it may be answered at once,
        # and the next pipelined request then starts a deadline of its own.
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        if self._linger_call is not None:
            if self._linger_call.active():
                self._linger_call.cancel()
            self._linger_call = None
        super().connectionLost(reason)

    def _stream(self) -> _StreamTransport:
        return cast(_StreamTransport, self.transport)

    def _cancel_deadline(self) -> None:
        if self._deadline_call is not None:
            if self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None

    def _deadline_passed(self) -> None:
        self._deadline_call = None
        transport = self._stream()
        if transport.disconnecting:
            # twisted.web already answered (a 400) and is closing; the peer
            # has not let the connection go within the deadline: drop it.
            transport.abortConnection()
            return
        timeout = self.site.request_timeout
        # callLater runs on the wall clock (reactor.seconds()); a clock step
        # forward must not cut requests short, so trust the monotonic clock.
        remaining = self.request_started + timeout - self.site.monotonic()
        if remaining > 0:
            self._deadline_call = self.callLater(remaining, self._deadline_passed)
            return
        self.refuse(408, f"request not complete within {timeout:g} seconds")

    def refuse(self, status: int, error: str) -> None:
        """Answer the request being received with ``status`` and a JSON error,
        stop parsing, and close the connection.

        The answer is written directly (the request has not been parsed far
        enough to answer through it) with ``Connection: close``.  The write
        side is then shut down and input is discarded for at most
        ``LINGER_SECONDS`` before the connection is aborted.
        """
        transport = self._stream()
        if self.refused or transport.disconnecting:
            return
        self.refused = True
        self._cancel_deadline()
        self.setTimeout(None)  # the linger timer below bounds the rest
        self.clearLineBuffer()  # a partial line received before the refusal
        body = error_body(status, error)
        transport.write(_early_response(status, body))
        self._log_refusal(status, len(body))

        # twisted.web's producer slot: the transport (an IConsumer) or its
        # _NoPushProducer stand-in, which has the same unregisterProducer.
        cast(IConsumer, self._networkProducer).unregisterProducer()
        if INegotiated.providedBy(transport) or not hasattr(transport, "loseWriteConnection"):
            # TLS has no half-close of its own (shutting down TCP under it
            # would skip close_notify); close the ordinary way.
            transport.loseConnection()
        else:
            transport.loseWriteConnection()
        self._linger_call = self.callLater(LINGER_SECONDS, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger_call = None
        self._stream().abortConnection()

    def _log_refusal(self, status: int, length: int) -> None:
        # The request line may not have arrived (a 408 during the headers);
        # _command and _path are twisted.web's names for its parts.
        command: bytes = getattr(self, "_command", b"-")
        uri: bytes = getattr(self, "_path", b"-")
        self.site.log_access(
            method=command.decode("latin-1"),
            path=uri.partition(b"?")[0].decode("latin-1"),
            status=status,
            length=length,
            duration=self.site.monotonic() - self.request_started,
            peer=self.peer_text,
        )


class HttpRunnerSite(server.Site):
    """A Site with a body cap, a request deadline, no form parsing, a neutral
    ``Server`` header and a structured access log.

    The idle timeout of twisted.web (``timeOut``) is kept for idle keep-alive
    connections.  HTTP/2 is not offered: the limits here are implemented in
    the HTTP/1.1 channel.
    """

    # No "log = Logger()" here: twisted.web calls Site.log(request) for
    # every finished request (overridden below).  Access events go to the
    # module-level _access_log, whose namespace is stable.

    protocol = HttpRunnerChannel  # type: ignore[assignment]
    # No "Starting factory" lines: the daemon logs what it listens on.
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime,
        max_body: int,
        request_timeout: float,
        idle_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            resource,
            requestFactory=HttpRunnerRequest,
            parsePOSTFormSubmission=False,
            timeout=idle_timeout,
            reactor=reactor,
        )
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.monotonic = monotonic
        self.on_request: Callable[[str, str, int], None] = lambda path, method, status: None
        #: one log event per answered request; a quarter of the CPU of a
        #: GET goes to twistd formatting and writing it
        self.access_log = True

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def startFactory(self) -> None:
        # HTTPFactory would open its combined-format log file and start a
        # once-a-second timer formatting the date for it; we log events.
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        """Called by ``Request.finish``: emit the request's access event."""
        self.log_access(
            method=request.method.decode("latin-1"),
            path=(request.path or b"").decode("latin-1"),
            status=request.code,
            length=request.sentLength,
            duration=self.monotonic() - getattr(request, "started", 0.0),
            peer=getattr(request.channel, "peer_text", "-"),
        )

    def log_access(
        self,
        *,
        method: str,
        path: str,
        status: int,
        length: int,
        duration: float,
        peer: str,
        completed: bool = True,
    ) -> None:
        """Emit one access event.

        Fields: ``method`` and ``path`` (raw, path without the query string,
        never percent-decoded), ``method_text`` and ``path_text`` (the same,
        escaped for one log line), ``status``, ``bytes`` (response body
        length), ``duration`` (seconds from the request's first byte to the
        end of the answer), ``peer``, ``completed`` (false when the client
        hung up before the answer was complete; ``status`` and ``bytes`` are
        then what was sent so far).  No header is ever logged.
        """
        self.on_request(path, method, status)
        if not self.access_log:
            return
        _access_log.info(
            ACCESS_LOG_FORMAT if completed else ACCESS_LOG_FORMAT_ABANDONED,
            completed=completed,
            method=method,
            path=path,
            method_text=_log_safe(method),
            path_text=_log_safe(path),
            status=status,
            bytes=length,
            duration=duration,
            peer=peer,
        )


# Written to a connection over a limit, before anything is read from it.
_OVER_LIMIT_RESPONSE_STATUS = 503


class _RefusedConnection(protocol.Protocol):
    """Tell a connection over a limit so in one small response, and close."""

    def connectionMade(self) -> None:
        assert self.transport is not None  # makeConnection set it
        body = error_body(_OVER_LIMIT_RESPONSE_STATUS, "too many connections")
        self.transport.write(_early_response(_OVER_LIMIT_RESPONSE_STATUS, body, b"Retry-After: 1\r\n"))
        self.transport.loseConnection()


class _CountedConnection(ProtocolWrapper):
    """A connection counted against its peer's limit until it is lost."""

    peer = "-"


if TYPE_CHECKING:
    _CountingFactory = WrappingFactory[_CountedConnection]
else:
    # WrappingFactory is generic only in newer Twisted (24.7 cannot subscript it)
    _CountingFactory = WrappingFactory


class ConnectionLimiter(_CountingFactory):
    """Limit simultaneous connections in total and per peer IP address.

    A connection over either limit gets a minimal ``503`` JSON answer with
    ``Retry-After: 1`` and is closed at once; nothing is read from it and it
    is not counted.  Connections under the limits are passed through
    untouched.  (``twisted.protocols.policies.LimitConnectionsByPeer`` is
    broken in Twisted 26.10: it raises ``TypeError`` on every connection.)
    """

    noisy = False

    log = Logger()
    protocol = _CountedConnection

    def __init__(
        self,
        wrapped_factory: IProtocolFactory,
        *,
        max_connections: int,
        max_connections_per_peer: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(wrapped_factory)
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.connections_per_peer: dict[str, int] = {}
        self.refused_connections = 0
        self._monotonic = monotonic
        self._refused_since_warning = 0
        self._last_warning: float | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        key = peer_key(addr)
        if len(self.protocols) >= self.max_connections:
            self._refused(key, "total")
            return _RefusedConnection()
        if self.connections_per_peer.get(key, 0) >= self.max_connections_per_peer:
            self._refused(key, "per-peer")
            return _RefusedConnection()
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        wrapper = self.protocol(self, inner)
        wrapper.peer = key
        return wrapper

    # registerProtocol runs in makeConnection, in the same reactor turn as
    # buildProtocol, so the counts seen by buildProtocol are always current.
    def registerProtocol(self, p: _CountedConnection) -> None:
        super().registerProtocol(p)
        self.connections_per_peer[p.peer] = self.connections_per_peer.get(p.peer, 0) + 1

    def unregisterProtocol(self, p: _CountedConnection) -> None:
        super().unregisterProtocol(p)
        remaining = self.connections_per_peer[p.peer] - 1
        if remaining:
            self.connections_per_peer[p.peer] = remaining
        else:
            del self.connections_per_peer[p.peer]

    def _refused(self, peer: str, limit: str) -> None:
        self.refused_connections += 1
        self._refused_since_warning += 1
        now = self._monotonic()
        if self._last_warning is None or now - self._last_warning >= REFUSAL_WARNING_INTERVAL:
            self.log.warn(
                "Refused {count} connection(s) over the {limit} connection limit (last from {peer_text})",
                count=self._refused_since_warning,
                limit=limit,
                peer=peer,
                peer_text=_log_safe(peer),
                max_connections=self.max_connections,
                max_connections_per_peer=self.max_connections_per_peer,
            )
            self._refused_since_warning = 0
            self._last_warning = now


def make_site(
    resource: IResource,
    *,
    reactor: IReactorTime,
    max_body: int = 65536,
    request_timeout: float = 30.0,
    idle_timeout: float = 60.0,
    max_connections: int = 1024,
    max_connections_per_peer: int = 128,
    monotonic: Callable[[], float] = time.monotonic,
    on_request: Callable[[str, str, int], None] | None = None,
    access_log: bool = True,
) -> IProtocolFactory:
    """Build the protocol factory serving ``resource`` over HTTP/1.1.

    :param max_body: largest accepted request body in bytes (``413`` above).
    :param request_timeout: seconds from a request's first byte until its
        body must be complete (``408`` after).
    :param idle_timeout: seconds an idle keep-alive connection stays open.
    :param max_connections: simultaneous connections in total.
    :param max_connections_per_peer: simultaneous connections per peer IP
        address (all unix-socket peers count as one).
    :param monotonic: the clock for deadlines and durations (tests pass
        ``Clock.seconds``).
    :param on_request: told ``(path, method, status)`` of every answered
        request, refusals included (metrics).
    :param access_log: log one event per answered request.
    :raises ValueError: when a limit is out of range.
    """
    if max_body < 0:
        raise ValueError(f"max_body must be >= 0, not {max_body!r}")
    for name, value in (("request_timeout", request_timeout), ("idle_timeout", idle_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, not {value!r}")
    for name, count in (
        ("max_connections", max_connections),
        ("max_connections_per_peer", max_connections_per_peer),
    ):
        if count < 1:
            raise ValueError(f"{name} must be >= 1, not {count!r}")
    site = HttpRunnerSite(
        resource,
        reactor=reactor,
        max_body=max_body,
        request_timeout=request_timeout,
        idle_timeout=idle_timeout,
        monotonic=monotonic,
    )
    if on_request is not None:
        site.on_request = on_request
    site.access_log = access_log
    return ConnectionLimiter(
        site,
        max_connections=max_connections,
        max_connections_per_peer=max_connections_per_peer,
        monotonic=monotonic,
    )
