"""The SQLite store (``--store sqlite:PATH``): one daemon's durable history.

One file, stdlib ``sqlite3``, WAL.  Writes go through the journal
(``store/journal.py``) to one writer thread and are committed in batches;
reads are short indexed queries on a second connection on the reactor
thread (WAL lets them run beside the writer).  A job whose write is not in
yet is answered from memory.

- **One owner**: an exclusive ``flock`` on the file for the daemon's
  lifetime; a second daemon refuses to start.  (``flock`` and SQLite's own
  POSIX locks do not interact on Linux; the descriptor is kept open until
  the store closes, since closing any descriptor of the file would drop
  SQLite's POSIX locks.)
- **Durability**: ``synchronous=FULL``: a commit is on disk before the
  ``202`` goes out, power loss included.
- **Secrets**: a waiting job's request (environment, stdin) lives in its
  own table and is deleted when the job starts or ends; ``secure_delete``
  zeroes the deleted bytes in the file's pages, and a ``TRUNCATE``
  checkpoint shortly after empties the WAL, which still held them.
- **Schema**: versioned with ``PRAGMA user_version``, migrated forward at
  start; a file from a newer version refuses to start.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from httprunner import jobs
from httprunner.jobs import Job, request_record
from httprunner.store.base import (
    ListQuery,
    Recovery,
    SingleDaemonStore,
    StoreCounts,
    Stored,
    StoreError,
    StoreUnavailable,
    UnknownCursor,
)
from httprunner.store.journal import Journal, JournaledStore
from httprunner.store.rows import (
    LOST_ERROR,
    OUTPUT_COLUMNS,
    SUMMARY_COLUMNS,
    admission_values,
    ending_values,
    job_from_row,
)

#: the schema this code writes; migrations below bring older files here
SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        command TEXT NOT NULL,
        arguments TEXT NOT NULL,
        search TEXT NOT NULL,
        callback TEXT,
        code INTEGER,
        signal TEXT,
        err TEXT,
        pid INTEGER,
        node TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        duration REAL,
        timeout REAL,
        cpu_seconds REAL,
        max_rss_bytes INTEGER,
        stdout_head BLOB,
        stdout_tail BLOB,
        stdout_total INTEGER NOT NULL DEFAULT 0,
        stdout_kept INTEGER NOT NULL DEFAULT 0,
        stderr_head BLOB,
        stderr_tail BLOB,
        stderr_total INTEGER NOT NULL DEFAULT 0,
        stderr_kept INTEGER NOT NULL DEFAULT 0,
        proc_start INTEGER,
        boot_id TEXT,
        delivery_state TEXT,
        delivery_attempts INTEGER,
        delivery_last_status INTEGER,
        delivery_last_error TEXT
    );
    CREATE INDEX jobs_by_state ON jobs (state, seq);
    CREATE INDEX jobs_by_finish ON jobs (finished_at, seq) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_pending_delivery ON jobs (seq) WHERE delivery_state = 'pending';
    -- what a waiting job needs to run (environment, stdin): deleted when
    -- it starts or ends, so request secrets do not stay on disk
    CREATE TABLE requests (
        job_id TEXT PRIMARY KEY,
        request TEXT NOT NULL
    );
    """,
}

#: finished jobs answered from memory (see SQLiteJobStore._recent)
RECENT_JOBS = 256
RECENT_BYTES = 16 << 20
#: a TRUNCATE checkpoint follows the deletion of a request this soon
CHECKPOINT_DELAY = 1.0
#: how long closing waits for writes the database refuses (disk full)
CLOSE_GRACE = 5.0

_SUMMARY = ", ".join(SUMMARY_COLUMNS)
_FULL = _SUMMARY + ", " + ", ".join(OUTPUT_COLUMNS)
_ACTIVE = "('%s', '%s')" % (jobs.QUEUED, jobs.RUNNING)


def _is_outage(error: BaseException) -> bool:
    """Disk full, I/O errors, a locked or read-only file: the database
    refuses writes for now (as opposed to a bug in a statement)."""
    return isinstance(error, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.IntegrityError | sqlite3.ProgrammingError
    )


