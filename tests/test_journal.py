"""The write journal of the SQL stores, on its real writer thread, against
a scripted database: transient rollbacks, stale connections, outages."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from httprunner.store import journal as journal_module
from httprunner.store.base import StoreUnavailable
from httprunner.store.journal import Journal, Write


class Outage(Exception):
    """The server is away."""


class Deadlock(Exception):
    """The server rolled the transaction back; it may run again."""


class Connection:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.broken = False
        self.writes: list[str] = []


class Database:
    """Records what each transaction committed; fails as a test says."""

    def __init__(self) -> None:
        self.down = False
        self.committed: list[str] = []
        self.connections: list[Connection] = []
        self.stale_at_begin = False

    def connection(self) -> Connection:
        if self.connections and not self.connections[-1].broken:
            return self.connections[-1]
        if self.down:
            raise Outage("connection refused")
        self.connections.append(Connection(self))
        return self.connections[-1]

    def begin(self, c: Connection) -> None:
        if self.stale_at_begin:
            # A connection that went stale while idle fails on first use.
            self.stale_at_begin = False
            c.broken = True
            raise Outage("server closed the connection unexpectedly")
        if self.down:
            c.broken = True
            raise Outage("server closed the connection unexpectedly")
        c.writes = []

    def commit(self, c: Connection) -> None:
        self.committed += c.writes

    def rollback(self, c: Connection) -> None:
        c.writes = []


def write(name: str, fail: list[BaseException] | None = None) -> Any:
    """A write that records ``name``; raises the errors in ``fail`` first."""

    def run(c: Connection) -> str:
        if fail:
            raise fail.pop(0)
        c.writes.append(name)
        return name

    return run


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def journal(database: Database) -> Any:
    j = Journal(
        reactor,
        database.connection,
        begin=database.begin,
        commit=database.commit,
        rollback=database.rollback,
        # As psycopg's DeadlockDetected, a deadlock is an OperationalError too.
        is_outage=lambda e: isinstance(e, Outage | Deadlock),
        is_transient=lambda e: isinstance(e, Deadlock),
        name="test-journal",
    )
    j.start()
    yield j
    j.stop()


def within(d: Deferred[Any], seconds: float = 5.0) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_a_batch_rolled_back_by_a_deadlock_runs_again_without_an_outage(
    journal: Journal, database: Database
) -> None:
    first = journal.submit(Write(run=write("first"), required=False))
    second = journal.submit(Write(run=write("second", fail=[Deadlock()]), required=True))
    assert await within(first) == "first" and await within(second) == "second"
    assert database.committed == ["first", "second"]  # once each, in order
    assert journal.last_error is None


@pytest_twisted.ensureDeferred
async def test_a_connection_gone_stale_while_idle_is_replaced_before_the_batch(
    journal: Journal, database: Database
) -> None:
    assert await within(journal.submit(Write(run=write("before"), required=True))) == "before"
    database.stale_at_begin = True
    # A submission right after a server restart does not fail.
    assert await within(journal.submit(Write(run=write("after"), required=True))) == "after"
    assert database.committed == ["before", "after"] and len(database.connections) == 2


@pytest_twisted.ensureDeferred
async def test_a_required_write_does_not_wait_for_the_eventual_writes_backoff(
    journal: Journal, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RETRY_FIRST", 60.0)
    monkeypatch.setattr(journal_module, "RETRY_CAP", 60.0)
    database.down = True
    eventual = journal.submit(Write(run=write("eventual"), required=False))
    refused = journal.submit(Write(run=write("refused"), required=True))
    with pytest.raises(StoreUnavailable):
        await within(refused)
    assert journal.last_error is not None and not eventual.called
    await deferLater(reactor, 0.2, lambda: None)  # the journal settles into its backoff
    # The database returns; the eventual write would be retried in 60 s,
    # but a required write tries at once, behind it.
    database.down = False
    assert await within(journal.submit(Write(run=write("admitted"), required=True))) == "admitted"
    assert eventual.called and database.committed == ["eventual", "admitted"]
    assert journal.last_error is None
