"""HTTP plumbing for callbacks: connect only to checked addresses, read little.

- Host names are resolved through the reactor's resolver (:func:`resolve`);
  the caller checks *every* address, and :class:`CheckedHTTP` connects to a
  checked address through its own endpoint factory, so DNS cannot change the
  answer between the check and the connect (rebinding).
- Redirects are never followed, no cookie is kept, the answer is not
  decoded (no gzip bombs) and at most a few KiB of it are read
  (:func:`read_limited`).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from http.cookiejar import Cookie
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol
from urllib.request import Request as URLRequest

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.response import _Response as TreqResponse
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address as TwistedIPv4
from twisted.internet.address import IPv6Address as TwistedIPv6
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from httprunner.callbacks.urls import CallbackTarget, IPAddress, unmap

if TYPE_CHECKING:
    # What callbacks need of a reactor: time, name resolution and TCP, the
    # set treq's request(reactor=...) is typed with (IReactorTCP,
    # IReactorTime, IReactorPluggableNameResolver). For type-checking only:
    # the real reactor provides all three; tests pass a Clock with a fake
    # resolver and an endpoint_factory of their own.
    from treq._types import _ITreqReactor

    CallbackReactor = _ITreqReactor

#: Idle pooled connections are closed after this many seconds. Below the
#: common server keep-alive timeouts (Node and Apache: 5 s), because a POST
#: sent on a connection the server is closing fails and costs an attempt
#: (Twisted only retries idempotent methods on a stale connection).
POOL_IDLE_SECONDS = 2
#: treq clients kept for reuse, by target and addresses
CLIENTS_KEPT = 64


class _QuietClientFactory(_HTTP11ClientFactory):
    """Twisted's client factory logs "Starting/Stopping factory" at info for
    every connection: two lines per callback attempt in the daemon's log."""

    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory


class EndpointFactory(TypingProtocol):
    """Makes the plain TCP endpoint for one checked address (injected in tests)."""

    def __call__(self, address: str, port: int) -> IStreamClientEndpoint: ...


def resolve(resolver: IHostnameResolver, host: str, port: int) -> Deferred[list[IPAddress]]:
    """All addresses of ``host``, deduplicated, in the resolver's order (IPv4-mapped unmapped)."""
    done: Deferred[list[IPAddress]] = Deferred()
    found: list[IPAddress] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
            pass

        def addressResolved(self, address: IAddress) -> None:
            if isinstance(address, (TwistedIPv4, TwistedIPv6)):
                try:
                    parsed = unmap(ipaddress.ip_address(address.host))
                except ValueError:
                    return
                if parsed not in found:
                    found.append(parsed)

        def resolutionComplete(self) -> None:
            if not done.called:
                done.callback(found)

    resolver.resolveHostName(Receiver(), host, portNumber=port)
    return done