class SQLiteJobStore(SingleDaemonStore, JournaledStore):
    """Jobs in one SQLite file; see the module docstring."""

    log = Logger()
    durable = True

    def __init__(
        self,
        path: str,
        *,
        reactor: Any,
        max_finished: int,
        max_output: int,
        delivery_factory: Callable[[dict[str, Any]], Any],
        walltime: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.description = "sqlite:%s" % self.path
        self.reactor = reactor
        self.max_finished = max_finished
        self.max_output = max_output
        self.delivery_factory = delivery_factory
        self.walltime = walltime
        self._lock_fd: int | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._init_journaled()
        #: recently finished jobs, answered from memory (a client polls a
        #: job right after it ends, a callback's record changes then):
        #: bounded in count and in retained output bytes
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._recent_bytes = 0
        #: finished jobs in the file (the writer thread's count)
        self._finished_count = 0
        self._checkpoint: IDelayedCall | None = None
        self._secrets_deleted = False
        self._checkpoint_failing = False

    # -- opening ----------------------------------------------------------

    def open(self) -> Recovery:
        """Lock, open, check, migrate, recover; StoreError in one line."""
        self._lock()
        try:
            self._writer = self._connect()
            self._prepare(self._writer)
            recovery = self._recover(self._writer)
            self._with_request = {stored.job.id for stored in recovery.queued if stored.request is not None}
            # A crash may have left deleted requests (secrets) in the WAL,
            # before the checkpoint that follows a deletion: empty it now.
            _truncate_wal(self._writer)
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as e:
            self._close_connections()
            self._unlock()
            raise StoreError("%s: cannot use this file as a job store: %s" % (self.path, e)) from None
        except ValueError as e:
            # A row the recovery cannot read back (its JSON or delivery
            # record was altered): refuse in one line, like a damaged file.
            self._close_connections()
            self._unlock()
            raise StoreError(
                "%s: the job store holds a damaged job (%s); restore it from a backup" % (self.path, e)
            ) from None
        except StoreError:
            self._close_connections()
            self._unlock()
            raise
        self._journal = Journal(
            self.reactor,
            lambda: self._writer,
            begin=lambda c: c.execute("BEGIN IMMEDIATE"),
            commit=lambda c: c.execute("COMMIT"),
            rollback=lambda c: c.execute("ROLLBACK"),
            is_outage=_is_outage,
            name="httprunner-sqlite",
        )
        self._journal.start()
        return recovery

    def _lock(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError("%s: cannot open the job store: %s" % (self.path, e.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError("%s: another httprunner daemon is using this job store" % self.path) from None
            raise StoreError("%s: cannot lock the job store: %s" % (self.path, e.strerror)) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; the journal
        # delimits its own.  The writer runs on its own thread.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout = 5000")
        return connection

    def _prepare(self, c: sqlite3.Connection) -> None:
        # Whose file is it?  Asked before anything is written to it: a
        # refusal must leave someone else's database (or a newer schema)
        # exactly as it was, not even switched to WAL mode.
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                "%s: the job store has schema version %d, newer than this httprunner's %d; upgrade httprunner"
                % (self.path, version, SCHEMA_VERSION)
            )
        if version == 0 and c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError("%s: this SQLite file is not an httprunner job store" % self.path)
        check = c.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            # SQLite's report spans lines; the refusal is one line.
            raise StoreError(
                "%s: the job store is damaged (%s); restore it from a backup" % (self.path, " ".join(check.split()))
            )
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError("%s: cannot switch the file to WAL mode (got %s)" % (self.path, mode))
        c.execute("PRAGMA synchronous = FULL")
        c.execute("PRAGMA secure_delete = ON")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            c.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[target] + "PRAGMA user_version = %d; COMMIT;" % target)
            self.log.info("job store {path} migrated to schema {version}", path=self.path, version=target)

    def _recover(self, c: sqlite3.Connection) -> Recovery:
        """Declare the jobs that were running lost; load the queue and the
        pending callbacks."""
        now = self.walltime()
        running = [
            job_from_row(row, self.max_output, self.delivery_factory)
            for row in c.execute("SELECT %s FROM jobs WHERE state = ? ORDER BY seq" % _SUMMARY, (jobs.RUNNING,))
        ]
        c.execute("BEGIN IMMEDIATE")
        for job in running:
            c.execute(
                "UPDATE jobs SET state = ?, code = -1, err = ?, finished_at = ?,"
                " delivery_state = CASE WHEN callback IS NULL THEN NULL ELSE 'pending' END,"
                " delivery_attempts = CASE WHEN callback IS NULL THEN NULL ELSE 0 END WHERE id = ?",
                (jobs.LOST, json.dumps(LOST_ERROR), now, job.id),
            )
            c.execute("DELETE FROM requests WHERE job_id = ?", (job.id,))
            self.log.warn("job {job_id} was running when the daemon stopped: declared lost", job_id=job.id)
        c.execute("COMMIT")
        queued = [
            Stored(
                job_from_row(row, self.max_output, self.delivery_factory),
                None if row["request"] is None else json.loads(row["request"]),
            )
            for row in c.execute(
                "SELECT %s, request FROM jobs LEFT JOIN requests ON requests.job_id = jobs.id"
                " WHERE state = ? ORDER BY seq" % _SUMMARY,
                (jobs.QUEUED,),
            )
        ]
        deliveries = [
            job_from_row(row, self.max_output, self.delivery_factory)
            for row in c.execute("SELECT %s FROM jobs WHERE delivery_state = 'pending' ORDER BY seq" % _FULL)
        ]
        self._finished_count = c.execute("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL").fetchone()[0]
        c.execute("BEGIN IMMEDIATE")
        self._evict(c)
        c.execute("COMMIT")
        return Recovery(queued=queued, lost=running, deliveries=deliveries)

    def close(self) -> Deferred[None]:
        """Let every pending write in (bounded), then release the file."""
        journal = self._journal
        if journal is None:
            self._close_connections()
            self._unlock()
            return succeed(None)
        if self._checkpoint is not None and self._checkpoint.active():
            self._checkpoint.cancel()
        self._checkpoint = None
        # Bounded: while the disk is full nothing can be written, and a
        # daemon asked to stop must stop.  What is left is logged below;
        # a job whose end was not recorded is declared lost at the next start.
        d = journal.drain().addTimeout(CLOSE_GRACE, self.reactor).addErrback(lambda f: None)
        if self._secrets_deleted:
            d.addCallback(lambda _: None if journal.backlog else journal.call(_truncate_wal))
            d.addErrback(lambda f: None)

        def closed(result: object) -> None:
            if journal.backlog:
                self.log.error(
                    "job store {path}: {count} writes could not be recorded before the daemon stopped",
                    path=self.path,
                    count=journal.backlog,
                )
            journal.stop()
            self._journal = None
            self._close_connections()
            self._unlock()

        return d.addBoth(closed)

    def health(self) -> dict[str, Any]:
        journal = self._journal
        error = None if journal is None else journal.last_error
        return {
            "kind": "sqlite",
            "durable": True,
            "path": self.path,
            "ok": journal is not None and error is None,
            "last_error": error,
            "backlog": 0 if journal is None else journal.backlog,
        }

    def _close_connections(self) -> None:
        for connection in (self._reader, self._writer):
            if connection is not None:
                try:
                    connection.close()
                except sqlite3.Error:
                    pass
        self._reader = self._writer = None

    # -- writes -------------------------------------------------------------

    def admit(self, job: Job, starting: bool = False) -> Deferred[None]:
        values = admission_values(job)
        request: str | None = None
        if starting:
            # Recorded as running from the start: a crash between the spawn
            # and the next commit leaves it lost, never queued to run twice.
            # So its request is never needed again: it is not written.
            values["state"] = jobs.RUNNING
        else:
            assert job.launch is not None
            request = json.dumps(request_record(job.launch), ensure_ascii=False)
            self._with_request.add(job.id)
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))

        def run(c: sqlite3.Connection) -> int:
            cursor = c.execute("INSERT INTO jobs (%s) VALUES (%s)" % (columns, marks), tuple(values.values()))
            if request is not None:
                c.execute("INSERT INTO requests (job_id, request) VALUES (?, ?)", (job.id, request))
            return int(cursor.lastrowid or 0)

        def admitted(seq: int) -> None:
            job.seq = seq

        def refused(failure: Any) -> Any:
            self._with_request.discard(job.id)
            return failure

        return self._write(job, run, required=True).addCallbacks(admitted, refused)

    def starting(self, job: Job) -> Deferred[None]:
        """Record that a queued job is about to be spawned (its request is
        still needed: it is deleted by ``started``)."""
        job_id = job.id

        def run(c: sqlite3.Connection) -> None:
            c.execute("UPDATE jobs SET state = ? WHERE id = ? AND state = ?", (jobs.RUNNING, job_id, jobs.QUEUED))

        return self._write(job, run, required=False)

    def requeue(self, job: Job) -> None:
        """Undo ``starting``: the daemon stopped before the spawn."""
        job_id = job.id

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE jobs SET state = ? WHERE id = ? AND state = ? AND pid IS NULL",
                (jobs.QUEUED, job_id, jobs.RUNNING),
            )

        self._write(job, run, required=False)

    def started(self, job: Job, identify: Callable[[], tuple[int, str] | None] | None = None) -> None:
        values: list[Any] = [job.state, job.pid, job.node, job.started_at, None, None, job.id]
        had_request = self._took_request(job.id)

        def prepare() -> None:
            # Late (at the flush, a few ms after the spawn): reading /proc
            # at once would wait for the child's exec to finish.
            identity = identify() if identify is not None else job.identity
            if identity is not None:
                values[4], values[5] = identity

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE jobs SET state = ?, pid = ?, node = ?, started_at = ?, proc_start = ?, boot_id = ?"
                " WHERE id = ?",
                values,
            )
            if had_request:
                self._forget_request(c, values[-1])

        self._write_start(job, run, prepare, had_request)

    def finished(self, job: Job) -> Deferred[bool]:
        values = ending_values(job)
        job_id = job.id
        assignments = ", ".join("%s = ?" % name for name in values)
        self._withdraw_start(job_id)
        had_request = self._took_request(job_id)
        self._remember(job)

        def run(c: sqlite3.Connection) -> bool:
            cursor = c.execute(
                "UPDATE jobs SET %s WHERE id = ? AND finished_at IS NULL" % assignments, (*values.values(), job_id)
            )
            if had_request:
                self._forget_request(c, job_id)
            if cursor.rowcount:
                self._finished_count += 1
                self._evict(c)
            return True

        return self._write(job, run, required=False)

    def _remember(self, job: Job) -> None:
        """Keep a finished job in the small cache of recent ones."""
        size = job.stdout.total - job.stdout.dropped + job.stderr.total - job.stderr.dropped
        if size > RECENT_BYTES // 4:
            return
        self._forget_recent(job.id)
        self._recent[job.id] = job
        self._recent_bytes += size
        while len(self._recent) > RECENT_JOBS or self._recent_bytes > RECENT_BYTES:
            self._forget_recent(next(iter(self._recent)))

    def _forget_recent(self, job_id: str) -> None:
        job = self._recent.pop(job_id, None)
        if job is not None:
            self._recent_bytes -= job.stdout.total - job.stdout.dropped + job.stderr.total - job.stderr.dropped

    def _evicted(self, ids: list[str]) -> None:
        for job_id in ids:
            self._forget_recent(job_id)

    def delivery_changed(self, job_id: str, record: dict[str, Any]) -> None:
        values = (record["state"], record["attempts"], record["last_status"], record["last_error"], job_id)

        def run(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE jobs SET delivery_state = ?, delivery_attempts = ?, delivery_last_status = ?,"
                " delivery_last_error = ? WHERE id = ?",
                values,
            )

        self._write(None, run, required=False)

    def forget(self, job: Job) -> None:
        had_request = self._took_request(job.id)
        self._forget_recent(job.id)

        def run(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            if had_request:
                self._forget_request(c, job.id)

        self._write(job, run, required=False).addBoth(lambda _: self._unsaved.pop(job.id, None))

    def prune(self, before: float) -> Deferred[int]:
        def run(c: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in c.execute(
                    "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? RETURNING id", (before,)
                )
            ]
            self._finished_count -= len(ids)
            if ids:
                self.reactor.callFromThread(self._evicted, ids)
            return len(ids)

        return self._write(None, run, required=True)

    # On the writer thread:

    def _forget_request(self, c: sqlite3.Connection, job_id: str) -> None:
        if c.execute("DELETE FROM requests WHERE job_id = ?", (job_id,)).rowcount:
            self.reactor.callFromThread(self._schedule_checkpoint)

    def _evict(self, c: sqlite3.Connection) -> None:
        excess = self._finished_count - self.max_finished
        if excess > 0:
            ids = [
                row[0]
                for row in c.execute(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished_at IS NOT NULL"
                    " ORDER BY finished_at, seq LIMIT ?) RETURNING id",
                    (excess,),
                )
            ]
            self._finished_count -= len(ids)
            if ids and self._journal is not None:
                self.reactor.callFromThread(self._evicted, ids)

    # -- the WAL after secrets were deleted ---------------------------------

    def _schedule_checkpoint(self) -> None:
        self._secrets_deleted = True
        if self._checkpoint is None and self._journal is not None:
            self._checkpoint = self.reactor.callLater(CHECKPOINT_DELAY, self._run_checkpoint)

    def _run_checkpoint(self) -> None:
        self._checkpoint = None
        journal = self._journal
        if journal is None:
            return
        self._secrets_deleted = False

        def done(busy: Any) -> None:
            self._checkpoint_failing = False
            if busy:
                # A reader held an old snapshot: try again shortly.
                self._schedule_checkpoint()

        def failed(failure: Any) -> None:
            self._schedule_checkpoint()
            if not self._checkpoint_failing:
                # Once until it works again: retried every second, and the
                # log is likely on the disk that is full.
                self._checkpoint_failing = True
                self.log.warn(
                    "job store {path}: WAL checkpoint failed: {error}; retrying", path=self.path, error=failure.value
                )

        journal.call(_truncate_wal).addCallbacks(done, failed)

    # -- reads ----------------------------------------------------------------

    def _read(self, sql: str, args: Iterable[Any]) -> list[sqlite3.Row]:
        assert self._reader is not None, "the store is not open"
        try:
            return self._reader.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable("the job store cannot be read: %s" % e) from None

    def get(self, job_id: str) -> Deferred[Job | None]:
        entry = self._unsaved.get(job_id)
        if entry is not None:
            return succeed(entry[0])
        recent = self._recent.get(job_id)
        if recent is not None:
            return succeed(recent)
        try:
            rows = self._read("SELECT %s FROM jobs WHERE id = ?" % _FULL, (job_id,))
        except StoreUnavailable as e:
            return fail(e)
        if not rows:
            return succeed(None)
        return succeed(job_from_row(rows[0], self.max_output, self.delivery_factory))

    def list(self, query: ListQuery) -> Deferred[list[Job]]:
        where: list[str] = []
        args: list[Any] = []
        try:
            if query.before is not None:
                cursor = self._read("SELECT seq FROM jobs WHERE id = ?", (query.before,))
                if not cursor:
                    unsaved = self._unsaved.get(query.before)
                    if unsaved is None or unsaved[0].seq is None:
                        raise UnknownCursor(query.before)
                    before_seq = unsaved[0].seq
                else:
                    before_seq = cursor[0]["seq"]
                where.append("seq < ?")
                args.append(before_seq)
            if query.states is not None:
                where.append("state IN (%s)" % ", ".join("?" * len(query.states)))
                args.extend(sorted(query.states))
            if query.text:
                where.append("instr(search, ?) > 0")
                args.append(query.text.casefold())
            sql = "SELECT %s FROM jobs%s ORDER BY seq DESC LIMIT ?" % (
                _SUMMARY,
                (" WHERE " + " AND ".join(where)) if where else "",
            )
            rows = self._read(sql, (*args, query.limit))
        except (StoreUnavailable, UnknownCursor) as e:
            return fail(e)
        found = []
        for row in rows:
            entry = self._unsaved.get(row["id"])
            job = entry[0] if entry is not None else job_from_row(row, self.max_output, self.delivery_factory)
            if query.states is None or job.state in query.states:
                found.append(job)
        return succeed(found)

    def counts(self, since: float) -> Deferred[StoreCounts]:
        try:
            states = {row[0]: row[1] for row in self._read("SELECT state, count(*) FROM jobs GROUP BY state", ())}
            finished = [
                (int(row[0]) * 60, row[1], row[2])
                for row in self._read(
                    "SELECT CAST(finished_at / 60 AS INTEGER) AS minute, state, count(*) FROM jobs"
                    " WHERE finished_at >= ? GROUP BY minute, state ORDER BY minute",
                    (since,),
                )
            ]
        except StoreUnavailable as e:
            return fail(e)
        return succeed(StoreCounts(states=states, finished=finished))


def _truncate_wal(c: sqlite3.Connection) -> int:
    """Checkpoint and truncate the WAL; the first column is 1 if a reader
    kept it from completing."""
    row = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(row[0])
