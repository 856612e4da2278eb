"""The JobStore contract: the same tests, run on every store.

Each test drives a store as the runner does (``admit``, ``started``,
``finished``, ``delivery_changed``, ``forget``) with real ``Job`` records,
then checks what a user of the API would see through ``get``, ``list``,
``counts`` and ``prune``.  The SQLite store commits on its writer thread,
so the tests run on the real reactor (pytest-twisted).  Durable stores
are also closed and opened again on the same data, as after a restart.

**Adding a store** (the PostgreSQL store is next): write a ``Place`` class
like :class:`SQLitePlace` below and add it to ``PLACES``.  A place is where
one test's store lives:

- ``open(max_finished)`` returns an opened store on the place's data (the
  same data every call: closing and opening again is a restart) and keeps
  the ``Recovery`` it returned in ``recovery``;
- ``fresh()`` returns a new, empty place sharing ``opened`` (every store
  opened, closed after the test);
- ``durable`` says whether data survives ``close()`` (the restart tests
  run only on durable stores);
- the class method ``unavailable()`` returns why the store cannot run here
  (no server, no driver), or None: its tests then skip with that reason;
- an optional ``cleanup()`` removes what the place left behind once its
  stores are closed (a database schema, say);
- ``shared_queue`` (optional, False): the store is a cluster's, whose
  queue and callback outbox are shared by its nodes: a restart hands
  neither back in its ``Recovery``, a node claims them (``claim``,
  ``claim_deliveries``) and runs what it claimed;
- ``retention_at_prune`` (optional, False): ``--max-jobs`` is applied when
  the store prunes (a cluster's nodes prune soon after they finish jobs),
  not in ``finished``.

Every test here, the hypothesis state machine included, then runs on it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from httprunner import jobs
from httprunner.callbacks import CallbackDelivery
from httprunner.jobs import Job, JobSpec
from httprunner.output import GAP_MARKER
from httprunner.store import JobStore, ListQuery, MemoryJobStore, Recovery, UnknownCursor
from httprunner.store.base import Stored

#: output cap of the stores and jobs here: small, so a gap is cheap to make
MAX_OUTPUT = 64


def _reactor() -> Any:
    # Imported late: pytest-twisted installs the reactor at session start.
    from twisted.internet import reactor

    return reactor


# -- where a store lives --------------------------------------------------


class MemoryPlace:
    """The memory store: nothing survives ``close()``."""

    name = "memory"
    durable = False

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    def __init__(self, directory: Path, opened: list[JobStore] | None = None) -> None:
        self.directory = directory
        #: every store opened here and in fresh places, closed after the test
        self.opened: list[JobStore] = [] if opened is None else opened
        #: what the last open() found
        self.recovery: Recovery | None = None

    def open(self, max_finished: int = 100) -> JobStore:
        store = MemoryJobStore(max_finished)
        self.recovery = store.open()
        self.opened.append(store)
        return store

    def fresh(self) -> MemoryPlace:
        return MemoryPlace(self.directory, self.opened)


class SQLitePlace:
    """One SQLite file in the test's directory."""

    name = "sqlite"
    durable = True

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    def __init__(self, directory: Path, opened: list[JobStore] | None = None) -> None:
        self.directory = directory
        self.path = directory / ("jobs-%s.sqlite3" % uuid.uuid4().hex[:8])
        self.opened: list[JobStore] = [] if opened is None else opened
        self.recovery: Recovery | None = None

    def open(self, max_finished: int = 100) -> JobStore:
        from httprunner.store.sqlite import SQLiteJobStore

        store = SQLiteJobStore(
            str(self.path),
            reactor=_reactor(),
            max_finished=max_finished,
            max_output=MAX_OUTPUT,
            delivery_factory=CallbackDelivery.from_json,
        )
        self.recovery = store.open()
        self.opened.append(store)
        return store

    def fresh(self) -> SQLitePlace:
        return SQLitePlace(self.directory, self.opened)


