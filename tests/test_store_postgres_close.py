"""The PostgreSQL store gives back every connection it opened when it closes.

Runs against the server ``HTTPRUNNER_TEST_POSTGRES`` names (CI's), in a
schema of its own; skipped without one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from httprunner.callbacks import CallbackDelivery
from httprunner.store import ListQuery

URI = os.environ.get("HTTPRUNNER_TEST_POSTGRES")
psycopg = pytest.importorskip("psycopg") if URI else None
pytestmark = pytest.mark.skipif(not URI, reason="set HTTPRUNNER_TEST_POSTGRES=postgresql://user@host/db to run it")


@pytest.fixture
def schema() -> Iterator[str]:
    name = "close_%s" % uuid.uuid4().hex[:12]
    yield name
    assert psycopg is not None and URI is not None
    with psycopg.connect(URI, autocommit=True) as connection:
        connection.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % name)


@pytest_twisted.ensureDeferred
async def test_closing_closes_every_connection_the_store_opened(schema: str) -> None:
    from twisted.internet import reactor

    from httprunner.store.postgres import PostgresJobStore

    assert URI is not None
    opened: list[Any] = []
    for _ in range(2):  # a restart: closed, then opened again
        store = PostgresJobStore(
            URI,
            reactor=reactor,
            node="close-test",
            schema=schema,
            heartbeat=5.0,
            max_finished=10,
            max_queued=10,
            max_running=10,
            max_output=1024,
            delivery_factory=CallbackDelivery.from_json,
            version="test",
        )
        connect = store.connect

        def counted(connect: Any = connect) -> Any:
            connection = connect()
            opened.append(connection)
            return connection

        store.connect = counted  # type: ignore[method-assign]
        store.open()
        await store.list(ListQuery())  # a reader thread connects too
        await store.close()
    assert len(opened) >= 6  # writer, listener and a reader, twice
    assert [c for c in opened if not c.closed] == []
