"""Fakes for the callback tests: a Clock with a fake resolver, fake TCP, a Notifier harness.

The fake network hands the Notifier's HTTP client a protocol connected to a
StringTransport, so each test sees the exact request bytes on the wire and
answers with exact response bytes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from httprunner.callbacks import CallbackDelivery, CallbackGuard, Notifier

JOB_ID = "0123456789abcdef0123456789abcdef01234567"
BODY = json.dumps({"id": JOB_ID, "stdout": "naïve ✓ 日本\n", "code": 0}, ensure_ascii=False).encode()
NOW = 1_700_000_000.25


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


@implementer(IReactorPluggableNameResolver)
class FakeReactor(Clock):
    """A Clock with a pluggable name resolver: all the Notifier needs."""

    def __init__(self, resolver: FakeResolver) -> None:
        super().__init__()
        self.nameResolver: IHostnameResolver = resolver
        self.rightNow = NOW

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous


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
    """A Notifier on the fakes; keyword arguments go to the Notifier."""

    def __init__(self, table: dict[str, list[str]] | None = None, **kwargs: Any) -> None:
        self.resolver = FakeResolver(table)
        self.reactor = FakeReactor(self.resolver)
        self.network = FakeNetwork()
        kwargs.setdefault("guard", CallbackGuard())
        kwargs.setdefault("secret", None)
        kwargs.setdefault("endpoint_factory", self.network.endpoint)
        self.notifier = Notifier(self.reactor, **kwargs)

    def deliver(
        self, url: str, body: bytes = BODY, job_id: str = JOB_ID, delivery: CallbackDelivery | None = None
    ) -> tuple[CallbackDelivery, list[Any]]:
        """Start a delivery (of a fresh record unless one is given); the list gets its result."""
        delivery = delivery if delivery is not None else CallbackDelivery()
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
