"""The PostgreSQL store (``--store postgresql://...``): several daemons as one.

Every daemon that names the same database (and ``--store-schema``) is a
node of one runner; PostgreSQL is the only thing nodes share.  This
module is the store: the schema and its migrations, every statement, and
the three kinds of connection.  What the nodes *do* with it (heartbeats,
sweeping dead nodes, claiming, cancel requests, live output) is
``httprunner/cluster.py``.

Driver: psycopg 3 (synchronous) on threads of our own, never on the
reactor thread:

- one **writer** connection on the journal's thread (``journal.py``):
  every write, claim and heartbeat, batched per reactor turn, in order,
  retried through an outage;
- a small pool of **reader** threads, one connection each: ``GET``,
  listings, counts, live output of other nodes' jobs;
- one **listener** connection on a thread of its own, blocked in
  ``LISTEN`` (psycopg only reports notifications while a connection is
  busy); it also holds the node's session advisory lock, so a second live
  daemon with the same ``--node`` cannot start, and a crashed one frees
  its name at once (its connection dies with it).

Every terminal transition of a job is conditional on the lease token its
node got when it claimed (or admitted) it, so "finished by its owner" and
"declared lost by a survivor" cannot both win.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg.rows import dict_row
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from httprunner import jobs, orphans
from httprunner.jobs import Job, request_record
from httprunner.store.base import (
    ListQuery,
    NodeView,
    QueueFull,
    Recovery,
    StoreCounts,
    StoreError,
    StoreUnavailable,
    UnknownCursor,
    UnknownNode,
)
from httprunner.store.journal import Journal, JournaledStore, Write
from httprunner.store.rows import (
    LOST_ERROR,
    OUTPUT_COLUMNS,
    SUMMARY_COLUMNS,
    admission_values,
    ending_values,
    job_from_row,
)

_T = TypeVar("_T")

#: the schema this code writes; a database with a newer one refuses to start
SCHEMA_VERSION = 1
#: seconds the listening thread waits for a notification before it looks
#: whether the store is closing (a close waits for it that long at most)
LISTEN_WAKEUP = 0.2
#: finished jobs evicted per statement of a prune (a prune that evicts this
#: many has more to do)
PRUNE_BATCH = 1000
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_TIMESTAMPS = frozenset({"created_at", "started_at", "finished_at"})
_JSON = frozenset({"arguments", "err"})
#: columns of the cluster beside the shared ones
_CLUSTER_COLUMNS = ("pinned_node", "lease", "cancel_requested", "delivery_owner")

#: the connection settings the daemon adds to the operator's URI: a dead
#: server or a cut network is noticed in seconds, not TCP's minutes
CONNECT_OPTIONS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
    "application_name": "httprunner",
}


def _select(name: str) -> str:
    if name in _TIMESTAMPS:
        return "extract(epoch FROM %s)::float8 AS %s" % (name, name)
    if name in _JSON:
        return "%s::text AS %s" % (name, name)
    return name


def _value(name: str) -> str:
    if name in _TIMESTAMPS:
        return "to_timestamp(%%(%s)s)" % name
    if name in _JSON:
        return "%%(%s)s::jsonb" % name
    return "%%(%s)s" % name


_SUMMARY = ", ".join(_select(name) for name in (*SUMMARY_COLUMNS, *_CLUSTER_COLUMNS))
_FULL = _SUMMARY + ", " + ", ".join(OUTPUT_COLUMNS)


def migrations(schema: str) -> dict[int, str]:
    """The schema's migrations, by the version they bring it to."""
    s = '"%s"' % schema
    return {
        1: f"""
        CREATE TABLE {s}.nodes (
            name text PRIMARY KEY,
            incarnation text NOT NULL,
            host text NOT NULL,
            pid integer NOT NULL,
            version text NOT NULL,
            state text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_interval double precision NOT NULL,
            running integer NOT NULL DEFAULT 0,
            max_running integer NOT NULL
        );
        CREATE TABLE {s}.jobs (
            seq bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            state text NOT NULL,
            command text NOT NULL,
            arguments jsonb NOT NULL,
            search text NOT NULL,
            callback text,
            code integer,
            signal text,
            err jsonb,
            pid integer,
            node text,
            pinned_node text,
            lease text,
            cancel_requested boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL,
            started_at timestamptz,
            finished_at timestamptz,
            duration double precision,
            timeout double precision,
            cpu_seconds double precision,
            max_rss_bytes bigint,
            stdout_head bytea,
            stdout_tail bytea,
            stdout_total bigint NOT NULL DEFAULT 0,
            stdout_kept bigint NOT NULL DEFAULT 0,
            stderr_head bytea,
            stderr_tail bytea,
            stderr_total bigint NOT NULL DEFAULT 0,
            stderr_kept bigint NOT NULL DEFAULT 0,
            proc_start bigint,
            boot_id text,
            delivery_state text,
            delivery_attempts integer,
            delivery_last_status integer,
            delivery_last_error text,
            delivery_owner text
        );
        CREATE INDEX jobs_queue ON {s}.jobs (seq) WHERE state = 'queued';
        CREATE INDEX jobs_running ON {s}.jobs (node) WHERE state = 'running';
        CREATE INDEX jobs_by_state ON {s}.jobs (state, seq);
        CREATE INDEX jobs_by_finish ON {s}.jobs (finished_at, seq) WHERE finished_at IS NOT NULL;
        CREATE INDEX jobs_pending_delivery ON {s}.jobs (seq) WHERE delivery_state = 'pending';
        -- what a waiting job needs to run (environment, stdin): deleted
        -- when it starts or ends, so request secrets do not stay
        CREATE TABLE {s}.requests (
            job_id text PRIMARY KEY REFERENCES {s}.jobs (id) ON DELETE CASCADE,
            request jsonb NOT NULL
        );
        """,
    }


