"""Verified fakes: in-memory stand-ins checked against Twisted's interfaces."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer


class FakePipe:
    """A ProcessReader stand-in that remembers whether it is reading.

    Its descriptor is the read end of a real pipe, so tests can play the
    job's side by writing to ``writer``.
    """

    def __init__(self) -> None:
        self.reading = True
        self.fd, self.writer = os.pipe()
        os.set_blocking(self.fd, False)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.writer)

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


@implementer(IProcessTransport)
class FakeProcessTransport:
    def __init__(self, protocol: Any, pid: int, args: list[str], env: dict[str, str], path: str | None) -> None:
        self.proto = protocol
        self.pid: int | None = pid
        self.args = args
        self.env = env
        self.path = path
        self.pipes = {1: FakePipe(), 2: FakePipe()}
        self.written: list[bytes] = []
        self.stdin_closed = False
        self.lost = False
        self.signals: list[Any] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.written.extend(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append(data)

    def loseConnection(self) -> None:
        self.lost = True

    def signalProcess(self, signalID: Any) -> None:
        self.signals.append(signalID)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """MemoryReactorClock whose spawnProcess records instead of forking."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcessTransport] = []
        self.next_pid = 1000
        self.spawn_error: BaseException | None = None

    def spawnProcess(
        self, processProtocol, executable, args=(), env=None, path=None, uid=None, gid=None, usePTY=0, childFDs=None
    ):
        if self.spawn_error is not None:
            raise self.spawn_error
        self.next_pid += 1
        transport = FakeProcessTransport(processProtocol, self.next_pid, list(args), dict(env or {}), path)
        self.spawned.append(transport)
        processProtocol.makeConnection(transport)
        return transport


def result_of(d: Any) -> Any:
    """The result of a Deferred that has already fired (raising its failure)."""
    from twisted.python.failure import Failure

    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