class PostgresPlace:
    """A schema of its own on the server ``HTTPRUNNER_TEST_POSTGRES`` names,
    one node of a cluster (the store's ``node``)."""

    name = "postgresql"
    durable = True
    shared_queue = True
    retention_at_prune = True

    @classmethod
    def unavailable(cls) -> str | None:
        if not os.environ.get("HTTPRUNNER_TEST_POSTGRES"):
            return "set HTTPRUNNER_TEST_POSTGRES to a PostgreSQL database URI"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed"
        return None

    def __init__(self, directory: Path, opened: list[JobStore] | None = None, schemas: list[str] | None = None) -> None:
        self.directory = directory
        self.uri = os.environ["HTTPRUNNER_TEST_POSTGRES"]
        self.schema = "contract_%s" % uuid.uuid4().hex[:12]
        self.opened: list[JobStore] = [] if opened is None else opened
        #: every schema made here and in fresh places, dropped by cleanup()
        self.schemas: list[str] = [] if schemas is None else schemas
        self.schemas.append(self.schema)
        self.recovery: Recovery | None = None

    def open(self, max_finished: int = 100) -> JobStore:
        from httprunner.store.postgres import PostgresJobStore

        store = PostgresJobStore(
            self.uri,
            reactor=_reactor(),
            node="contract",
            schema=self.schema,
            heartbeat=5.0,
            max_finished=max_finished,
            max_queued=1000,
            max_running=100,
            max_output=MAX_OUTPUT,
            delivery_factory=CallbackDelivery.from_json,
            version="test",
        )
        self.recovery = store.open()
        self.opened.append(store)
        return store

    def fresh(self) -> PostgresPlace:
        return PostgresPlace(self.directory, self.opened, self.schemas)

    def cleanup(self) -> None:
        import psycopg

        with psycopg.connect(self.uri, autocommit=True) as connection:
            for schema in self.schemas:
                connection.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)


PLACES: dict[str, Any] = {
    "memory": MemoryPlace,
    "sqlite": SQLitePlace,
    "postgresql": PostgresPlace,
}


def _place(name: str, tmp_path: Path) -> Iterator[Any]:
    """Where one test's store lives; every store opened there is closed after."""
    reason = PLACES[name].unavailable()
    if reason is not None:
        pytest.skip("the %s store cannot run here: %s" % (name, reason))
    where = PLACES[name](tmp_path)
    yield where
    for store in where.opened:
        # Closing a closed store is harmless: a test may have closed it.
        pytest_twisted.blockon(store.close())
    getattr(where, "cleanup", lambda: None)()