def _lock_key(schema: str, what: str) -> int:
    """A signed 64-bit advisory lock key for ``what`` in ``schema``."""
    digest = hashlib.sha256(("httprunner:%s:%s" % (schema, what)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _is_outage(error: BaseException) -> bool:
    """The server is gone or refuses for now (as opposed to a bug)."""
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) or (
        isinstance(error, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow)
    )


def _is_transient(error: BaseException) -> bool:
    """The transaction was rolled back and may simply be run again: a
    deadlock between two nodes' batches (each batch holds the rows it
    wrote until it commits: a node canceling another's job while that one
    cancels one of its own can cross them)."""
    return psycopg is not None and isinstance(
        error, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
    )


def redact(uri: str) -> str:
    """The URI without its password, for logs and /healthz."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", uri)


@attrs.frozen
class Claimed:
    """A queued job this node claimed, with the request it needs to run."""

    job: Job
    request: dict[str, Any] | None


@attrs.define
class Heartbeat:
    """What one heartbeat learned."""

    #: False: a survivor declared this node dead since the last heartbeat
    alive: bool
    #: this node's running jobs and their leases, as the database has them
    leases: dict[str, str]


class PostgresJobStore(JournaledStore):
    """Jobs of a cluster in PostgreSQL; see the module docstring."""

    log = Logger()
    durable = True
    shared_queue = True

    def __init__(
        self,
        uri: str,
        *,
        reactor: Any,
        node: str,
        schema: str,
        heartbeat: float,
        max_finished: int,
        max_queued: int,
        max_running: int,
        max_output: int,
        delivery_factory: Callable[[dict[str, Any]], Any],
        version: str,
        readers: int = 2,
    ) -> None:
        if not SCHEMA_NAME.fullmatch(schema):
            raise ValueError("schema %r is not a plain lowercase SQL name" % schema)
        self.uri = uri
        self.description = redact(uri)
        self.reactor = reactor
        self.node_name = node
        self.schema = schema
        self.heartbeat_interval = heartbeat
        self.max_finished = max_finished
        self.max_queued = max_queued
        self.max_running = max_running
        self.max_output = max_output
        self.delivery_factory = delivery_factory
        self.version = version
        self.incarnation = uuid.uuid4().hex
        self._s = '"%s"' % schema
        self._writer: Any = None
        self._init_journaled()
        self._readers = ThreadPool(minthreads=1, maxthreads=readers, name="httprunner-pg-read")
        self._local = threading.local()
        self._listener: _Listener | None = None
        self._reader_connections: list[Any] = []
        #: called on the reactor thread with each notification's channel
        self.on_notify: Callable[[str, str], None] = lambda channel, payload: None
        #: the state /healthz and /metrics show
        self.connected = False
        self.last_error: str | None = None
        self.counters = {
            "claims": 0,
            "notifies_sent": 0,
            "notifies_received": 0,
            "lost_declared": 0,
            "statements": 0,
        }
        self._connection_class: type[_CountedConnection] = type(
            "CountedConnection", (_CountedConnection,), {"counters": self.counters}
        )
        #: terminal states this node recorded since its last prune (the
        #: cluster prunes sooner when they add up, see cluster.py)
        self.finished_since_prune = 0

    # -- connections --------------------------------------------------------

    def connect(self) -> Any:
        c = self._connection_class.connect(self.uri, autocommit=True, row_factory=dict_row, **CONNECT_OPTIONS)  # type: ignore[arg-type]
        try:
            for setting, value in self.session_settings().items():
                c.execute("SELECT set_config(%s, %s, false)", (setting, value))
        except BaseException:
            c.close()
            raise
        return c

    def session_settings(self) -> dict[str, str]:
        """What each connection sets on the server's side (plain SETs, so a
        pooler that refuses startup options does not mind).

        A node paused (SIGSTOP, a stalled VM) or cut off in the middle of a
        write batch leaves its session idle in a transaction that holds the
        rows it wrote: the sweep of a live node waits for them, and with it
        every write of that node (admissions, heartbeats), for as long as
        the pause lasts. The server ends such a session after one
        heartbeat (the sweep waits three), and notices a vanished peer
        in seconds rather than after the kernel's two hours (TCP
        keepalives, the node name's lock included).
        """
        return {
            "idle_in_transaction_session_timeout": "%dms" % (max(self.heartbeat_interval, 1.0) * 1000),
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
        }

    def _writer_connection(self) -> Any:
        """The journal thread's connection, opened again after an outage."""
        c = self._writer
        if c is None or c.closed or c.broken:
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
            self._writer = None
            self._writer = c = self.connect()
        return c

    def _reader_connection(self) -> Any:
        c = getattr(self._local, "connection", None)
        if c is None or c.closed or c.broken:
            c = self._local.connection = self.connect()
            # kept to be closed with the store (a thread-local one is not)
            self._reader_connections.append(c)
        return c

    def channel(self, what: str) -> str:
        return "%s_%s" % (self.schema, what)

    # -- opening --------------------------------------------------------------

    def open(self) -> Recovery:
        """Connect, migrate, claim the node name, recover; StoreError in one line."""
        try:
            c = self.connect()
        except psycopg.Error as e:
            raise StoreError("%s: cannot connect: %s" % (self.description, _one_line(e))) from None
        try:
            self._migrate(c)
            listener = _Listener(self, [self.channel("queued"), self.channel("cancel")])
            listener.open()
            recovery = self._register(c)
        except psycopg.Error as e:
            c.close()
            raise StoreError("%s: %s" % (self.description, _one_line(e))) from None
        except StoreError:
            c.close()
            raise
        self._writer = c
        self._listener = listener
        self._journal = Journal(
            self.reactor,
            self._writer_connection,
            begin=lambda c: c.execute("BEGIN"),
            commit=lambda c: c.execute("COMMIT"),
            rollback=_rollback,
            is_outage=_is_outage,
            is_transient=_is_transient,
            name="httprunner-pg-write",
            on_state=self._write_state,
        )
        self._journal.start()
        self._readers.start()
        listener.start()
        self.connected = True
        return recovery

    def _migrate(self, c: Any) -> None:
        s = self._s
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema, "migrate"),))
            # Only created when missing: a role with least privileges owns a
            # schema an administrator made for it, and may create nothing else.
            if c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                c.execute("CREATE SCHEMA %s" % s)
            c.execute("CREATE TABLE IF NOT EXISTS %s.meta (key text PRIMARY KEY, value text NOT NULL)" % s)
            row = c.execute("SELECT value FROM %s.meta WHERE key = 'schema_version'" % s).fetchone()
            version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    "%s: schema %s has version %d, newer than this httprunner's %d; upgrade httprunner"
                    % (self.description, self.schema, version, SCHEMA_VERSION)
                )
            steps = migrations(self.schema)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                c.execute(steps[target])
                c.execute(
                    "INSERT INTO %s.meta (key, value) VALUES ('schema_version', %%s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value" % s,
                    (str(target),),
                )
                self.log.info("schema {schema} migrated to version {version}", schema=self.schema, version=target)

    def _register(self, c: Any) -> Recovery:
        """Join the cluster as this node; declare a crashed previous
        incarnation's running jobs lost (the node lock proves it is gone)."""
        s = self._s
        with c.transaction():
            c.execute(
                "INSERT INTO %s.nodes (name, incarnation, host, pid, version, state, heartbeat_interval, max_running)"
                " VALUES (%%(name)s, %%(inc)s, %%(host)s, %%(pid)s, %%(version)s, 'alive', %%(hb)s, %%(max)s)"
                " ON CONFLICT (name) DO UPDATE SET incarnation = excluded.incarnation, host = excluded.host,"
                " pid = excluded.pid, version = excluded.version, state = 'alive', started_at = now(),"
                " heartbeat_at = now(), heartbeat_interval = excluded.heartbeat_interval, running = 0,"
                " max_running = excluded.max_running" % s,
                {
                    "name": self.node_name,
                    "inc": self.incarnation,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "version": self.version,
                    "hb": self.heartbeat_interval,
                    "max": self.max_running,
                },
            )
            lost = self._declare_lost(c, "node = %(node)s", {"node": self.node_name})
            # Jobs a survivor declared lost while this node was away may
            # still have processes here: the runner ends those that are
            # provably the same processes.
            lost += [
                self._job(row)
                for row in c.execute(
                    # (no pid: the start was never recorded; the runner
                    # finds such a job's processes by its id)
                    "SELECT %s FROM %s.jobs WHERE node = %%s AND state = 'lost' AND (boot_id = %%s OR pid IS NULL)"
                    " AND finished_at > now() - interval '7 days'" % (_SUMMARY, s),
                    (self.node_name, orphans.boot_id()),
                ).fetchall()
                if row["id"] not in {job.id for job in lost}
            ]
            # Deliveries the previous incarnation was sending: any node takes them.
            c.execute(
                "UPDATE %s.jobs SET delivery_owner = NULL WHERE delivery_owner = %%s AND delivery_state = 'pending'"
                % s,
                (self.node_name,),
            )
        return Recovery(lost=lost)

    def _declare_lost(self, c: Any, where: str, args: dict[str, Any]) -> list[Job]:
        """Mark running jobs matching ``where`` lost (in the caller's
        transaction); their callbacks become pending for any node."""
        rows = c.execute(
            "UPDATE %s.jobs SET state = 'lost', code = -1, err = %%(err)s::jsonb, finished_at = now(), lease = NULL,"
            " delivery_state = CASE WHEN callback IS NULL THEN NULL ELSE 'pending' END,"
            " delivery_attempts = CASE WHEN callback IS NULL THEN NULL ELSE 0 END, delivery_owner = NULL"
            " WHERE state = 'running' AND %s RETURNING %s" % (self._s, where, _SUMMARY),
            {**args, "err": json.dumps(LOST_ERROR)},
        ).fetchall()
        if rows:
            c.execute(
                "DELETE FROM %s.requests WHERE job_id = ANY(%%s)" % self._s,
                ([row["id"] for row in rows],),
            )
        return [self._job(row) for row in rows]

    def close(self) -> Deferred[None]:
        """Record pending writes (bounded), leave the cluster, disconnect."""
        journal = self._journal
        if journal is None:
            return succeed(None)
        s = self._s
        name = self.node_name

        def leave(c: Any) -> None:
            c.execute(
                "UPDATE %s.jobs SET delivery_owner = NULL WHERE delivery_owner = %%s AND delivery_state = 'pending'"
                % s,
                (name,),
            )
            c.execute(
                "UPDATE %s.nodes SET state = 'stopped', running = 0 WHERE name = %%s AND incarnation = %%s" % s,
                (name, self.incarnation),
            )

        # Bounded: an unreachable server must not keep the daemon from exiting.
        drained = journal.drain()
        timer = self.reactor.callLater(10.0, drained.cancel)
        drained.addCallback(lambda _: journal.submit(Write(run=leave, required=True)))
        drained.addErrback(self._leave_failed)

        def closed(_: object) -> None:
            if timer.active():
                timer.cancel()
            if journal.backlog:
                self.log.error("{count} writes could not be recorded before the daemon stopped", count=journal.backlog)
            journal.stop()
            self._journal = None
            if self._listener is not None:
                self._listener.stop()
            self._readers.stop()
            # The threads are gone: their connections (and the writer's)
            # would otherwise stay open on the server until this process
            # exits, one more at every close and reopen.
            for connection in [self._writer, *self._reader_connections]:
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:
                        pass
            self._writer = None
            self._reader_connections.clear()
            self.connected = False

        return drained.addBoth(closed)

    def health(self) -> dict[str, Any]:
        journal = self._journal
        return {
            "kind": "postgresql",
            "durable": True,
            "database": self.description,
            "schema": self.schema,
            "node": self.node_name,
            "ok": self.connected,
            "last_error": self.last_error,
            "backlog": 0 if journal is None else journal.backlog,
            **self.counters,
        }

    def _leave_failed(self, failure: Failure) -> None:
        self.log.warn("leaving the cluster: {error}", error=_one_line(failure.value or Exception()))

    def _write_state(self, error: str | None) -> None:
        self.last_error = error
        self.connected = error is None

    # -- writes ---------------------------------------------------------------

    def admit(self, job: Job, starting: bool) -> Deferred[None]:
        """Insert the job: running on this node (with a fresh lease) or
        queued in the shared queue (bounded by --max-queued)."""
        values = admission_values(job)
        values["pinned_node"] = job.pinned_node
        if starting:
            values["state"] = jobs.RUNNING
            values["node"] = self.node_name
            values["lease"] = job.lease = secrets.token_hex(16)
        else:
            values["lease"] = None
        # A job that starts here at once is never run from its request again
        # (a crash leaves it lost): only a queued job's request is written.
        request = None
        if not starting:
            assert job.launch is not None
            request = json.dumps(request_record(job.launch), ensure_ascii=False)
        names = list(values)
        insert = "INSERT INTO %s.jobs (%s) SELECT %s" % (self._s, ", ".join(names), ", ".join(map(_value, names)))
        s = self._s
        max_queued = self.max_queued

        def run(c: Any) -> Any:
            if job.pinned_node is not None and job.pinned_node != self.node_name:
                alive = c.execute(
                    "SELECT 1 FROM %s.nodes WHERE name = %%s AND state = 'alive'" % s, (job.pinned_node,)
                ).fetchone()
                if alive is None:
                    return UnknownNode(job.pinned_node)
            if starting:
                row = c.execute(insert + " RETURNING seq", values).fetchone()
            else:
                row = c.execute(
                    insert + " WHERE (SELECT count(*) FROM %s.jobs WHERE state = 'queued') < %%(max_queued)s"
                    " RETURNING seq" % s,
                    {**values, "max_queued": max_queued},
                ).fetchone()
                if row is None:
                    return QueueFull()
            if request is not None:
                c.execute("INSERT INTO %s.requests (job_id, request) VALUES (%%s, %%s::jsonb)" % s, (job.id, request))
            return row["seq"]

        def admitted(result: Any) -> None:
            if isinstance(result, Exception):
                self._unsaved.pop(job.id, None)
                raise result
            job.seq = result
            if not starting:
                self.notify("queued", job.pinned_node or "")

        return self._write(job, run, required=True).addCallback(admitted)

    def claim(self, count: int, commands: Sequence[str] | None, blocked: Sequence[str]) -> Deferred[list[Claimed]]:
        """Claim up to ``count`` of the oldest queued jobs this node may run:
        pinned to it or to none, whose command is in ``commands`` (None:
        any) and not in ``blocked`` (at their per-command limit here)."""
        s = self._s
        args = {
            "node": self.node_name,
            "n": count,
            "any": commands is None,
            "commands": list(commands or ()),
            "blocked": list(blocked),
        }

        def run(c: Any) -> list[dict[str, Any]]:
            rows = c.execute(
                "UPDATE %s.jobs SET state = 'running', node = %%(node)s, lease = md5(random()::text || clock_timestamp()::text)"
                " WHERE id IN (SELECT id FROM %s.jobs WHERE state = 'queued'"
                " AND (pinned_node IS NULL OR pinned_node = %%(node)s)"
                " AND (%%(any)s OR command = ANY(%%(commands)s)) AND NOT (command = ANY(%%(blocked)s))"
                " ORDER BY seq FOR UPDATE SKIP LOCKED LIMIT %%(n)s)"
                " RETURNING %s, (SELECT request::text FROM %s.requests WHERE job_id = jobs.id) AS request"
                % (s, s, _FULL, s),
                args,
            ).fetchall()
            return sorted(rows, key=lambda row: row["seq"])

        def claimed(rows: list[dict[str, Any]]) -> list[Claimed]:
            self.counters["claims"] += len(rows)
            self._with_request.update(row["id"] for row in rows if row["request"] is not None)
            return [
                Claimed(self._job(row), None if row["request"] is None else json.loads(row["request"])) for row in rows
            ]

        return self._write(None, run, required=True).addCallback(claimed)

    def release(self, job: Job) -> None:
        """Put a claimed job back in the queue (this node cannot start it now)."""
        s = self._s

        def run(c: Any) -> None:
            c.execute(
                "UPDATE %s.jobs SET state = 'queued', node = NULL, lease = NULL WHERE id = %%s AND lease = %%s" % s,
                (job.id, job.lease),
            )

        self._write(None, run, required=False)
        self.notify("queued", "")

    def starting(self, job: Job) -> Deferred[None]:
        raise NotImplementedError("a cluster's queue is shared: claims mark jobs running")

    def requeue(self, job: Job) -> None:
        raise NotImplementedError("a cluster's queue is shared: release() puts a claim back")

    def started(self, job: Job, identify: Callable[[], tuple[int, str] | None] | None = None) -> None:
        args: dict[str, Any] = {
            "id": job.id,
            "lease": job.lease,
            "pid": job.pid,
            "started_at": job.started_at,
            "proc_start": None,
            "boot_id": None,
        }
        s = self._s
        had_request = self._took_request(job.id)

        def prepare() -> None:
            # At the flush, not at the spawn: /proc waits for the exec.
            identity = identify() if identify is not None else job.identity
            if identity is not None:
                args["proc_start"], args["boot_id"] = identity

        def run(c: Any) -> None:
            c.execute(
                # (not the node: the admission or the claim that gave this
                # node the lease recorded it, and it must stay this node's)
                "UPDATE %s.jobs SET pid = %%(pid)s, started_at = to_timestamp(%%(started_at)s),"
                " proc_start = %%(proc_start)s, boot_id = %%(boot_id)s WHERE id = %%(id)s AND lease = %%(lease)s" % s,
                args,
            )
            if had_request:
                c.execute("DELETE FROM %s.requests WHERE job_id = %%s" % s, (args["id"],))

        self._write_start(job, run, prepare, had_request)

    def output_progress(self, job: Job, parts: dict[str, bytes | int]) -> Deferred[Any]:
        """Write a running job's output so far (head, tail, counts) for
        other nodes' readers."""
        names = list(parts)
        assignments = ", ".join("%s = %%(%s)s" % (name, name) for name in names)
        args = {**parts, "id": job.id, "lease": job.lease}
        s = self._s

        def run(c: Any) -> None:
            c.execute(
                "UPDATE %s.jobs SET %s WHERE id = %%(id)s AND lease = %%(lease)s AND state = 'running'"
                % (s, assignments),
                args,
            )

        return self._write(None, run, required=False)

    def finished(self, job: Job) -> Deferred[bool]:
        values = ending_values(job)
        self._withdraw_start(job.id)
        had_request = self._took_request(job.id)
        values["delivery_owner"] = self.node_name if job.callback_delivery is not None else None
        assignments = ", ".join("%s = %s" % (name, _value(name)) for name in values)
        args = {**values, "id": job.id, "lease": job.lease}
        s = self._s

        def run(c: Any) -> bool:
            if job.lease is None:
                # Never claimed (canceled in the queue by this node).
                condition = "state = 'queued'"
            else:
                condition = "lease = %(lease)s AND state = 'running'"
            row = c.execute(
                "UPDATE %s.jobs SET %s, lease = NULL, cancel_requested = false WHERE id = %%(id)s AND %s RETURNING seq"
                % (s, assignments, condition),
                args,
            ).fetchone()
            if had_request:
                c.execute("DELETE FROM %s.requests WHERE job_id = %%s" % s, (job.id,))
            return row is not None

        return self._write(job, run, required=False).addCallback(self._count_finished)

    def _count_finished(self, won: Any) -> Any:
        if won is True:
            self.finished_since_prune += 1
        return won

    def delivery_changed(self, job_id: str, record: dict[str, Any]) -> None:
        args = {**record, "id": job_id, "node": self.node_name}
        s = self._s

        def run(c: Any) -> None:
            c.execute(
                "UPDATE %s.jobs SET delivery_state = %%(state)s, delivery_attempts = %%(attempts)s,"
                " delivery_last_status = %%(last_status)s, delivery_last_error = %%(last_error)s"
                " WHERE id = %%(id)s AND (delivery_owner = %%(node)s OR delivery_owner IS NULL)" % s,
                args,
            )

        self._write(None, run, required=False)

    def forget(self, job: Job) -> None:
        s = self._s

        def run(c: Any) -> None:
            c.execute("DELETE FROM %s.jobs WHERE id = %%s" % s, (job.id,))

        self._write(job, run, required=False).addBoth(lambda _: self._unsaved.pop(job.id, None))

    def request_cancel(self, job_id: str) -> Deferred[Job | None]:
        """Cancel a job this node does not hold.

        A queued job ends ``canceled`` here and now (returned, so this node
        sends its callback); a job running on another node gets a cancel
        request its owner acts on within a second (None is returned).
        """
        s = self._s
        values = {
            "err": json.dumps({"code": "CANCELED", "message": "canceled before it started"}),
            "node": self.node_name,
            "id": job_id,
        }

        def run(c: Any) -> dict[str, Any] | None:
            row = c.execute(
                "UPDATE %s.jobs SET state = 'canceled', code = 143, err = %%(err)s::jsonb, finished_at = now(),"
                " delivery_state = CASE WHEN callback IS NULL THEN NULL ELSE 'pending' END,"
                " delivery_attempts = CASE WHEN callback IS NULL THEN NULL ELSE 0 END,"
                " delivery_owner = CASE WHEN callback IS NULL THEN NULL ELSE %%(node)s END"
                " WHERE id = %%(id)s AND state = 'queued' RETURNING %s" % (s, _FULL),
                values,
            ).fetchone()
            if row is not None:
                c.execute("DELETE FROM %s.requests WHERE job_id = %%s" % s, (job_id,))
                return dict(row)
            c.execute("UPDATE %s.jobs SET cancel_requested = true WHERE id = %%(id)s AND state = 'running'" % s, values)
            return None

        def done(row: dict[str, Any] | None) -> Job | None:
            if row is None:
                self.notify("cancel", "")
                return None
            self.finished_since_prune += 1
            return self._job(row)

        return self._write(None, run, required=True).addCallback(done)

    def notify(self, what: str, payload: str) -> None:
        """A hint to every node, sent after the commit of what it is about
        (the next batch: NOTIFY takes a global lock at commit)."""
        channel = self.channel(what)
        self.counters["notifies_sent"] += 1
        self._write(None, lambda c: c.execute("SELECT pg_notify(%s, %s)", (channel, payload)), required=False)

    def heartbeat(self, running: int, local: Iterable[str]) -> Deferred[Heartbeat]:
        """Say this node is alive; learn whether it was declared dead and
        which of its jobs it still holds."""
        s = self._s
        ids = list(local)
        args = {"name": self.node_name, "inc": self.incarnation, "running": running, "ids": ids}

        def run(c: Any) -> Heartbeat:
            row = c.execute(
                "UPDATE %s.nodes SET heartbeat_at = now(), running = %%(running)s"
                " WHERE name = %%(name)s AND incarnation = %%(inc)s AND state = 'alive' RETURNING name" % s,
                args,
            ).fetchone()
            if row is None:
                # Declared dead (or the row is gone): rejoin at once.
                c.execute(
                    "INSERT INTO %s.nodes (name, incarnation, host, pid, version, state, heartbeat_interval,"
                    " max_running, running) VALUES (%%(name)s, %%(inc)s, %%(host)s, %%(pid)s, %%(version)s, 'alive',"
                    " %%(hb)s, %%(max)s, %%(running)s) ON CONFLICT (name) DO UPDATE SET state = 'alive',"
                    " incarnation = excluded.incarnation, heartbeat_at = now(), running = excluded.running" % s,
                    {
                        **args,
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "version": self.version,
                        "hb": self.heartbeat_interval,
                        "max": self.max_running,
                    },
                )
            leases = c.execute(
                "SELECT id, lease FROM %s.jobs WHERE id = ANY(%%(ids)s) AND state = 'running' AND node = %%(name)s" % s,
                args,
            ).fetchall()
            return Heartbeat(alive=row is not None, leases={r["id"]: r["lease"] for r in leases})

        return self._write(None, run, required=True)

    def sweep(self) -> Deferred[list[Job]]:
        """Declare dead the nodes silent for 3 heartbeats, and their running
        jobs lost (one node at a time: an advisory lock)."""
        s = self._s
        key = _lock_key(self.schema, "sweep")

        def run(c: Any) -> list[Job]:
            if not c.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (key,)).fetchone()["locked"]:
                return []
            # Never this node itself: it is alive, whatever its last
            # heartbeat says (back from a pause, its sweep may run before
            # its heartbeat; alone in the cluster, it would kill its jobs).
            dead = [
                row["name"]
                for row in c.execute(
                    "UPDATE %s.nodes SET state = 'dead' WHERE state = 'alive' AND name <> %%s"
                    " AND heartbeat_at < now() - make_interval(secs => 3 * heartbeat_interval) RETURNING name" % s,
                    (self.node_name,),
                ).fetchall()
            ]
            if not dead:
                return []
            for name in dead:
                self.log.warn("node {node} missed 3 heartbeats: declared dead", node=name)
            lost = self._declare_lost(c, "node = ANY(%(dead)s)", {"dead": dead})
            c.execute(
                "UPDATE %s.jobs SET delivery_owner = NULL WHERE delivery_state = 'pending'"
                " AND delivery_owner = ANY(%%s)" % s,
                (dead,),
            )
            return lost

        def swept(lost: list[Job]) -> list[Job]:
            self.counters["lost_declared"] += len(lost)
            self.finished_since_prune += len(lost)
            return lost

        return self._write(None, run, required=True).addCallback(swept)

    def claim_deliveries(self, count: int) -> Deferred[list[Job]]:
        """Take up to ``count`` pending callbacks no live node is sending."""
        s = self._s

        def run(c: Any) -> list[dict[str, Any]]:
            return list(
                c.execute(
                    "UPDATE %s.jobs SET delivery_owner = %%(node)s WHERE id IN (SELECT id FROM %s.jobs"
                    " WHERE delivery_state = 'pending' AND delivery_owner IS NULL ORDER BY seq"
                    " FOR UPDATE SKIP LOCKED LIMIT %%(n)s) RETURNING %s" % (s, s, _FULL),
                    {"node": self.node_name, "n": count},
                ).fetchall()
            )

        return self._write(None, run, required=True).addCallback(lambda rows: [self._job(row) for row in rows])

    def cancel_requests(self) -> Deferred[list[str]]:
        """Ids of this node's running jobs that another node asked to cancel."""
        return self._query(
            "SELECT id FROM %s.jobs WHERE state = 'running' AND node = %%s AND cancel_requested" % self._s,
            (self.node_name,),
        ).addCallback(lambda rows: [row["id"] for row in rows])

    def prune(self, before: float) -> Deferred[int]:
        """Evict finished jobs older than ``before`` and beyond --max-jobs,
        in batches, one node at a time."""
        s = self._s
        self.finished_since_prune = 0
        key = _lock_key(self.schema, "prune")
        max_finished = self.max_finished

        def run(c: Any) -> int:
            if not c.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (key,)).fetchone()["locked"]:
                return 0
            evicted = 0
            if before > 0:
                evicted += c.execute(
                    "DELETE FROM %s.jobs WHERE seq IN (SELECT seq FROM %s.jobs WHERE finished_at IS NOT NULL"
                    " AND finished_at < to_timestamp(%%s) ORDER BY finished_at LIMIT %%s)" % (s, s),
                    (before, PRUNE_BATCH),
                ).rowcount
            finished = c.execute("SELECT count(*) AS n FROM %s.jobs WHERE finished_at IS NOT NULL" % s).fetchone()["n"]
            excess = min(finished - max_finished, PRUNE_BATCH)
            if excess > 0:
                evicted += c.execute(
                    "DELETE FROM %s.jobs WHERE seq IN (SELECT seq FROM %s.jobs WHERE finished_at IS NOT NULL"
                    " ORDER BY finished_at, seq LIMIT %%s)" % (s, s),
                    (excess,),
                ).rowcount
            return evicted

        return self._write(None, run, required=True)

    # -- reads ----------------------------------------------------------------

    def _read(self, work: Callable[[Any], _T]) -> Deferred[_T]:
        """``work(connection)`` on a reader thread; an outage fails it with
        StoreUnavailable.

        A connection that went stale while it was idle (the server
        restarted, or came back after an outage) fails on first use: a
        fresh one tries once more (a read has no effect to repeat), so the
        first request after the database returns does not fail.
        """

        def run() -> _T:
            c = getattr(self._local, "connection", None)
            reused = c is not None and not c.closed and not c.broken
            try:
                return work(self._reader_connection())
            except Exception as e:
                if not _is_outage(e):
                    raise
                error = e
            if reused:
                try:
                    return work(self._reader_connection())
                except Exception as e:
                    if not _is_outage(e):
                        raise
                    error = e
            raise StoreUnavailable("the database is unreachable: %s" % _one_line(error))

        return deferToThreadPool(self.reactor, self._readers, run)

    def _query(self, sql: str, args: Any = ()) -> Deferred[list[dict[str, Any]]]:
        return self._read(lambda c: list(c.execute(sql, args).fetchall()))

    def _job(self, row: Any) -> Job:
        return job_from_row(row, self.max_output, self.delivery_factory)

    def get(self, job_id: str) -> Deferred[Job | None]:
        entry = self._unsaved.get(job_id)
        if entry is not None:
            return succeed(entry[0])
        d = self._query("SELECT %s FROM %s.jobs WHERE id = %%s" % (_FULL, self._s), (job_id,))
        return d.addCallback(lambda rows: self._job(rows[0]) if rows else None)

    def list(self, query: ListQuery) -> Deferred[builtins.list[Job]]:
        where: builtins.list[str] = []
        args: dict[str, Any] = {"limit": query.limit}
        if query.before is not None:
            where.append("seq < (SELECT seq FROM %s.jobs WHERE id = %%(before)s)" % self._s)
            args["before"] = query.before
        if query.states is not None:
            where.append("state = ANY(%(states)s)")
            args["states"] = sorted(query.states)
        if query.text:
            where.append("strpos(search, %(text)s) > 0")
            args["text"] = query.text.casefold()
        sql = "SELECT %s FROM %s.jobs%s ORDER BY seq DESC LIMIT %%(limit)s" % (
            _SUMMARY,
            self._s,
            (" WHERE " + " AND ".join(where)) if where else "",
        )
        s = self._s

        def run(c: Any) -> builtins.list[dict[str, Any]]:
            if (
                query.before is not None
                and not c.execute("SELECT 1 FROM %s.jobs WHERE id = %%s" % s, (query.before,)).fetchone()
            ):
                raise UnknownCursor(query.before)
            return list(c.execute(sql, args).fetchall())

        def jobs_of(rows: builtins.list[dict[str, Any]]) -> builtins.list[Job]:
            found = []
            for row in rows:
                entry = self._unsaved.get(row["id"])
                job = entry[0] if entry is not None else self._job(row)
                if query.states is None or job.state in query.states:
                    found.append(job)
            return found

        return self._read(run).addCallback(jobs_of)

    def counts(self, since: float) -> Deferred[Any]:
        s = self._s

        def run(c: Any) -> StoreCounts:
            states = {
                r["state"]: r["n"]
                for r in c.execute("SELECT state, count(*) AS n FROM %s.jobs GROUP BY state" % s).fetchall()
            }
            finished = [
                (int(r["minute"]), r["state"], r["n"])
                for r in c.execute(
                    "SELECT (floor(extract(epoch FROM finished_at) / 60) * 60)::bigint AS minute, state,"
                    " count(*) AS n FROM %s.jobs WHERE finished_at >= to_timestamp(%%s)"
                    " GROUP BY minute, state ORDER BY minute" % s,
                    (since,),
                ).fetchall()
            ]
            return StoreCounts(states=states, finished=finished)

        return self._read(run)

    def nodes(self) -> Deferred[builtins.list[NodeView]]:
        rows = self._query(
            # (running from the jobs themselves: the heartbeat's count is
            # up to one interval old)
            "SELECT name, extract(epoch FROM heartbeat_at)::float8 AS heartbeat_at,"
            " (SELECT count(*) FROM %s.jobs WHERE state = 'running' AND jobs.node = nodes.name)::int AS running,"
            " state = 'alive' AND heartbeat_at >= now() - make_interval(secs => 3 * heartbeat_interval) AS alive"
            " FROM %s.nodes WHERE state <> 'stopped' OR heartbeat_at > now() - interval '1 hour' ORDER BY name"
            % (self._s, self._s)
        )
        return rows.addCallback(
            lambda rows: [NodeView(r["name"], r["heartbeat_at"], bool(r["alive"]), r["running"]) for r in rows]
        )

    def queued_count(self) -> Deferred[int]:
        return self._query("SELECT count(*) AS n FROM %s.jobs WHERE state = 'queued'" % self._s).addCallback(
            lambda rows: rows[0]["n"]
        )

    def read_output(self, job_id: str, fd: int, offset: int) -> Deferred[tuple[int, bytes, bool] | None]:
        """``(start, data, finished)`` of a stream from ``offset`` (see
        ``OutputBuffer.read``), read in the database: only new bytes travel."""
        name = "stdout" if fd == 1 else "stderr"
        sql = (
            f"SELECT state, {name}_total AS total, {name}_kept AS kept, octet_length({name}_head) AS head_len,"
            f" CASE WHEN %(off)s < octet_length({name}_head)"
            f" THEN substring({name}_head FROM (%(off)s + 1)::int) END AS head,"
            f" substring({name}_tail FROM least(greatest(%(off)s - ({name}_total - octet_length({name}_tail)), 0) + 1,"
            " 2147483647)::int) AS tail"
            f" FROM {self._s}.jobs WHERE id = %(id)s"
        )

        def shape(rows: builtins.list[dict[str, Any]]) -> tuple[int, bytes, bool] | None:
            if not rows:
                return None
            row = rows[0]
            finished = row["state"] in jobs.TERMINAL_STATES
            total = row["total"]
            head_len = row["head_len"] or 0
            dropped = total - row["kept"]
            if offset >= total:
                return offset, b"", finished
            if offset < head_len:
                head = bytes(row["head"] or b"")
                if dropped:
                    return offset, head, finished
                return offset, head + bytes(row["tail"] or b""), finished
            tail_start = total - (row["kept"] - head_len)
            return max(offset, tail_start), bytes(row["tail"] or b""), finished

        return self._query(sql, {"off": offset, "id": job_id}).addCallback(shape)


