"""The private APIs of Twisted (and treq) that httprunner depends on still look as expected.

Twisted may change a private name in any release, without deprecation.  The
behaviour that rests on these names is covered by the integration tests
(sessions on both spawn paths, the SIGTERM exit status, 408/413 answers);
this file names the exact API that moved when one of them breaks after an
upgrade.  docs/decisions.rst ("Private APIs we depend on") lists them with the
reason for each; keep both in step.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import http

#: dotted name -> the signature we rely on (``str(inspect.signature(...))``,
#: defaults included: the guard reads the endpoint parsers' defaults).  To
#: depend on one more private method, add its line here and to docs/decisions.rst.
SIGNATURES = {
    # process.SessionProcess overrides these two; Process._fork calls them
    # positionally with these arguments.
    "twisted.internet.process.Process._trySpawnInsteadOfFork": (
        "(self, path, uid, gid, executable, args, environment, kwargs)"
    ),
    "twisted.internet.process.Process._execChild": "(self, path, uid, gid, executable, args, environment)",
    # process.SessionProcess reads the daemon's RSS before Process.__init__
    # spawns through _fork, and reaps with wait4 in its own reapProcess and
    # registration (Process.__init__ calls registerReapProcessHandler by its
    # module-global name after the spawn; reapProcessHandlers is its table).
    "twisted.internet.process.Process._fork": "(self, path, uid, gid, executable, args, environment, **kwargs)",
    "twisted.internet.process._BaseProcess.reapProcess": "(self)",
    # (Twisted's own registerReapProcessHandler, which process.py replaces)
    "httprunner.process._twisted_register_reap": "(pid, process)",
    "twisted.internet.process.unregisterReapProcessHandler": "(pid, process)",
    # guard._parse_listener binds --listen strings to Twisted's own endpoint
    # parsers, reading "port" and "interface" (and their defaults).
    "twisted.internet.endpoints._parse": "(description)",
    "twisted.internet.endpoints._parseTCP": "(factory, port, interface='', backlog=50)",
    "twisted.internet.endpoints._parseUNIX": "(factory, address, mode='666', backlog=50, lockfile=True)",
    "twisted.internet.endpoints._parseSSL": (
        "(factory, port, privateKey='server.pem', certKey=None, sslmethod=None, interface='', backlog=50,"
        " extraCertChain=None, dhParameters=None)"
    ),
    "twisted.internet.endpoints._TCP6ServerParser._parseServer": "(self, reactor, port, backlog=50, interface='::')",
}

#: dotted name -> why we need it (attributes: only their presence is checked).
ATTRIBUTES = {
    # tap.DaemonService clears it so a clean SIGTERM shutdown exits 0;
    # twisted.application.app reads it after the reactor stops.
    "twisted.internet.base.ReactorBase._exitSignal": "tap.py clears the signal twistd would re-raise",
    # process.SessionProcess registers its children in Twisted's table.
    "twisted.internet.process.reapProcessHandlers": "process.py registers reaped-with-wait4 children there",
    # site.HttpRunnerRequest.processingFailed: too late to answer?
    "twisted.web.http.Request._disconnected": "site.py checks whether the client is gone",
    # callbacks/transport.py gives the pool a factory that does not log two
    # info lines per connection (noisy = False).
    "twisted.web.client.HTTPConnectionPool._factory": "callbacks/transport.py quiets the pool's client factory",
    "twisted.web.client._HTTP11ClientFactory": "callbacks/transport.py subclasses it to set noisy = False",
    # Imported only while type checking (mypy would fail first), listed so
    # the table is the whole story.
    "treq._types._ITreqReactor": "callbacks/transport.py types the reactor treq needs",
}


def resolve(dotted: str) -> Any:
    """Import the longest importable module prefix of ``dotted``, then walk
    the rest as attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def changed_signatures() -> list[str]:
    problems = []
    for dotted, expected in SIGNATURES.items():
        try:
            found = str(inspect.signature(resolve(dotted)))
        except (ImportError, AttributeError) as e:
            problems.append(f"{dotted} is gone ({e})")
            continue
        if found != expected:
            problems.append(f"{dotted}{found}, expected {expected}")
    return problems


def test_private_methods_keep_the_signatures_we_rely_on() -> None:
    problems = changed_signatures()
    assert not problems, "private Twisted APIs httprunner depends on changed:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("dotted", sorted(ATTRIBUTES))
def test_private_attributes_still_exist(dotted: str) -> None:
    try:
        resolve(dotted)
    except (ImportError, AttributeError):
        pytest.fail(f"private Twisted attribute {dotted} is gone; httprunner's {ATTRIBUTES[dotted]}")


def test_the_check_names_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SIGNATURES, "twisted.internet.process.Process._execChild", "(self, path)")
    monkeypatch.setitem(SIGNATURES, "twisted.internet.process.Process._noSuchHook", "(self)")
    changed, gone = changed_signatures()
    assert changed == (
        "twisted.internet.process.Process._execChild(self, path, uid, gid, executable, args, environment),"
        " expected (self, path)"
    )
    assert gone.startswith("twisted.internet.process.Process._noSuchHook is gone (")


def test_http_channel_state_that_site_reads() -> None:
    """site.HttpRunnerChannel reads HTTPChannel's private state: whether a
    complete request is being answered (``_handlingRequest``), the producer
    slot it unregisters before a half-close (``_networkProducer``), and the
    request line's parts for the log of a refused request (``_command``,
    ``_path``; when they vanish the log silently says "-")."""
    channel = http.HTTPChannel()
    channel.timeOut = None  # no idle timer on the global reactor
    channel.makeConnection(StringTransport())
    assert channel._handlingRequest is False
    # the transport (an IConsumer) or twisted.web's stand-in
    assert callable(getattr(channel._networkProducer, "unregisterProducer", None))
    channel.dataReceived(b"POST /some/path?q=1 HTTP/1.1\r\n")
    assert (channel._command, channel._path) == (b"POST", b"/some/path?q=1")
    channel.dataReceived(b"Content-Length: 0\r\n\r\n")
    assert channel._handlingRequest is True
    channel.connectionLost(Failure(ConnectionDone()))


def test_process_init_registers_through_the_module_function() -> None:
    """Process.__init__ looks ``registerReapProcessHandler`` up in its
    module on every spawn, so process.py's replacement is what it calls."""
    from twisted.internet import process as twisted_process

    from httprunner import process

    assert "registerReapProcessHandler(self.pid, self)" in inspect.getsource(twisted_process.Process.__init__)
    assert twisted_process.registerReapProcessHandler is process._register_reap_handler


def test_log_observer_state_that_logtext_reads() -> None:
    """logtext.speed_up_text_log walks a LogPublisher's observers
    (``_observers``), looks through twist's FilteringLogObserver
    (``_observer``) and recognises twistd's text observer by the name of the
    formatter closure ``textFileLogObserver`` gives its FileLogObserver (a
    changed one is left alone: the log then costs what it did)."""
    import io

    from twisted.logger import FilteringLogObserver, LogPublisher, textFileLogObserver

    from httprunner.logtext import TEXT_FORMATTER_NAME

    text = textFileLogObserver(io.StringIO())
    assert text.formatEvent.__qualname__ == TEXT_FORMATTER_NAME
    assert FilteringLogObserver(text, [])._observer is text
    assert LogPublisher(text)._observers == [text]