@pytest.fixture(params=sorted(PLACES))
def place(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from _place(request.param, tmp_path)


@pytest.fixture(params=sorted(name for name, kind in PLACES.items() if kind.durable))
def durable_place(request: Any, tmp_path: Path) -> Iterator[Any]:
    """A store whose data survives a restart."""
    yield from _place(request.param, tmp_path)


# -- driving a store as the runner does ---------------------------------------


def make_job(
    command: str = "echo",
    arguments: list[str] | None = None,
    *,
    callback: str | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    created_at: float | None = None,
) -> Job:
    spec = JobSpec(
        command=command,
        arguments=["hello"] if arguments is None else arguments,
        program="/usr/bin/" + command,
        args=tuple(["hello"] if arguments is None else arguments),
        env={"PATH": "/usr/bin", **(env or {})},
        stdin=stdin,
        timeout=timeout,
        callback=callback,
        request_env=dict(env or {}),
        requested_timeout=timeout,
    )
    return Job(
        job_id=secrets.token_hex(20),
        spec=spec,
        created_at=time.time() if created_at is None else created_at,
        max_output=MAX_OUTPUT,
    )


async def admit(store: JobStore, job: Job, starting: bool = False) -> Job:
    await store.admit(job, starting)
    return job


def start(store: JobStore, job: Job, pid: int = 4242) -> Job:
    job.state = jobs.RUNNING
    job.pid = pid
    job.started_at = job.created_at + 0.25
    job.identity = (987654, "boot-id")
    store.started(job)
    return job


async def finish(
    store: JobStore,
    job: Job,
    state: str = jobs.SUCCEEDED,
    *,
    code: int = 0,
    signal: str | None = None,
    err: dict[str, str] | None = None,
    finished_at: float | None = None,
    stdout: list[bytes] = (),  # type: ignore[assignment]
    stderr: list[bytes] = (),  # type: ignore[assignment]
) -> Job:
    for chunk in stdout:
        job.stdout.append(chunk)
    for chunk in stderr:
        job.stderr.append(chunk)
    job.state = state
    job.code = code
    job.signal = signal
    job.err = err
    job.finished_at = finished_at if finished_at is not None else time.time()
    if job.started_at is not None:
        job.duration = 1.234567891
        job.cpu_seconds = 0.012345678
        job.max_rss_bytes = 3_145_728
    job.release_request()
    if job.callback is not None:
        job.callback_delivery = CallbackDelivery()
    assert await store.finished(job) is True
    return job


async def apply_retention(place: Any, store: JobStore) -> None:
    """What a store does about ``--max-jobs`` by now (see ``retention_at_prune``)."""
    if getattr(place, "retention_at_prune", False):
        await store.prune(0)


async def queue_after_restart(place: Any, store: Any) -> list[Stored]:
    """The queued jobs a restarted daemon takes over, oldest first (see
    ``shared_queue``: a cluster node claims them, and they run)."""
    if getattr(place, "shared_queue", False):
        return [Stored(claimed.job, claimed.request) for claimed in await store.claim(100, None, [])]
    assert place.recovery is not None
    return list(place.recovery.queued)


async def deliveries_after_restart(place: Any, store: Any) -> list[Job]:
    """The finished jobs whose callback a restarted daemon resumes (see
    ``shared_queue``: a cluster node claims the ones no node sends)."""
    if getattr(place, "shared_queue", False):
        return list(await store.claim_deliveries(100))
    assert place.recovery is not None
    return list(place.recovery.deliveries)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll an eventual write until ``check()`` holds (bounded)."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "the store did not record the write in time"
        await deferLater(_reactor(), 0.01, lambda: None)


async def listing(store: JobStore, **query: Any) -> list[str]:
    return [job.id for job in await store.list(ListQuery(**query))]


async def every_page(store: JobStore, size: int, **query: Any) -> list[str]:
    """Page through the listing as a client does with ``next``."""
    seen: list[str] = []
    before = None
    for _ in range(1000):
        page = await store.list(ListQuery(before=before, limit=size, **query))
        seen.extend(job.id for job in page)
        if len(page) < size:
            return seen
        before = page[-1].id
    raise AssertionError("paging did not end")


# -- finding jobs ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_job_is_found_as_soon_as_it_is_admitted(place: Any) -> None:
    store = place.open()
    job = await admit(store, make_job())
    found = await store.get(job.id)
    assert found is not None and found.to_json_bytes() == job.to_json_bytes()
    assert found.state == jobs.QUEUED and found.code is None
    assert await store.get(secrets.token_hex(20)) is None


@pytest_twisted.ensureDeferred
async def test_a_running_job_shows_its_pid_and_start(place: Any) -> None:
    store = place.open()
    job = start(store, await admit(store, make_job(), starting=True))
    found = await store.get(job.id)
    assert found is not None
    assert (found.state, found.pid, found.started_at) == (jobs.RUNNING, 4242, job.started_at)
    assert [j.state for j in await store.list(ListQuery())] == [jobs.RUNNING]


def _shapes() -> dict[str, dict[str, Any]]:
    big = b"".join(b"line %04d\n" % i for i in range(200))
    return {
        "plain": dict(stdout=[b"hello\n"]),
        "unicode": dict(
            command="printf",
            arguments=["zażółć gęślą jaźń", "✓ 日本語", "emoji 🎉", "עברית"],
            stdout=["zażółć ✓ 🎉\n".encode()],
            stderr=["błąd\n".encode()],
        ),
        "invalid utf-8 output": dict(stdout=[b"\xff\xfe ok \xc3"], stderr=[b"\x80"]),
        "dropped middle": dict(stdout=[big[:700], big[700:]], stderr=[b"e" * 1000]),
        "multi-byte cut at the gap": dict(stdout=["ż".encode() * 100]),
        "failed by a signal": dict(
            state=jobs.FAILED, code=137, signal="SIGKILL", err={"code": "SIGNAL", "message": "killed by SIGKILL"}
        ),
        "timed out": dict(
            state=jobs.TIMED_OUT, code=143, signal="SIGTERM", err={"code": "TIMEOUT", "message": "ran longer"}
        ),
        "with a callback": dict(callback="http://127.0.0.1:9/hook?x=1", timeout=2.5),
        "empty": dict(),
    }


@pytest.mark.parametrize("shape", sorted(_shapes()))
@pytest_twisted.ensureDeferred
async def test_a_finished_job_reads_back_byte_for_byte(place: Any, shape: str) -> None:
    fields = dict(_shapes()[shape])
    job_fields = {k: fields.pop(k) for k in ("command", "arguments", "callback", "timeout") if k in fields}
    store = place.open()
    job = start(store, await admit(store, make_job(**job_fields), starting=True))
    await finish(store, job, **fields)
    expected = job.to_json_bytes()
    found = await store.get(job.id)
    assert found is not None and found.to_json_bytes() == expected
    listed = await store.list(ListQuery())
    assert [j.to_json(output=False) for j in listed] == [job.to_json(output=False)]
    if place.durable:
        await store.close()
        store = place.open()
        found = await store.get(job.id)
        assert found is not None and found.to_json_bytes() == expected
        listed = await store.list(ListQuery())
        assert [j.to_json(output=False) for j in listed] == [job.to_json(output=False)]


@pytest_twisted.ensureDeferred
async def test_output_offsets_read_the_same_from_the_store(place: Any) -> None:
    """``GET /<id>/stdout?offset=N`` (``X-Output-Offset``) on a stored job."""
    store = place.open()
    job = start(store, await admit(store, make_job(), starting=True))
    data = bytes(range(256)) * 4
    await finish(store, job, stdout=[data[:10], data[10:600], data[600:]])
    assert job.stdout.dropped == len(data) - MAX_OUTPUT
    found = await store.get(job.id)
    assert found is not None
    head = MAX_OUTPUT // 2
    tail_start = len(data) - (MAX_OUTPUT - head)
    for offset in (0, 1, head - 1, head, head + 1, tail_start - 1, tail_start, len(data) - 1, len(data), 10**6):
        assert found.stdout.read(offset) == job.stdout.read(offset), offset
    # in the gap: from the first retained byte after it
    assert found.stdout.read(head + 5) == (tail_start, data[tail_start:])
    assert GAP_MARKER.format(len(data) - MAX_OUTPUT) in found.stdout.text()


# -- listing and paging ---------------------------------------------------------


async def _history(store: JobStore, count: int) -> list[Job]:
    """``count`` jobs in every state, admitted in order (oldest first)."""
    made = []
    for i in range(count):
        job = await admit(store, make_job("echo", ["job", str(i)]), starting=i % 5 != 0)
        if i % 5 != 0:
            start(store, job, pid=1000 + i)
            if i % 5 in (2, 3, 4):
                state = {2: jobs.SUCCEEDED, 3: jobs.FAILED, 4: jobs.CANCELED}[i % 5]
                await finish(store, job, state, code=0 if state == jobs.SUCCEEDED else 1)
        made.append(job)
    return made


@pytest_twisted.ensureDeferred
async def test_listing_is_newest_first_without_output(place: Any) -> None:
    store = place.open()
    made = await _history(store, 12)
    found = await store.list(ListQuery())
    assert [j.id for j in found] == [j.id for j in reversed(made)]
    assert [j.state for j in found] == [j.state for j in reversed(made)]
    assert all("stdout" not in j.to_json(output=False) for j in found)
    assert await listing(store, limit=5) == [j.id for j in reversed(made)][:5]


@pytest.mark.parametrize("size", [1, 3, 7, 30])
@pytest_twisted.ensureDeferred
async def test_paging_with_before_visits_every_job_once(place: Any, size: int) -> None:
    store = place.open()
    made = await _history(store, 30)
    seen = await every_page(store, size)
    assert seen == [j.id for j in reversed(made)]
    finished = await every_page(store, size, states=frozenset({jobs.SUCCEEDED, jobs.FAILED}))
    assert finished == [j.id for j in reversed(made) if j.state in (jobs.SUCCEEDED, jobs.FAILED)]


@pytest_twisted.ensureDeferred
async def test_before_is_exclusive_and_combines_with_filters(place: Any) -> None:
    store = place.open()
    made = await _history(store, 10)
    newest_first = [j.id for j in reversed(made)]
    assert await listing(store, before=made[5].id) == newest_first[5:]
    assert await listing(store, before=made[0].id) == []
    queued = [j.id for j in reversed(made[:5]) if j.state == jobs.QUEUED]
    assert await listing(store, before=made[5].id, states=frozenset({jobs.QUEUED})) == queued


@pytest_twisted.ensureDeferred
async def test_an_unknown_or_evicted_cursor_fails_the_deferred(place: Any) -> None:
    store = place.open(max_finished=1)
    old = await admit(store, make_job(), starting=True)
    await finish(store, start(store, old))
    await finish(store, start(store, await admit(store, make_job(), starting=True)))
    await apply_retention(place, store)
    assert await store.get(old.id) is None
    for cursor in (secrets.token_hex(20), old.id):
        d = store.list(ListQuery(before=cursor))  # must not raise here: a Deferred that fails
        assert isinstance(d, Deferred)
        with pytest.raises(UnknownCursor):
            await d


@pytest_twisted.ensureDeferred
async def test_text_filter_is_a_case_insensitive_substring_of_the_command_line(place: Any) -> None:
    store = place.open()
    a = await admit(store, make_job("rsync", ["-a", "/srv/Backup", "host:/STRASSE"]))
    b = await admit(store, make_job("tar", ["czf", "50%_done.tgz", "straße"]))
    c = await admit(store, make_job("echo", ["hello world"]))
    assert await listing(store, text="backup") == [a.id]
    assert await listing(store, text="STRASSE") == [b.id, a.id]  # ß casefolds to ss
    assert await listing(store, text="50%_") == [b.id]  # no LIKE wildcards
    assert await listing(store, text="%") == [b.id]
    assert await listing(store, text="o w") == [c.id]  # across the command and an argument
    assert await listing(store, text="echo hello") == [c.id]
    assert await listing(store, text="nothing") == []
    assert await listing(store, text="a", states=frozenset({jobs.RUNNING})) == []


@pytest_twisted.ensureDeferred
async def test_state_filter_takes_several_states(place: Any) -> None:
    store = place.open()
    made = await _history(store, 10)
    for states in ({jobs.QUEUED}, {jobs.RUNNING, jobs.CANCELED}, {jobs.LOST}, set(jobs.STATES)):
        expected = [j.id for j in reversed(made) if j.state in states]
        assert await listing(store, states=frozenset(states)) == expected


# -- retention, pruning, counts ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_retention_evicts_the_oldest_finished_never_active_jobs(place: Any) -> None:
    store = place.open(max_finished=3)
    queued = await admit(store, make_job("queued"))
    running = start(store, await admit(store, make_job("running"), starting=True))
    others = [start(store, await admit(store, make_job("j%d" % i), starting=True)) for i in range(6)]
    # finish in an order unlike the admission order: 3 1 5 0 4 2
    order = [others[i] for i in (3, 1, 5, 0, 4, 2)]
    t0 = time.time()
    for n, job in enumerate(order):
        await finish(store, job, finished_at=t0 + n)
        await apply_retention(place, store)
        retained_finished = order[max(0, n + 1 - 3) : n + 1]
        for other in order[: n + 1]:
            assert (await store.get(other.id) is not None) == (other in retained_finished), (n, other.command)
        assert await store.get(queued.id) is not None and await store.get(running.id) is not None
    assert set(await listing(store)) == {queued.id, running.id, *(j.id for j in order[-3:])}


@pytest_twisted.ensureDeferred
async def test_prune_evicts_finished_jobs_older_than_a_time(place: Any) -> None:
    store = place.open()
    t0 = time.time() - 1000
    queued = await admit(store, make_job(created_at=t0 - 50))
    running = start(store, await admit(store, make_job(created_at=t0 - 50), starting=True))
    done = []
    for i in range(5):
        job = start(store, await admit(store, make_job(created_at=t0 - 50), starting=True))
        done.append(await finish(store, job, finished_at=t0 + 10 * i))
    assert await store.prune(t0 + 25) == 3  # finished at t0, t0+10, t0+20
    assert [await store.get(j.id) is not None for j in done] == [False, False, False, True, True]
    assert await store.get(queued.id) is not None and await store.get(running.id) is not None
    assert await store.prune(t0 + 25) == 0
    assert await store.prune(time.time() + 1) == 2
    assert set(await listing(store)) == {queued.id, running.id}


@pytest_twisted.ensureDeferred
async def test_counts_by_state_and_finished_per_minute(place: Any) -> None:
    store = place.open()
    minute = (int(time.time()) // 60 - 10) * 60
    await admit(store, make_job())
    start(store, await admit(store, make_job(), starting=True))
    for state, at in [
        (jobs.SUCCEEDED, minute + 1),
        (jobs.SUCCEEDED, minute + 59.5),
        (jobs.FAILED, minute + 30),
        (jobs.SUCCEEDED, minute + 60),
        (jobs.TIMED_OUT, minute - 120),
    ]:
        job = start(store, await admit(store, make_job(), starting=True))
        await finish(store, job, state, code=0 if state == jobs.SUCCEEDED else 1, finished_at=at)
    counts = await store.counts(since=minute)
    assert counts.states == {jobs.QUEUED: 1, jobs.RUNNING: 1, jobs.SUCCEEDED: 3, jobs.FAILED: 1, jobs.TIMED_OUT: 1}
    assert sorted(counts.finished) == [
        (minute, jobs.FAILED, 1),
        (minute, jobs.SUCCEEDED, 2),
        (minute + 60, jobs.SUCCEEDED, 1),
    ]


@pytest_twisted.ensureDeferred
async def test_a_forgotten_job_is_gone(place: Any) -> None:
    store = place.open()
    kept = await admit(store, make_job())
    refused = await admit(store, make_job(), starting=True)
    store.forget(refused)

    async def gone() -> bool:
        return await store.get(refused.id) is None

    await until(gone)
    assert await listing(store) == [kept.id]
    assert (await store.counts(0)).states == {jobs.QUEUED: 1}


@pytest_twisted.ensureDeferred
async def test_the_callback_delivery_record_follows_its_changes(place: Any) -> None:
    store = place.open()
    job = start(store, await admit(store, make_job(callback="http://127.0.0.1:9/hook"), starting=True))
    await finish(store, job)
    found = await store.get(job.id)
    assert found is not None and found.to_json()["callback_delivery"] == CallbackDelivery().to_json()
    delivery = job.callback_delivery
    # as the notifier does: update the record in place, then tell the store
    for state, attempts, status, error in [
        ("pending", 1, 503, "HTTP 503 Service Unavailable"),
        ("delivered", 2, 200, None),
    ]:
        delivery.state, delivery.attempts, delivery.last_status, delivery.last_error = state, attempts, status, error
        store.delivery_changed(job.id, delivery.to_json())
        wanted = delivery.to_json()

        async def recorded(wanted: Any = wanted) -> bool:
            found = await store.get(job.id)
            return found is not None and found.to_json()["callback_delivery"] == wanted

        await until(recorded)
    if place.durable:
        await store.close()
        store = place.open()
        found = await store.get(job.id)
        assert found is not None and found.to_json_bytes() == job.to_json_bytes()


# -- durable stores: what a restart finds ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_restart_keeps_history_and_the_queue_in_order(durable_place: Any) -> None:
    place = durable_place
    store = place.open()
    done = await finish(store, start(store, await admit(store, make_job("echo", ["done"]), starting=True)))
    queued = [
        await admit(
            store, make_job("cat", [str(i)], env={"TOKEN": "s3cret-%d" % i}, stdin=b"in\x00%d" % i, timeout=9.5)
        )
        for i in range(3)
    ]
    await store.close()
    store = place.open()
    recovery = place.recovery
    recovered = await queue_after_restart(place, store)
    assert [s.job.id for s in recovered] == [j.id for j in queued]
    for i, stored in enumerate(recovered):
        # (a cluster node runs what it claims)
        assert stored.job.state == (jobs.RUNNING if getattr(place, "shared_queue", False) else jobs.QUEUED)
        assert stored.job.command == "cat"
        assert stored.request is not None
        assert stored.request["env"] == {"TOKEN": "s3cret-%d" % i} and stored.request["timeout"] == 9.5
        assert stored.request["stdin"] is not None
        # a recovered queued job can run: its output buffers work like new ones
        stored.job.stdout.append(b"x" * (3 * MAX_OUTPUT))
        assert stored.job.stdout.dropped == 2 * MAX_OUTPUT and stored.job.stdout.over_cap
    assert list(recovery.lost) == [] and list(recovery.deliveries) == []
    found = await store.get(done.id)
    assert found is not None and found.to_json_bytes() == done.to_json_bytes()


@pytest_twisted.ensureDeferred
async def test_a_restart_declares_running_jobs_lost(durable_place: Any) -> None:
    place = durable_place
    store = place.open()
    plain = start(store, await admit(store, make_job("sleep", ["60"]), starting=True), pid=31337)
    hooked = start(store, await admit(store, make_job("sleep", ["61"], callback="http://127.0.0.1:9/h"), starting=True))
    await store.close()  # as after a crash, the running jobs never finished
    before = time.time()
    store = place.open()
    recovery = place.recovery
    assert sorted(j.id for j in recovery.lost) == sorted([plain.id, hooked.id])
    lost = {j.id: j for j in recovery.lost}
    assert lost[plain.id].pid == 31337 and lost[plain.id].identity == (987654, "boot-id")
    for job in (plain, hooked):
        found = await store.get(job.id)
        assert found is not None
        view = found.to_json()
        assert (view["state"], view["code"], view["err"]["code"]) == (jobs.LOST, -1, "LOST")
        assert found.finished_at is not None and found.finished_at >= before - 1
    deliveries = await deliveries_after_restart(place, store)
    assert [j.id for j in deliveries] == [hooked.id]
    assert deliveries[0].callback_delivery.to_json() == CallbackDelivery().to_json()
    found = await store.get(plain.id)
    assert found is not None and "callback_delivery" not in found.to_json()


@pytest_twisted.ensureDeferred
async def test_a_pending_delivery_is_resumed_with_its_attempts(durable_place: Any) -> None:
    place = durable_place
    store = place.open()
    job = await finish(
        store, start(store, await admit(store, make_job(callback="http://127.0.0.1:9/h"), starting=True))
    )
    delivery = job.callback_delivery
    delivery.attempts, delivery.last_status, delivery.last_error = 2, 502, "HTTP 502 Bad Gateway"
    store.delivery_changed(job.id, delivery.to_json())
    await store.close()
    store = place.open()
    deliveries = await deliveries_after_restart(place, store)
    assert [j.id for j in deliveries] == [job.id]
    assert deliveries[0].callback_delivery.to_json() == delivery.to_json()


@pytest_twisted.ensureDeferred
async def test_a_smaller_max_finished_applies_at_the_next_start(durable_place: Any) -> None:
    place = durable_place
    store = place.open()
    queued = await admit(store, make_job())
    t0 = time.time()
    made = [
        await finish(store, start(store, await admit(store, make_job(), starting=True)), finished_at=t0 + i)
        for i in range(5)
    ]
    await store.close()
    store = place.open(max_finished=2)
    await apply_retention(place, store)
    assert await listing(store) == [made[4].id, made[3].id, queued.id]


# -- hypothesis: retention and paging against a model -----------------------------------


class RetentionModel(RuleBasedStateMachine):
    """Admit, start, finish and prune at random; the store must agree with a
    plain model: every retained job found and listed once, newest first
    (paged with ``before`` at several page sizes), the evicted ones exactly
    the oldest finished, active jobs never evicted, the counts right.

    Runs as a ``unittest`` case (``.TestCase`` below): pytest runs those
    outside the reactor's greenlet, where ``blockon`` may wait for the
    store's Deferreds while the real reactor runs its writer thread.
    """

    #: the store's place class (an entry of PLACES)
    place_class: Any = None
    max_finished = 3

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="store-model-")
        self.place = self.place_class(Path(self.directory))
        self.store = self.place.open(self.max_finished)
        self.order: list[Job] = []  # retained jobs, admission order
        self.finished: list[Job] = []  # retained finished jobs, finishing order
        self.evicted: list[Job] = []
        self.clock = time.time() - 10_000

    def _block(self, d: Any) -> Any:
        return pytest_twisted.blockon(d)

    @rule(starting=st.booleans())
    def submit(self, starting: bool) -> None:
        job = make_job("cmd", [secrets.token_hex(2)])
        self._block(self.store.admit(job, starting))
        if starting:
            start(self.store, job)
        self.order.append(job)

    @precondition(lambda self: any(j.state == jobs.QUEUED for j in self.order))
    @rule(pick=st.integers(min_value=0, max_value=100))
    def start_one(self, pick: int) -> None:
        queued = [j for j in self.order if j.state == jobs.QUEUED]
        if getattr(self.place, "shared_queue", False):
            # A cluster node claims the oldest queued job, then starts it.
            (claimed,) = self._block(self.store.claim(1, None, []))
            job = next(j for j in queued if j.id == claimed.job.id)
            job.lease = claimed.job.lease
        else:
            job = queued[pick % len(queued)]
        start(self.store, job)

    @precondition(lambda self: any(not j.finished for j in self.order))
    @rule(pick=st.integers(min_value=0, max_value=100), state=st.sampled_from(sorted(jobs.TERMINAL_STATES)))
    def finish_one(self, pick: int, state: str) -> None:
        active = [j for j in self.order if not j.finished]
        job = active[pick % len(active)]
        self.clock += 1
        self._block(Deferred.fromCoroutine(finish(self.store, job, state, finished_at=self.clock)))
        self._block(Deferred.fromCoroutine(apply_retention(self.place, self.store)))
        self.finished.append(job)
        while len(self.finished) > self.max_finished:
            self._evict(self.finished.pop(0))

    def _evict(self, job: Job) -> None:
        self.order.remove(job)
        self.evicted.append(job)

    @precondition(lambda self: bool(self.finished))
    @rule(keep=st.integers(min_value=0, max_value=3))
    def prune(self, keep: int) -> None:
        # evict every finished job but the newest ``keep``
        kept = self.finished[-keep].finished_at if 0 < keep <= len(self.finished) else None
        cut = self.clock + 1 if kept is None else kept
        expected = [j for j in self.finished if j.finished_at is not None and j.finished_at < cut]
        assert self._block(self.store.prune(cut)) == len(expected)
        for job in expected:
            self.finished.remove(job)
            self._evict(job)

    @invariant()
    def agrees_with_the_model(self) -> None:
        newest_first = [j.id for j in reversed(self.order)]
        for size in (1, 2, 5):
            assert self._block(Deferred.fromCoroutine(every_page(self.store, size))) == newest_first
        for job in self.order:
            found = self._block(self.store.get(job.id))
            assert found is not None and found.state == job.state
        for job in self.evicted[-3:]:
            assert self._block(self.store.get(job.id)) is None
        expected: dict[str, int] = {}
        for job in self.order:
            expected[job.state] = expected.get(job.state, 0) + 1
        # counts read what is recorded: a start is an eventual write

        async def counted() -> bool:
            return (await self.store.counts(0)).states == expected

        self._block(Deferred.fromCoroutine(until(counted)))

    def teardown(self) -> None:
        try:
            self._block(self.store.close())
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            getattr(self.place, "cleanup", lambda: None)()


def _skip_unavailable(self: Any) -> None:
    reason = self.place_class.unavailable()
    if reason is not None:
        self.skipTest("the %s store cannot run here: %s" % (self.place_class.name, reason))


# One unittest case per store (see RetentionModel): pytest collects them by name.
for _name, _place_class in PLACES.items():
    _machine: Any = type("RetentionModel_" + _name, (RetentionModel,), {"place_class": _place_class})
    _case: Any = type(
        "TestRetentionAndPagingAgreeWithAModel_" + _name,
        (_machine.TestCase,),
        {"setUp": _skip_unavailable, "place_class": _place_class},
    )
    _case.settings = settings(max_examples=12, stateful_step_count=20, deadline=None)
    globals()[_case.__name__] = _case
del _name, _place_class, _machine, _case