class _CountedConnection(psycopg.Connection[Any]):
    """A connection that counts the statements the store sends through it
    (``httprunner_cluster_statements_total``: statements per job is what a
    cluster costs its database).  Subclassed per store with its counters;
    a lost count from two threads at once is of no consequence."""

    counters: dict[str, int]

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.counters["statements"] += 1
        return super().execute(*args, **kwargs)


class _Listener:
    """The node's listening connection, on a thread of its own.

    It holds the node's session advisory lock (a second live daemon with
    the same name cannot take it) and waits for notifications, which it
    hands to the reactor thread.  It reconnects by itself after an outage.
    """

    log = Logger()

    def __init__(self, store: PostgresJobStore, channels: list[str]) -> None:
        self.store = store
        self.channels = channels
        self.connection: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Connect, take the node lock (StoreError if held), listen."""
        store = self.store
        c = store.connect()
        locked = c.execute(
            "SELECT pg_try_advisory_lock(%s) AS locked", (_lock_key(store.schema, "node:" + store.node_name),)
        ).fetchone()["locked"]
        if not locked:
            c.close()
            raise StoreError(
                "%s: node %r is already running (another live daemon holds its name); give each node its own --node"
                % (store.description, store.node_name)
            )
        for channel in self.channels:
            c.execute('LISTEN "%s"' % channel)
        self.connection = c

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="httprunner-pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass

    def _run(self) -> None:
        store = self.store
        reactor = store.reactor
        delay = 0.5
        while not self._stopping.is_set():
            try:
                if self.connection is None or self.connection.closed or self.connection.broken:
                    self.open()
                    reactor.callFromThread(self.log.info, "listening again on the cluster's channels")
                    reactor.callFromThread(store.on_notify, store.channel("queued"), "")
                for note in self.connection.notifies(timeout=LISTEN_WAKEUP):
                    reactor.callFromThread(store.on_notify, note.channel, note.payload)
                    if self._stopping.is_set():
                        break
                delay = 0.5
            except StoreError as e:
                reactor.callFromThread(self.log.error, "{error}", error=str(e))
                self._close()
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception as e:
                if self._stopping.is_set():
                    break
                reactor.callFromThread(self.log.warn, "listening connection lost: {error}", error=_one_line(e))
                self._close()
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass
        self.connection = None


def _rollback(c: Any) -> None:
    if not c.closed and not c.broken:
        c.execute("ROLLBACK")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
