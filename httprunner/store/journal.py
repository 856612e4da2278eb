"""The write journal of the SQL stores: batched, ordered, retried writes.

Every write is a small function of a database connection, built on the
reactor thread from a snapshot of the job (the job keeps changing there)
and run on one writer thread.  Writes handed over during one reactor turn
are committed together in one transaction (group commit: the thread
commits one batch while the next one gathers), so the reactor never waits
for a disk or a server.

Two kinds of write (see ``store/base.py``):

- *required* (an admission): its Deferred fails with StoreUnavailable if
  the transaction fails; nothing of it was kept;
- *eventual* (every later transition): kept, in order, and retried with
  backoff until the database takes it; its Deferred fires only then.

A failure that is not the database's (a bug, a constraint) does not block
the journal: the batch is replayed one write per transaction, and a write
that fails alone is dropped (required: failed; eventual: logged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from httprunner.store.base import StoreUnavailable

#: how long an eventual write waits for others to share its transaction
EVENTUAL_DELAY = 0.005
#: retry delays of eventual writes while the database refuses them
RETRY_FIRST = 0.1
RETRY_CAP = 5.0
#: immediate retries of a batch the database rolled back for a transient
#: reason (a deadlock between two writers' batches), before it counts as
#: an outage
TRANSIENT_RETRIES = 3


@attrs.define(eq=False)
class Write:
    """One write: ``run(connection)`` on the writer thread."""

    run: Callable[[Any], Any]
    required: bool
    done: Deferred[Any] = attrs.field(factory=Deferred)
    #: the job it concerns, answered from memory until the write is in
    job_id: str | None = None
    #: called on the reactor thread just before the write is handed to the
    #: writer thread (to read what is cheaper to know late)
    prepare: Callable[[], None] | None = None


class Journal:
    """Runs writes on one thread in batches; see the module docstring.

    ``begin(connection)``/``commit``/``rollback`` delimit a transaction;
    ``is_outage(exception)`` tells a database that refuses writes for now
    (disk full, I/O error, server gone) from a bug.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        connection: Callable[[], Any],
        *,
        begin: Callable[[Any], None],
        commit: Callable[[Any], None],
        rollback: Callable[[Any], None],
        is_outage: Callable[[BaseException], bool],
        is_transient: Callable[[BaseException], bool] = lambda error: False,
        name: str,
        on_state: Callable[[str | None], None] = lambda error: None,
    ) -> None:
        self.reactor = reactor
        self._connection = connection
        self._begin = begin
        self._commit = commit
        self._rollback = rollback
        self._is_outage = is_outage
        self._is_transient = is_transient
        self._on_state = on_state
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=name)
        self._pending: list[Write] = []
        self._busy = False
        self._flush_call: IDelayedCall | None = None
        self._retry_delay = 0.0
        self._idle_waiters: list[Deferred[None]] = []
        #: the last outage's message, None while writes go through
        self.last_error: str | None = None
        self.running = False

    def start(self) -> None:
        self._pool.start()
        self.running = True

    @property
    def backlog(self) -> int:
        """Writes not yet committed."""
        return len(self._pending) + (1 if self._busy else 0)

    def submit(self, write: Write) -> Deferred[Any]:
        self._pending.append(write)
        if write.required:
            # A request (or a cluster's heartbeat) waits for this write: now,
            # also during an outage's backoff, so a submission gets its 503
            # at once and the first write after the database returns goes
            # through at once.
            self._schedule(0, sooner=True)
        else:
            # Eventual writes wait a few milliseconds, so that one transaction
            # carries many and a short job's start and end become one write
            # (``withdraw``); they never cut a backoff short.
            self._schedule(EVENTUAL_DELAY)
        return write.done

    def withdraw(self, write: Write) -> bool:
        """Drop a write not yet handed to the thread (a later write makes it
        redundant); True if it was, and its Deferred fires with None."""
        for i, pending in enumerate(self._pending):
            if pending is write:
                del self._pending[i]
                write.done.callback(None)
                return True
        return False

    def call(self, run: Callable[[Any], Any]) -> Deferred[Any]:
        """Run ``run(connection)`` on the writer thread outside any batch
        (maintenance: checkpoints)."""
        return deferToThreadPool(self.reactor, self._pool, lambda: run(self._connection()))

    def drain(self) -> Deferred[None]:
        """Fires once every write handed over so far is in (or dropped);
        may be canceled (a timeout)."""

        def forget(d: Deferred[None]) -> None:
            # Canceled (a bounded wait gave up): never fire it later.
            if d in self._idle_waiters:
                self._idle_waiters.remove(d)

        d: Deferred[None] = Deferred(forget)
        if not self._pending and not self._busy:
            d.callback(None)
        else:
            self._idle_waiters.append(d)
            self._schedule(0, sooner=True)
        return d

    def stop(self) -> None:
        """Stop the writer thread (after :meth:`drain`, or giving up)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.running:
            self.running = False
            self._pool.stop()

    # -- internals --------------------------------------------------------

    def _schedule(self, delay: float, sooner: bool = False) -> None:
        if self._busy or not self._pending or not self.running:
            return
        call = self._flush_call
        if call is not None:
            if not sooner or call.getTime() <= self.reactor.seconds() + delay:
                return
            call.cancel()  # a sooner flush is wanted
        self._flush_call = self.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._busy = True
        for write in batch:
            if write.prepare is not None:
                write.prepare()
        d = deferToThreadPool(self.reactor, self._pool, self._run_batch, batch)
        d.addBoth(self._batch_done, batch)

    def _run_batch(self, batch: list[Write]) -> tuple[str, Any]:
        """On the writer thread: the whole batch in one transaction."""
        for attempt in range(TRANSIENT_RETRIES + 1):
            connection = self._open_transaction()
            try:
                results = [write.run(connection) for write in batch]
                self._commit(connection)
                return "ok", results
            except BaseException as e:
                try:
                    self._rollback(connection)
                except BaseException:
                    pass
                if self._is_transient(e) and attempt < TRANSIENT_RETRIES:
                    # Rolled back whole: nothing of it is in, run it again.
                    continue
                if self._is_outage(e):
                    return "outage", e
                break
        # Not the database's fault: one write per transaction, to find it.
        outcomes: list[tuple[str, Any]] = []
        for write in batch:
            try:
                self._begin(connection)
                result = write.run(connection)
                self._commit(connection)
                outcomes.append(("ok", result))
            except BaseException as e:
                try:
                    self._rollback(connection)
                except BaseException:
                    pass
                outcomes.append(("outage" if self._is_outage(e) else "bug", Failure()))
        return "each", outcomes

    def _open_transaction(self) -> Any:
        """On the writer thread: a connection in a new transaction.

        A connection that went stale while it was idle (the server
        restarted, or came back after an outage) fails at ``BEGIN``, before
        anything of the batch was sent: a fresh one gets one more try, so
        the first write after the database returns does not fail.
        """
        connection = self._connection()
        try:
            self._begin(connection)
        except BaseException as e:
            if not self._is_outage(e):
                raise
            connection = self._connection()
            self._begin(connection)
        return connection

    def _batch_done(self, outcome: Any, batch: list[Write]) -> None:
        self._busy = False
        if isinstance(outcome, Failure):
            # The thread pool itself failed (stopped): treat as an outage.
            outcome = ("outage", outcome.value)
        kind, value = outcome
        retry: list[Write] = []
        if kind == "ok":
            self._healthy()
            for write, result in zip(batch, value, strict=True):
                write.done.callback(result)
        elif kind == "outage":
            self._outage(value)
            for write in batch:
                if write.required:
                    write.done.errback(StoreUnavailable(self.last_error))
                else:
                    retry.append(write)
        else:
            for write, (status, result) in zip(batch, value, strict=True):
                if status == "ok":
                    write.done.callback(result)
                elif status == "outage":
                    self._outage(result.value)
                    if write.required:
                        write.done.errback(StoreUnavailable(self.last_error))
                    else:
                        retry.append(write)
                else:
                    self.log.failure("a store write failed and was dropped", result)
                    if write.required:
                        write.done.errback(StoreUnavailable("internal error; the daemon's log has the details"))
                    else:
                        write.done.errback(result)
            if not retry:
                self._healthy()
        if retry:
            # Keep the order: the failed eventual writes go first.
            self._pending[:0] = retry
            self._retry_delay = min(max(self._retry_delay * 2, RETRY_FIRST), RETRY_CAP)
            # Required writes handed over meanwhile are not kept waiting (see submit).
            self._schedule(0 if any(write.required for write in self._pending) else self._retry_delay)
        else:
            self._schedule(0)
        if not self._pending and not self._busy and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _outage(self, error: BaseException) -> None:
        message = str(error) or type(error).__name__
        if self.last_error is None:
            self.log.error("the store refuses writes: {error}; retrying", error=message)
        self.last_error = message
        self._on_state(message)

    def _healthy(self) -> None:
        if self.last_error is not None:
            self.log.info("the store takes writes again")
            self.last_error = None
            self._on_state(None)
        self._retry_delay = 0.0


class JournaledStore:
    """What the SQL stores share around their journal.

    - jobs with writes not in yet are answered from memory (``unsaved``);
    - the store knows which jobs have their request (environment, stdin)
      on disk, to delete it only where it is;
    - a job's start still waiting for the writer thread when the job ends
      is withdrawn: the end carries all of it (one write for a short job).
    """

    def _init_journaled(self) -> None:
        self._journal: Journal | None = None
        #: jobs with writes not in yet: id -> [job, writes pending]
        self._unsaved: dict[str, list[Any]] = {}
        #: jobs whose request is on disk (only a queued job's is written)
        self._with_request: set[str] = set()
        #: start writes not handed to the writer thread yet: id -> (write, had a request)
        self._pending_start: dict[str, tuple[Write, bool]] = {}

    def _write(
        self,
        job: Any,
        run: Callable[[Any], Any],
        required: bool,
        prepare: Callable[[], None] | None = None,
        write: Write | None = None,
    ) -> Deferred[Any]:
        """Hand a write to the journal; until it is in, ``job`` (if any) is
        answered from memory."""
        if self._journal is None:
            failed: Deferred[Any] = Deferred()
            failed.errback(StoreUnavailable("the store is closed"))
            return failed
        if write is None:
            write = Write(run=run, required=required, job_id=None if job is None else job.id, prepare=prepare)
        if job is not None:
            entry = self._unsaved.get(job.id)
            if entry is None:
                self._unsaved[job.id] = [job, 1]
            else:
                entry[0] = job
                entry[1] += 1
            write.done.addBoth(self._saved, job.id)
        return self._journal.submit(write)

    def _saved(self, result: Any, job_id: str) -> Any:
        entry = self._unsaved.get(job_id)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._unsaved[job_id]
        return result

    def _unsaved_job(self, job_id: str) -> Any:
        entry = self._unsaved.get(job_id)
        return None if entry is None else entry[0]

    def _took_request(self, job_id: str) -> bool:
        """True (once) if the job's request is on disk, to be deleted now."""
        if job_id in self._with_request:
            self._with_request.discard(job_id)
            return True
        return False

    def _write_start(
        self, job: Any, run: Callable[[Any], Any], prepare: Callable[[], None] | None, had_request: bool
    ) -> None:
        """Hand a job's start to the journal, withdrawable by its end."""
        write = Write(run=run, required=False, job_id=job.id, prepare=prepare)
        self._pending_start[job.id] = (write, had_request)
        self._write(job, run, required=False, write=write).addBoth(self._start_written, job.id, write)

    def _start_written(self, result: Any, job_id: str, write: Write) -> Any:
        pending = self._pending_start.get(job_id)
        if pending is not None and pending[0] is write:
            del self._pending_start[job_id]
        return result

    def _withdraw_start(self, job_id: str) -> None:
        """The job ended: drop its start if it is still waiting (its end
        writes everything, the request deletion included)."""
        start = self._pending_start.pop(job_id, None)
        if start is not None and self._journal is not None and self._journal.withdraw(start[0]) and start[1]:
            self._with_request.add(job_id)