class CheckedHTTP:
    """POSTs that can only reach addresses the caller has checked.

    The connection pool is shared (persistent connections: a burst of
    finishing jobs reuses them) and keyed by scheme, host name and port, so a
    reused connection was itself made to a checked address (and, for https,
    verified for this host name). ``endpoint_factory(address, port)`` makes
    the TCP endpoint for a checked address (default: TCP4/TCP6 on
    ``reactor``); https wraps it in TLS for the URL's host name
    (``tls_policy``).
    """

    def __init__(
        self,
        reactor: CallbackReactor,
        *,
        timeout: float,
        max_per_host: int,
        endpoint_factory: EndpointFactory | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self.endpoint_factory: EndpointFactory = endpoint_factory or self._tcp_endpoint
        self._tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        self._pool = _QuietPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_per_host
        self._pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
        self._pool.retryAutomatically = False
        self._cookies = _NoCookies()
        #: clients by (scheme, host, port, addresses): a burst of callbacks
        #: to one receiver reuses one (they are stateless wrappers)
        self._clients: OrderedDict[tuple[str, str, int, tuple[IPAddress, ...]], HTTPClient] = OrderedDict()

    def post(
        self, target: CallbackTarget, addresses: Sequence[IPAddress], headers: Headers, body: bytes
    ) -> Deferred[TreqResponse]:
        """POST ``body`` to ``target`` through the first of ``addresses`` that accepts.

        Fires with the response as soon as its headers arrived; the caller
        reads (or drops) the body with :func:`read_limited`.
        """
        client = self._client_for(target, addresses)
        return client.request(
            "POST",
            self._pool_url(target),
            headers=headers,
            data=_BytesProducer(body),
            allow_redirects=False,
            unbuffered=True,
            timeout=self._timeout,
            reactor=self._reactor,
        )

    def close(self) -> None:
        """Close the idle pooled connections (nothing needs to wait for that)."""
        self._pool.closeCachedConnections().addErrback(lambda f: None)

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _pool_url(target: CallbackTarget) -> str:
        """The URL handed to treq: its host only keys the connection pool.

        hyperlink (inside treq) rejects IPv6 literals and names with ``_``, so
        the host is a digest of the real host; where to connect is decided by
        our endpoint, and the Host header is set explicitly.
        """
        digest = hashlib.sha256(target.host.encode("ascii")).hexdigest()[:32]
        return f"{target.scheme}://h{digest}.invalid:{target.port}{target.request_target}"

    def _client_for(self, target: CallbackTarget, addresses: Sequence[IPAddress]) -> HTTPClient:
        """A treq client whose Agent can only connect to ``addresses`` (already checked).

        Agent and client are cheap wrappers around the shared pool, kept for
        the few targets most recently used.
        """
        key = (target.scheme, target.host, target.port, tuple(addresses))
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = self._new_client(target, addresses)
        self._clients[key] = client
        if len(self._clients) > CLIENTS_KEPT:
            self._clients.popitem(last=False)
        return client

    def _new_client(self, target: CallbackTarget, addresses: Sequence[IPAddress]) -> HTTPClient:
        endpoints = [self.endpoint_factory(str(address), target.port) for address in addresses]
        if target.scheme == "https":
            creator = self._tls_policy.creatorForNetloc(target.host.encode("ascii"), target.port)
            endpoints = [wrapClientTLS(creator, endpoint) for endpoint in endpoints]
        agent = Agent.usingEndpointFactory(
            self._reactor, _CheckedEndpoints(_FirstReachable(endpoints)), pool=self._pool
        )
        return HTTPClient(_IdentityEncoding(agent), cookiejar=self._cookies)

    def _tcp_endpoint(self, address: str, port: int) -> IStreamClientEndpoint:
        if ":" in address:
            return TCP6ClientEndpoint(self._reactor, address, port, timeout=self._timeout)
        return TCP4ClientEndpoint(self._reactor, address, port, timeout=self._timeout)


def read_limited(response: IResponse, limit: int) -> Deferred[int]:
    """Read at most ``limit`` bytes of ``response``'s body, then drop the connection.

    Fires with the byte count once the body ended or the limit was passed;
    canceling it drops the connection too.
    """
    reader = _LimitedBody(limit)
    response.deliverBody(reader)
    return reader.done


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


class _NoCookies(IndexableCookieJar):
    """Receivers may set cookies; they must not travel to later deliveries."""

    def set_cookie(self, cookie: Cookie) -> None:
        pass

    def extract_cookies(self, response: object, request: URLRequest) -> None:
        pass

    def add_cookie_header(self, request: URLRequest) -> None:
        pass  # there are none to add (and the stdlib's search is not free)


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

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocol_factory: IProtocolFactory) -> IProtocol:
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

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
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
        # The body's transport is the HTTP client's TransportProxyProducer,
        # an IPushProducer whose stopProducing closes the connection.
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.stopProducing()
        if not self.done.called:
            self.done.callback(self.received)

    def _cancel(self, d: Deferred[int]) -> None:
        self._stop()
